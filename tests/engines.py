"""The engine libraries the engine tests load: the OpenVINO extension and the
ExecuTorch kernel library.

CI builds them with the package (.ci/openvino.sh and .ci/executorch.sh export
CMAKE_ARGS before the README's test command), so they are found inside the
installed package. A package built without them (the README's test command on a
fresh machine) gets them built here once, with CMake, from this checkout against
the installed engines (build/engines, reused by later runs; a few minutes the
first time), and the tests load them through the environment variables the
package reads. A build that fails fails the tests: never a skip."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "engines"


def _cmake_dirs():
    import executorch
    import openvino
    return {"OpenVINO_DIR": Path(openvino.__file__).parent / "cmake",
            "executorch_DIR": Path(list(executorch.__path__)[0]) / "lib" / "cmake" / "executorch"}


def _build():
    defs = [f"-D{k}={v}" for k, v in _cmake_dirs().items()]
    cmd = ["cmake", "-S", str(ROOT), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release", "-DGROUPNORM_BUILD_TESTS=OFF",
           "-DGROUPNORM_BUILD_PYTHON=OFF", "-DGROUPNORM_INSTALL=OFF", "-DGROUPNORM_OPENVINO=ON",
           "-DGROUPNORM_EXECUTORCH=ON", *defs]
    print(f"\nbuilding the engine libraries in {BUILD} (the package was built without them)", file=sys.stderr)
    for step in (cmd, ["cmake", "--build", str(BUILD), "--parallel", str(os.cpu_count() or 2),
                       "--target", "groupnorm_openvino", "groupnorm_executorch"]):
        p = subprocess.run(step, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"building the engine libraries failed: {' '.join(step)}\n{p.stdout[-4000:]}"
                               f"\n{p.stderr[-4000:]}")


def _built(name):
    found = sorted(BUILD.rglob(name))
    return str(found[0]) if found else None


def ensure(env_var, packaged_path, name):
    """The library's path: the packaged one, the one $env_var names, or one built here."""
    if os.environ.get(env_var) or os.path.isfile(packaged_path):
        return
    if _built(name) is None:
        _build()
    path = _built(name)
    if path is None:
        raise RuntimeError(f"the engine build in {BUILD} made no {name}")
    os.environ[env_var] = path
