#!/usr/bin/env bash
# Host C++ checks: build + ctest with OpenMP and without it (the edge build),
# the install + examples test, bitwise-equal results across the two builds, and
# the stripped size of the static library.
#   bash .ci/cpp.sh            (build dirs under ${GN_BUILD_ROOT:-build/ci})
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${GN_BUILD_ROOT:-$ROOT/build/ci}
JOBS=${GN_JOBS:-2}
mkdir -p "$OUT"
source .ci/common.sh

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v ninja >/dev/null || need_apt+=(ninja-build)
command -v g++ >/dev/null || need_apt+=(g++)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
if ((${#need_apt[@]})); then
  echo "== installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
GEN=(-G Ninja)

build_and_test() {  # name, cmake args...
  local name=$1; shift
  local dir=$OUT/$name
  fresh_build_dir "$dir"
  echo "== $name: configure ($*)"
  cmake -S "$ROOT" -B "$dir" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DGROUPNORM_BUILD_TESTS=ON "$@" >"$dir.configure.log" 2>&1 ||
    { cat "$dir.configure.log"; return 1; }
  echo "== $name: build"
  cmake --build "$dir" --parallel "$JOBS"
  echo "== $name: ctest"
  (cd "$dir" && ctest --output-on-failure --timeout 900)
}

# test_convert over all 2^32 float inputs here (~10 s); a sample in the other builds
build_and_test host-openmp -DGROUPNORM_OPENMP=ON -DGROUPNORM_TEST_CONVERT_STEP=1
build_and_test host-no-openmp -DGROUPNORM_OPENMP=OFF -DGROUPNORM_TEST_SUBDIRECTORY=OFF

echo "== the no-OpenMP library uses no OpenMP"
if nm -A "$OUT/host-no-openmp/libgroupnorm.a" 2>/dev/null | grep -E ' U (omp_|GOMP_)'; then
  echo "FAIL: the GROUPNORM_OPENMP=OFF library references OpenMP"; exit 1
fi

echo "== the OpenMP and no-OpenMP builds compute the same bits"
for t in 1 3; do
  "$OUT/host-openmp/cpp/tests/gn_digest" $t >"$OUT/digest-openmp-$t.txt"
  "$OUT/host-no-openmp/cpp/tests/gn_digest" $t >"$OUT/digest-no-openmp-$t.txt"
  diff "$OUT/digest-openmp-$t.txt" "$OUT/digest-no-openmp-$t.txt" ||
    { echo "FAIL: OpenMP and no-OpenMP results differ ($t threads)"; exit 1; }
done
tail -1 "$OUT/digest-openmp-1.txt"

echo "== stripped size of the static library"
for b in host-openmp host-no-openmp; do
  cp "$OUT/$b/libgroupnorm.a" "$OUT/$b.stripped.a"
  strip --strip-unneeded "$OUT/$b.stripped.a"
  echo "$b: libgroupnorm.a $(stat -c %s "$OUT/$b/libgroupnorm.a") bytes, stripped $(stat -c %s "$OUT/$b.stripped.a") bytes"
done
echo "cpp.sh: all passed"
