"""Every code block of the README and docs/ runs as written: ```python blocks are
executed (a block starting `# torchrun --nproc-per-node K` runs on K ranks with
torchrun's environment; `# mpiexec -n K` on 2 ranks under mpiexec), ```c and
```cpp blocks are compiled and run against the installed C/C++ library
(GROUPNORM_PREFIX: a `cmake --install` prefix; without it, the library that
`pip install .` built under build/, or a CMake build of it). ```bash (and other
shell or build-file) blocks are not run. Figures the docs give come from a
named results file."""
import glob
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                              if f.endswith(".md"))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(lang):
    out = []
    for doc in DOCS:
        with open(os.path.join(ROOT, doc)) as f:
            text = f.read()
        for m in (m for m in FENCE.finditer(text) if m.group(1) == lang):
            line = text[:m.start()].count("\n") + 1
            out.append(pytest.param(m.group(2), id=f"{doc}:{line}"))
    return out


def test_every_block_has_a_known_language():
    for doc in DOCS:
        with open(os.path.join(ROOT, doc)) as f:
            langs = {m.group(1) for m in FENCE.finditer(f.read())}
        # run: python, c, cpp; shown only (commands, build files, output): the rest
        assert langs <= {"python", "c", "cpp", "bash", "sh", "console", "text", "cmake", "toml", "yaml", ""}, \
            (doc, langs)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    exe = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    if not exe:
        pytest.fail("mpiexec not found: install the test extra (mpi4py and mpich from PyPI)")
    return exe


def _engine_libraries():
    import engines
    import groupnorm.executorch as gne
    import groupnorm.openvino as gov
    engines.ensure(gov.ENV_VAR, gov.packaged_path(), "libgroupnorm_openvino.so")
    engines.ensure("GROUPNORM_EXECUTORCH_LIBRARY", gne.packaged_library_path(), gne.LIBRARY_NAME)


@pytest.mark.parametrize("code", _blocks("python"))
def test_python_block(code, tmp_path):
    script = tmp_path / "this.py"
    script.write_text(code)
    if "groupnorm.executorch" in code or "groupnorm.openvino" in code:
        _engine_libraries()  # a package built without them: build them once, as the engine tests do
    env = dict(os.environ, OMP_NUM_THREADS="2")
    first = code.splitlines()[0]
    m = re.match(r"# torchrun --nproc-per-node (\d+)", first)
    if m:
        ranks, port = int(m.group(1)), str(_free_port())
        procs = [subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  env=dict(env, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(ranks),
                                           LOCAL_WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1",
                                           MASTER_PORT=port))
                 for r in range(ranks)]
        outs = [p.communicate(timeout=300)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        return
    m = re.match(r"# mpiexec -n (\d+)", first)
    cmd = [sys.executable, str(script)]
    if m:
        cmd = [_mpiexec(), "-n", "2"] + cmd  # two ranks: the collective runs, the machine has 2 cores
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr


def _prefix():
    """(include dir, libgroupnorm.a): GROUPNORM_PREFIX's install, else the library
    `pip install .` built (build/<wheel tag>/libgroupnorm.a) with the source
    headers, else a CMake build of the library under build/docs-cmake."""
    prefix = os.environ.get("GROUPNORM_PREFIX")
    if prefix:
        assert os.path.isfile(os.path.join(prefix, "include", "groupnorm", "groupnorm.h")), \
            f"GROUPNORM_PREFIX={prefix} holds no groupnorm install"
        libs = glob.glob(os.path.join(prefix, "lib*", "**", "libgroupnorm.a"), recursive=True)
        assert libs, f"no libgroupnorm.a under {prefix}"
        return os.path.join(prefix, "include"), libs[0]
    include = os.path.join(ROOT, "cpp", "include")
    built = sorted(glob.glob(os.path.join(ROOT, "build", "*", "libgroupnorm.a")), key=os.path.getmtime)
    if built:
        return include, built[-1]
    build = os.path.join(ROOT, "build", "docs-cmake")
    subprocess.run(["cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DGROUPNORM_BUILD_TESTS=OFF"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", build, "--parallel", "2"], check=True, capture_output=True)
    return include, os.path.join(build, "libgroupnorm.a")


@pytest.fixture(scope="module")
def prefix():
    return _prefix()


@pytest.mark.parametrize("lang,code", [pytest.param(lang, p.values[0], id=p.id)
                                       for lang in ("c", "cpp") for p in _blocks(lang)])
def test_c_and_cpp_block(lang, code, prefix, tmp_path):
    src = tmp_path / ("block.c" if lang == "c" else "block.cpp")
    src.write_text(code)
    exe = tmp_path / "block"
    compiler = [os.environ.get("CC", "cc"), "-std=c99"] if lang == "c" else [os.environ.get("CXX", "c++"), "-std=c++17"]
    include, lib = prefix
    c = subprocess.run(compiler + [str(src), "-o", str(exe), "-I", include, lib, "-lstdc++", "-lm", "-fopenmp"],
                       capture_output=True, text=True)
    assert c.returncode == 0, c.stderr
    p = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_figures_name_their_results_file():
    """The README's speed table names the results file its numbers come from, and
    every row's numbers are that file's (float32 forward, 2 threads)."""
    import csv
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    sec = readme[readme.index("## Speed and accuracy"):readme.index("## Documentation")]
    assert "bench/results/results.csv" in sec and "2 threads" in sec
    with open(os.path.join(ROOT, "bench", "results", "results.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["pass"] == "fwd" and r["dtype"] == "float32" and r["threads"] == "2"]
    table = re.findall(r"^\| (\S+) \((\d+)\) \| (channels-\w+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|$", sec, re.M)
    assert len(table) >= 3, sec
    for dims, groups, layout, ours, torch_ratio, speedup in table:
        r = next(r for r in rows if r["dims"] == dims and r["groups"] == groups
                 and r["layout"] == ("cf" if layout == "channels-first" else "cl"))
        assert f"{float(r['x_copy']):.2f}" == ours, (dims, layout, r["x_copy"], ours)
        assert f"{float(r['torch_x_copy']):.2f}" == torch_ratio, (dims, layout, r["torch_x_copy"], torch_ratio)
        assert f"{float(r['vs_torch']):.1f}" == speedup, (dims, layout, r["vs_torch"], speedup)
