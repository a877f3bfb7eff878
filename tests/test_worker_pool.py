"""The worker pool: the path taken when it is on, its switch, and groupnorm.torch turning it off.
(That the pool and OpenMP regions compute the same bits is tests/test_determinism.py's.)"""
import os
import subprocess
import sys

import pytest

import groupnorm


@pytest.fixture
def restore_pool():
    before = groupnorm.worker_pool()
    yield
    groupnorm.set_worker_pool(before)


def test_set_worker_pool_takes_a_bool(restore_pool):
    for bad in (1, 0, None, "yes"):
        with pytest.raises(TypeError, match="on must be a bool"):
            groupnorm.set_worker_pool(bad)


def test_torch_integration_runs_in_shared_openmp_regions():
    code = "import groupnorm; assert groupnorm.worker_pool(); import groupnorm.torch; print(groupnorm.worker_pool())"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"


def test_environment_turns_the_pool_off():
    code = "import groupnorm; print(groupnorm.worker_pool())"
    env = dict(os.environ, GROUPNORM_WORKER_POOL="0")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    assert out.strip() == "False"


_THREADS_CODE = r"""
import os, numpy as np, groupnorm
groupnorm.set_worker_pool({on})
x = np.random.default_rng(0).standard_normal((1, 32, 256, 256)).astype(np.float32)
before = len(os.listdir("/proc/self/task"))
for _ in range(3):
    groupnorm.group_norm(x, 4, num_threads=3)
print(len(os.listdir("/proc/self/task")) - before)
"""


def test_the_pool_runs_calls_when_on():
    """The pool's threads are its own (std::thread, started on first use and kept), so with
    OpenMP held to one thread (OMP_THREAD_LIMIT=1) a 3-thread call starts 2 new threads only
    when it runs on the pool: with the pool off it starts none. Fails where the pool path is
    not taken (a build without OpenMP has no pool), so the bitwise comparison of the pool and
    OpenMP regions in test_determinism.py is not a comparison of one path with itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUPNORM_")}
    env["OMP_THREAD_LIMIT"] = "1"
    new = {}
    for on in (True, False):
        out = subprocess.run([sys.executable, "-c", _THREADS_CODE.format(on=on)], check=True, capture_output=True,
                             text=True, env=env, timeout=120).stdout
        new[on] = int(out.strip())
    assert new == {True: 2, False: 0}, f"threads started by 3-thread calls (pool on/off): {new}"
