# Sourced by .ci/run before the README's test command: the package build then
# builds the OpenVINO extension too (-DGROUPNORM_OPENVINO=ON), in the same CMake
# build as the Python module, so the core is not compiled an extra time.
# OpenVINO's CMake package comes from the openvino wheel (in the [test] extra),
# installed first because pip builds in an isolated environment that cannot
# import it; tests/test_openvino.py fails (never skips) without the extension.
echo "== OpenVINO extension: built with the package (GROUPNORM_OPENVINO=ON)"
python -m pip install -q "openvino>=2024.0"
GN_OV_CMAKE_DIR=$(python -c "import openvino, os; print(os.path.join(os.path.dirname(openvino.__file__), 'cmake'))")
export CMAKE_ARGS="${CMAKE_ARGS:-} -DGROUPNORM_OPENVINO=ON -DOpenVINO_DIR=$GN_OV_CMAKE_DIR"
