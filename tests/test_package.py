"""The package as installed: one version everywhere, typing marker, license
metadata, annotations of the public API, and the demo's speed line."""
import importlib.metadata
import os
import re
import subprocess
import sys
import typing

import numpy as np

import groupnorm
from groupnorm import _core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject_version():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        m = re.search(r'^version = "([0-9]+\.[0-9]+\.[0-9]+)"$', f.read(), re.M)
    assert m, "pyproject.toml has no version line"
    return m.group(1)


def test_one_version_everywhere():
    """pyproject.toml's version is the package's, the wheel metadata's and the C API's
    groupnorm_version() (CMake's project version, read from pyproject.toml)."""
    v = _pyproject_version()
    assert groupnorm.__version__ == v
    assert importlib.metadata.version("groupnorm") == v
    assert _core.VERSION == v
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        cmake = f.read()
    assert "project(groupnorm VERSION ${GN_VERSION}" in cmake, "CMake's version must come from pyproject.toml"


def test_typed_package_and_license():
    pkg = os.path.dirname(groupnorm.__file__)
    assert os.path.isfile(os.path.join(pkg, "py.typed")), "py.typed is not in the installed package"
    meta = importlib.metadata.metadata("groupnorm")
    assert meta["License"] == "MIT" or "MIT" in (meta.get("License-Expression") or "")
    assert "groupnorm developers" in (meta.get("Author") or "") + (meta.get("Author-email") or "")
    assert "License :: OSI Approved :: MIT License" in meta.get_all("Classifier")
    with open(os.path.join(ROOT, "LICENSE")) as f:
        assert "MIT License" in f.read()


def test_public_api_is_annotated():
    for fn in (groupnorm.group_norm, groupnorm.group_norm_backward, groupnorm.set_num_threads,
               groupnorm.get_num_threads, groupnorm.available_isas, groupnorm.active_isa, groupnorm.set_isa,
               groupnorm.GroupNorm.__init__, groupnorm.GroupNorm.__call__, groupnorm.GroupNorm.backward):
        hints = typing.get_type_hints(fn)
        assert "return" in hints, fn.__qualname__
    hints = typing.get_type_hints(groupnorm.group_norm)
    assert hints["num_groups"] is int and hints["channels_last"] is bool


def test_demo_runs_and_checks():
    env = dict(os.environ, OMP_NUM_THREADS="2")
    p = subprocess.run([sys.executable, "-m", "groupnorm", "--shape", "2,32,16,16", "--groups", "8"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[-1] == "OK"
    for layout in ("channels-first", "channels-last"):
        line = next(l for l in lines if l.startswith(layout))
        assert re.search(r"\d\.\d\dx a same-size copy \(rounds", line) or "not measurable here" in line, line


def test_demo_speed_verdict():
    """The speed line is a ratio only when the interleaved rounds agree and the copy
    is plausible; a disturbed measurement says so instead of printing 0.02x."""
    from groupnorm.__main__ import speed_verdict
    rng = np.random.default_rng()
    copy = 1e-3 * (1 + 0.02 * rng.random(7))
    ratio, text = speed_verdict(1.3 * copy, copy)
    assert abs(ratio - 1.3) < 1e-9 and "1.30x a same-size copy" in text
    # the copy was preempted in most rounds: group norm looks 50x faster than a copy
    disturbed = copy.copy()
    disturbed[:5] *= 60
    ratio, text = speed_verdict(1.3 * copy, disturbed)
    assert ratio is None and "not measurable" in text
    # rounds that disagree widely
    ratio, text = speed_verdict(copy * np.array([1.0, 3.0, 1.2, 4.0, 1.1, 2.5, 5.0]), copy)
    assert ratio is None and "not measurable" in text
