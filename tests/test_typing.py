"""Types: the user script passes `mypy --strict`, the _core stub declares what
the extension defines, dir(groupnorm) lists the API."""
import os
import subprocess
import sys

import groupnorm
from groupnorm import _core

HERE = os.path.dirname(os.path.abspath(__file__))


def test_user_script_passes_mypy_strict():
    p = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull,
                        os.path.join(HERE, "typing_user.py")], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    subprocess.run([sys.executable, os.path.join(HERE, "typing_user.py")], check=True, timeout=120)


def test_core_stub_matches_the_extension():
    stub = os.path.join(os.path.dirname(groupnorm.__file__), "_core.pyi")
    with open(stub) as f:
        text = f.read()
    import re
    declared = set(re.findall(r"^def (\w+)\(", text, re.M)) | set(re.findall(r"^(\w+): ", text, re.M))
    defined = {n for n in dir(_core) if not n.startswith("_")}
    assert declared == defined, (sorted(declared - defined), sorted(defined - declared))


def test_dir_is_the_api():
    names = {n for n in dir(groupnorm) if not n.startswith("_")}
    assert set(groupnorm.__all__) - {"__version__"} <= names
    assert not names & {"Dict", "List", "Optional", "np", "annotations", "os", "warnings"}, names
    assert names - set(groupnorm.__all__) <= {"functional", "layer", "split", "distributed", "torch", "onnx",
                                              "openvino", "executorch"}, names
