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
        assert re.search(r"\d\.\d\dx a same-size copy \(rounds", line) or "too busy to time" in line, line


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
    assert ratio is None and "too busy to time" in text
    # rounds that disagree widely
    ratio, text = speed_verdict(copy * np.array([1.0, 3.0, 1.2, 4.0, 1.1, 2.5, 5.0]), copy)
    assert ratio is None and "not measurable" in text


def _cli(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "groupnorm", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_cli_version_info_and_help():
    p = _cli("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"groupnorm {groupnorm.__version__}", p.stdout + p.stderr
    p = _cli("info")
    assert p.returncode == 0, p.stderr
    for key in ("version:", "instruction set:", "threads:", "OpenMP runtime:", "worker pool:", "CPU caches:"):
        assert key in p.stdout, p.stdout
    assert groupnorm.active_isa() in p.stdout
    caches = groupnorm._core.cache_sizes()  # the plan's caches, shown with their source
    assert f"L2 {caches['l2'] >> 10} KiB ({caches['l2_source']})" in p.stdout, p.stdout
    p = _cli("bench", "--help")
    assert p.returncode == 0 and "usage: python -m groupnorm bench" in p.stdout, p.stdout + p.stderr
    p = _cli("--help")
    assert p.returncode == 0 and "{demo,bench,info}" in p.stdout, p.stdout


def test_cli_errors_are_argparse_errors_not_tracebacks():
    for args, message in ((("--shape", "2,30,8,8"), "num_channels 30 (shape 2,30,8,8) is not divisible by --groups 32"),
                          (("--shape", "2,x"), "shape must be comma-separated integers"),
                          (("bench", "--shape", "2,30,8,8", "--groups", "4"), "not divisible by --groups 4"),
                          (("frobnicate",), "unrecognized arguments")):
        p = _cli(*args)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert message in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)


def test_cli_bench_runs_with_torch_and_plots(tmp_path):
    png = tmp_path / "bench.png"
    p = _cli("bench", "--shape", "2,32,8,8", "--groups", "8", "--rounds", "3", "--seconds", "0.05",
             "--plot", str(png))
    assert p.returncode == 0, p.stdout + p.stderr
    line = next(l for l in p.stdout.splitlines() if l.startswith("2,32,8,8") and "channels-first" in l)
    assert re.search(r"\d\.\d\dx$", line) or "busy" in line, line   # the speedup over torch
    assert png.stat().st_size > 1000


def test_one_openmp_runtime_without_torch():
    """`import groupnorm` alone maps one OpenMP runtime: the wheel's own copy
    (groupnorm/_libs/libgomp.so.1, found through the extension's RUNPATH) when the
    package is the wheel, else the system's libgomp.so.1."""
    code = ("import groupnorm, sys; from groupnorm.__main__ import openmp_runtime; "
            "groupnorm.group_norm(__import__('numpy').ones((2, 8, 64, 64), 'float32'), 4, num_threads=2); "
            "assert 'torch' not in sys.modules; print(openmp_runtime())")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert "," not in out and "gomp" in out, out
    vendored = os.path.join(os.path.dirname(groupnorm.__file__), "_libs", "libgomp.so.1")
    if os.path.exists(vendored):
        assert os.path.realpath(out) == os.path.realpath(vendored), (out, vendored)
