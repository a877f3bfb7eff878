#!/usr/bin/env bash
# Sourced by .ci/run before the README's test command: installs ExecuTorch and exports
# CMAKE_ARGS so that the package build (pip install ".[test]") also builds the ExecuTorch
# kernel library (cpp/integrations/executorch) into the package, next to the extension,
# in the same CMake build: the core is not compiled a second time, one more source file is.
# tests/test_executorch.py then fails (never skips) if the library is missing.
#   source .ci/executorch.sh
echo "== executorch: the runtime for the kernel library and tests/test_executorch.py"
pip install -q "executorch==1.5.1" "torch==2.13.0"
# the isolated build environment of pip cannot import executorch: point CMake at its package
GN_EXECUTORCH_DIR=$(python -c "import executorch, os; print(os.path.join(list(executorch.__path__)[0], 'lib', 'cmake', 'executorch'))")
export CMAKE_ARGS="${CMAKE_ARGS:-} -DGROUPNORM_EXECUTORCH=ON -Dexecutorch_DIR=$GN_EXECUTORCH_DIR"
echo "CMAKE_ARGS=$CMAKE_ARGS"
