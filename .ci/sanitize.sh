#!/usr/bin/env bash
# The C++ suites under AddressSanitizer + UndefinedBehaviorSanitizer: any
# report fails the run (-fno-sanitize-recover=all). RelWithDebInfo keeps the
# kernels' vector code close to the release build while reports get lines.
# OpenMP stays on (the threaded schedules are what we most want checked).
# test_install_examples (a second, unsanitized build) is left to cpp.sh.
#   bash .ci/sanitize.sh     (build dir under ${GN_BUILD_ROOT:-build/ci})
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${GN_BUILD_ROOT:-$ROOT/build/ci}
JOBS=${GN_JOBS:-2}
DIR=$OUT/sanitize
mkdir -p "$OUT"
source .ci/common.sh
fresh_build_dir "$DIR"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
echo "== sanitize: configure (ASan + UBSan, RelWithDebInfo, OpenMP)"
cmake -S "$ROOT" -B "$DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGROUPNORM_BUILD_TESTS=ON \
  -DGROUPNORM_OPENMP=ON -DGROUPNORM_INSTALL=OFF \
  -DCMAKE_C_FLAGS="$SAN" -DCMAKE_CXX_FLAGS="$SAN" \
  -DCMAKE_EXE_LINKER_FLAGS="$SAN" -DCMAKE_SHARED_LINKER_FLAGS="$SAN" >"$DIR.configure.log" 2>&1 ||
  { cat "$DIR.configure.log"; exit 1; }
echo "== sanitize: build"
cmake --build "$DIR" --parallel "$JOBS"
echo "== sanitize: ctest"
# detect_leaks: every allocation must be freed; halt_on_error: the first report fails the test
# allocator_may_return_null: test_c_api asks for more scratch than any machine has and expects
# GROUPNORM_OUT_OF_MEMORY (a failed new (nothrow)), not an abort
export ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1:halt_on_error=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd "$DIR" && ctest --output-on-failure --timeout 900 -E test_install_examples)
echo "sanitize.sh: all passed"
