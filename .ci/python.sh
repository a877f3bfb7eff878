#!/usr/bin/env bash
# The Python package as a user gets it: the wheel (.ci/wheel.sh: CI's one build
# of the extension), installed with its test and docs extras into a fresh venv
# (no system site-packages; binary packages only, so no compiler is needed), then
# mypy --strict on the package and on a user script, the docs site built with
# warnings as errors, and the README's test command `pytest` against the
# installed wheel (its summary is the last line).
#   bash .ci/python.sh      (after .ci/cpp.sh: the docs' C and C++ blocks link the
#                            library it installed; GROUPNORM_PREFIX overrides)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${GN_BUILD_ROOT:-$PWD/build/ci}
mkdir -p "$OUT"
PY=${PYTHON:-python}

rm -rf "$OUT/wheelhouse"
bash .ci/wheel.sh "$OUT/wheelhouse"
whl=$(ls "$OUT"/wheelhouse/groupnorm-*.whl)

echo "== sdist: builds, and holds what a source build needs"
rm -rf "$OUT/sdist"
"$PY" -c "import sys; from scikit_build_core.build import build_sdist; print(build_sdist(sys.argv[1]))" "$OUT/sdist" >/dev/null 2>&1 ||
  { "$PY" -m pip install -q "scikit-build-core>=0.10" && "$PY" -c "import sys; from scikit_build_core.build import build_sdist; build_sdist(sys.argv[1])" "$OUT/sdist"; }
sdist=$(ls "$OUT"/sdist/groupnorm-*.tar.gz)
tar -tzf "$sdist" >"$OUT/sdist.txt"
for f in CMakeLists.txt pyproject.toml cpp/src/cpu/dispatch.cpp cpp/include/groupnorm/groupnorm.h python/src/bindings.cpp python/groupnorm/__init__.py python/groupnorm/_core.pyi LICENSE README.md; do
  grep -q "^groupnorm-[0-9.]*/$f\$" "$OUT/sdist.txt" || { echo "FAIL: $f is not in $sdist"; exit 1; }
done
rm -rf "$OUT/sdist-tree" "$OUT/sdist-build" && mkdir -p "$OUT/sdist-tree"
tar -xzf "$sdist" -C "$OUT/sdist-tree"
cmake -S "$OUT"/sdist-tree/groupnorm-* -B "$OUT/sdist-build" -DGROUPNORM_BUILD_TESTS=OFF >"$OUT/sdist-configure.log" 2>&1 ||
  { cat "$OUT/sdist-configure.log"; echo "FAIL: the sdist does not configure"; exit 1; }
echo "$(basename "$sdist"): $(wc -l <"$OUT/sdist.txt") files; configures (the build itself is the wheel's)"

echo "== fresh venv: the wheel (a file: never built) with its test and docs extras"
rm -rf "$OUT/venv"
"$PY" -m venv "$OUT/venv"
export PATH="$OUT/venv/bin:$PATH"
# the extras the suite needs: every test dependency must be in one of them (an
# engine integration whose tests join the suite adds its extra here, or to [test])
EXTRAS=${GN_VENV_EXTRAS:-test,docs}
# --no-compile: no .pyc for all of torch up front (72 s -> 25 s here; imports write them)
python -m pip install -q --no-compile --prefer-binary "$whl[$EXTRAS]" >"$OUT/venv-install.log" 2>&1 ||
  { grep -v "^WARNING: Location" "$OUT/venv-install.log"; exit 1; }
python -c "import groupnorm, sys; assert groupnorm.__file__.startswith(sys.prefix), groupnorm.__file__; print('groupnorm', groupnorm.__version__, 'from', groupnorm.__file__)"

echo "== mypy --strict: the package and a user script"
python -m mypy --strict --no-incremental -p groupnorm
python -m mypy --strict --no-incremental tests/typing_user.py

echo "== docs: mkdocs build --strict"
python -m mkdocs build --strict --quiet -d "$OUT/site"

echo "== python: the README's test command against the installed wheel (every skip listed; any skip but 'no GPU' fails the run)"
# the docs' C and C++ blocks link .ci/cpp.sh's install (else tests/test_docs.py finds pip's build)
if [ -z "${GROUPNORM_PREFIX:-}" ] && [ -d "$OUT/host-openmp/cpp/tests/install_examples/prefix" ]; then
  export GROUPNORM_PREFIX=$OUT/host-openmp/cpp/tests/install_examples/prefix
fi
# GN_PYTEST_ARGS: pytest arguments for a partial local run (CI passes none)
# shellcheck disable=SC2086
pytest ${GN_PYTEST_ARGS:-}
