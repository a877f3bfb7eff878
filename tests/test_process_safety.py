"""The process around a call: the cyclic GC, interpreter exit, fork, and the
library's locks. Each scenario runs in a child process with a timeout, so a
hang or an abort fails the test instead of stalling the run."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_child(code, timeout=120, env=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout, env=full_env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the child process hung (no exit in {timeout} s); output so far: {e.stdout!r} {e.stderr!r}")


def assert_clean(p, expect=None):
    assert p.returncode == 0, f"child exited with {p.returncode}:\n{p.stdout}\n{p.stderr}"
    if expect is not None:
        assert expect in p.stdout, p.stdout + p.stderr


# ----------------------------------------------------------------- the GC under a library lock
def test_gc_freeing_outputs_inside_buffer_cache_info_does_not_deadlock():
    # The outputs are held only by reference cycles; the dict free list is
    # emptied and the GC threshold set to 1, so the first Python allocation
    # inside buffer_cache_info() runs the GC, which frees the outputs, whose
    # release takes the cache's lock: that lock must not be held then.
    p = run_child("""
        import gc, numpy as np, groupnorm
        from groupnorm import _core
        x = np.random.default_rng(0).standard_normal((1, 8, 128, 128)).astype(np.float32)
        class Holder:
            def __init__(self, y): self.y = y; self.me = self
        gc.disable()
        for _ in range(200):
            Holder(groupnorm.group_norm(x, 4))
        hold = [{} for _ in range(200)]
        gc.set_threshold(1)
        gc.enable()
        info = _core.buffer_cache_info()
        gc.collect()
        after = groupnorm.buffer_cache_info()
        assert after["cached_blocks"] >= 1, after
        print("done", info["misses"], after["cached_blocks"])
    """, timeout=60)
    assert_clean(p, "done 200")


def _lock_scopes(text):
    """(line, body) of every block that holds a std mutex (lock_guard/unique_lock/scoped_lock)."""
    for m in re.finditer(r"std::(lock_guard|unique_lock|scoped_lock)<[^>]*>\s*\w+\s*\(", text):
        # the body is what follows the lock until its enclosing block closes
        depth, i = 0, m.end()
        while i < len(text):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                if depth == 0:
                    break
                depth -= 1
            i += 1
        yield text.count("\n", 0, m.start()) + 1, text[m.end():i]


def test_no_library_lock_is_held_across_python():
    """The rule in python/src/bindings.cpp ("Locks"): while a library lock is held,
    no Python object is created and no Python API or callback is called."""
    sources = sorted((ROOT / "python" / "src").glob("*.cpp")) + sorted((ROOT / "cpp" / "src").rglob("*.cpp"))
    assert sources, "no C++ sources found next to the tests"
    checked = 0
    for path in sources:
        text = path.read_text()
        for line, body in _lock_scopes(text):
            checked += 1
            hits = re.findall(r"\bpy::\w+|\bPy[A-Z_]\w*|\bgil\w*", body)
            assert not hits, f"{path.relative_to(ROOT)}:{line} holds a lock across Python: {sorted(set(hits))}"
    assert checked >= 5, f"only {checked} lock scopes found: the scan no longer sees the locks"


def test_lock_scan_catches_python_under_a_lock():
    bad = "void f() {\n  std::lock_guard<std::mutex> lock(mu_);\n  py::dict d;\n}\n"
    good = "void f() {\n  { std::lock_guard<std::mutex> lock(mu_); n = 1; }\n  py::dict d;\n}\n"
    assert [b for _, b in _lock_scopes(bad) if "py::" in b]
    assert not [b for _, b in _lock_scopes(good) if "py::" in b]


# ----------------------------------------------------------------- interpreter exit
@pytest.mark.parametrize("pool", [True, False], ids=["pool", "openmp"])
def test_exit_while_a_daemon_thread_is_inside_a_call(pool):
    code = f"""
        import threading, time, numpy as np, groupnorm
        groupnorm.set_worker_pool({pool})
        x = np.random.default_rng(0).standard_normal((4, 64, 128, 128)).astype(np.float32)
        def loop():
            while True:
                groupnorm.group_norm(x, 8)
        threading.Thread(target=loop, daemon=True).start()
        time.sleep(0.3)
        print("main returns")
    """
    for _ in range(3):
        assert_clean(run_child(code, timeout=60), "main returns")


# ----------------------------------------------------------------- fork
_FORK_CHILD = """
    import os, sys, numpy as np, groupnorm
    {setup}
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 64, 32, 32)).astype(np.float32)
    w, b = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    y0 = groupnorm.group_norm(x, 8, w, b, num_threads=2)          # a multi-threaded call in the parent
    gy = rng.standard_normal(x.shape).astype(np.float32)
    g0 = groupnorm.group_norm_backward(gy, x, *groupnorm.group_norm(x, 8, w, b, return_stats=True)[1:], 8, w, b)[0]
    pid = os.fork()
    if pid == 0:
        ok = True
        for t in (None, 2):
            y = groupnorm.group_norm(x, 8, w, b, num_threads=t)
            g = groupnorm.group_norm_backward(gy, x, *groupnorm.group_norm(x, 8, w, b, return_stats=True)[1:],
                                              8, w, b, num_threads=t)[0]
            ok = ok and np.array_equal(y.view(np.uint32), y0.view(np.uint32)) and np.array_equal(g, g0)
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("setup", ["groupnorm.set_worker_pool(False)", "import groupnorm.torch",
                                   "groupnorm.set_worker_pool(True)"], ids=["openmp", "torch-import", "pool"])
def test_forked_child_gets_correct_results(setup):
    p = run_child(_FORK_CHILD.format(setup=setup), timeout=90, env={"OMP_NUM_THREADS": "2"})
    assert_clean(p, "child 0")


def test_multiprocessing_fork_pool_numpy_and_torch():
    p = run_child("""
        import multiprocessing as mp, numpy as np, torch, groupnorm, groupnorm.torch as gnt
        x = np.random.default_rng(2).standard_normal((2, 32, 24, 24)).astype(np.float32)
        t = torch.from_numpy(x)
        y0 = groupnorm.group_norm(x, 4)
        t0 = gnt.group_norm(t, 4)
        def work(i):
            # compared in NumPy: torch's own parallel ops (torch.equal) hang in such a child
            return (np.array_equal(groupnorm.group_norm(x, 4), y0)
                    and np.array_equal(gnt.group_norm(t, 4).numpy(), t0.numpy()))
        with mp.get_context("fork").Pool(2) as pool:
            print("results", pool.map(work, range(4), chunksize=1))
    """, timeout=120, env={"OMP_NUM_THREADS": "2"})
    assert_clean(p, "results [True, True, True, True]")


# ----------------------------------------------------------------- memory handed back
def test_release_memory_returns_resident_memory():
    p = run_child("""
        import gc, numpy as np, groupnorm
        def rss_mib():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
        x = np.ones((1, 32, 128, 128), np.float32)          # 2 MiB outputs
        base = rss_mib()
        ys = [groupnorm.group_norm(x, 8) for _ in range(200)]
        for y in ys: y[...] = 1
        del ys, y; gc.collect()
        held = rss_mib()
        freed = groupnorm.release_memory() / 2**20
        after = rss_mib()
        print(f"base {base:.0f} held {held:.0f} freed {freed:.0f} after {after:.0f}")
        assert held - base > 350, (base, held)
        assert freed >= 390, freed
        assert after - base < 40, (base, held, after)
        print("released")
    """, timeout=120)
    assert_clean(p, "released")
