#!/usr/bin/env bash
# CUDA backend compile check: builds the library with -DGROUPNORM_CUDA=ON (and no
# architecture list: the project's default) and the CUDA test program with nvcc,
# then runs it (it prints SKIP and exits 0 when no GPU is visible, as on CI), and
# the Python GPU-array tests against the CUDA extension. A broken kernel fails
# here even without a GPU.
#   bash .ci/cuda.sh           (build dir under ${GN_BUILD_ROOT:-build/ci})
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${GN_BUILD_ROOT:-$PWD/build/ci}/cuda
mkdir -p "$(dirname "$OUT")"
source .ci/common.sh
fresh_build_dir "$OUT"
NVCC=$(command -v nvcc || true)
[ -n "$NVCC" ] || { [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc; }
if [ -z "$NVCC" ]; then
  echo "== cuda: nvcc not found; CUDA compile check skipped"
  exit 0
fi
# the Python extension too, when pybind11 is at hand (its GPU-array entry points)
PY=(-DGROUPNORM_BUILD_PYTHON=OFF)
TARGETS=(groupnorm test_cuda)
if PYBIND=$(python3 -m pybind11 --cmakedir 2>/dev/null); then
  PY=(-DGROUPNORM_BUILD_PYTHON=ON -Dpybind11_DIR="$PYBIND" -DPython_EXECUTABLE="$(command -v python3)")
  TARGETS+=(_core)
fi
# configured as a user would: no CMAKE_CUDA_ARCHITECTURES (the project's default list)
echo "== cuda: configure ($NVCC, default architectures, targets ${TARGETS[*]})"
cmake -S . -B "$OUT" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGROUPNORM_CUDA=ON -DGROUPNORM_BUILD_TESTS=ON "${PY[@]}" \
  -DCMAKE_CUDA_COMPILER="$NVCC" >"$OUT.configure.log" 2>&1 || { cat "$OUT.configure.log"; exit 1; }
grep "groupnorm: CUDA architectures" "$OUT.configure.log"
echo "== cuda: build"
cmake --build "$OUT" --parallel "${GN_JOBS:-2}" --target "${TARGETS[@]}"
echo "== cuda: run (skips without a device)"
"$OUT/test_cuda"
if [[ " ${TARGETS[*]} " == *" _core "* ]]; then
  # The Python package on the CUDA extension: GPU-array arguments are checked
  # before any CUDA call (fake __cuda_array_interface__ objects; no device needed).
  echo "== cuda: Python GPU-array checks against the CUDA build"
  rm -rf "$OUT/pkg" && mkdir -p "$OUT/pkg" && cp -r python/groupnorm "$OUT/pkg/"
  cp "$OUT"/_core*.so "$OUT/pkg/groupnorm/"
  PYTHONPATH="$OUT/pkg" python3 -c "import groupnorm, sys; assert groupnorm._core.HAS_CUDA, 'not the CUDA build'; \
    assert groupnorm.__file__.startswith('$OUT/pkg'), groupnorm.__file__"
  PYTHONPATH="$OUT/pkg" python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py
fi
