#!/usr/bin/env bash
# Edge build: cross-compile for aarch64 with Debian's g++-aarch64-linux-gnu and
# run the C++ test suite under qemu-aarch64, on the NEON path (the default) and
# on the portable path (GROUPNORM_ISA=portable); without OpenMP, then with it
# (libgomp for arm64 comes with the cross compiler).
#   bash .ci/aarch64.sh        (build dirs under ${GN_BUILD_ROOT:-build/ci})
#   GN_AARCH64_OPENMP=0 bash .ci/aarch64.sh   skips the OpenMP build
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${GN_BUILD_ROOT:-$ROOT/build/ci}
JOBS=${GN_JOBS:-2}
SYSROOT=/usr/aarch64-linux-gnu
mkdir -p "$OUT"
source .ci/common.sh

need_apt=()
command -v aarch64-linux-gnu-g++ >/dev/null || need_apt+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || command -v qemu-aarch64-static >/dev/null || need_apt+=(qemu-user)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v ninja >/dev/null || need_apt+=(ninja-build)
if ((${#need_apt[@]})); then
  echo "== installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
QEMU=$(command -v qemu-aarch64 || command -v qemu-aarch64-static)

run_suite() {  # name, cmake args...
  local name=$1; shift
  local dir=$OUT/$name
  fresh_build_dir "$dir"
  echo "== $name: configure ($*)"
  cmake -S "$ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_TOOLCHAIN_FILE="$ROOT/cmake/aarch64-linux-gnu.cmake" -DGROUPNORM_BUILD_TESTS=ON "$@" \
    >"$dir.configure.log" 2>&1 || { cat "$dir.configure.log"; return 1; }
  echo "== $name: build"
  cmake --build "$dir" --parallel "$JOBS"
  file "$dir/cpp/tests/test_core" 2>/dev/null || true
  local isas
  isas=$("$QEMU" -L "$SYSROOT" "$dir/cpp/tests/test_core" | head -1)
  echo "$isas"
  case "$isas" in *neon*) ;; *) echo "FAIL: the NEON path is not available under qemu"; return 1 ;; esac
  echo "== $name: ctest under qemu-aarch64, default ISA (neon)"
  (cd "$dir" && GROUPNORM_ISA= ctest --output-on-failure --timeout 1800)
  echo "== $name: ctest under qemu-aarch64, GROUPNORM_ISA=portable"
  (cd "$dir" && GROUPNORM_ISA=portable ctest --output-on-failure --timeout 1800)
  # neon and portable compute the same bits
  GROUPNORM_ISA=neon "$QEMU" -L "$SYSROOT" "$dir/cpp/tests/gn_digest" 3 >"$OUT/digest-$name-neon.txt"
  GROUPNORM_ISA=portable "$QEMU" -L "$SYSROOT" "$dir/cpp/tests/gn_digest" 3 >"$OUT/digest-$name-portable.txt"
  diff "$OUT/digest-$name-neon.txt" "$OUT/digest-$name-portable.txt" ||
    { echo "FAIL: neon and portable results differ"; return 1; }
  tail -1 "$OUT/digest-$name-neon.txt"
  cp "$dir/libgroupnorm.a" "$OUT/$name.stripped.a"
  aarch64-linux-gnu-strip --strip-unneeded "$OUT/$name.stripped.a"
  echo "$name: libgroupnorm.a stripped $(stat -c %s "$OUT/$name.stripped.a") bytes"
}

run_suite aarch64-no-openmp -DGROUPNORM_OPENMP=OFF
if [ "${GN_AARCH64_OPENMP:-1}" != 0 ]; then
  run_suite aarch64-openmp -DGROUPNORM_OPENMP=ON
fi
# Informative: the x86-64 build's digest, when .ci/cpp.sh ran before.
if [ -f "$OUT/digest-openmp-3.txt" ]; then
  if diff -q "$OUT/digest-openmp-3.txt" "$OUT/digest-aarch64-no-openmp-neon.txt" >/dev/null; then
    echo "aarch64 and x86-64 results are bitwise the same"
  else
    echo "note: aarch64 and x86-64 results differ in some bits (not required)"
  fi
fi
echo "aarch64.sh: all passed"
