"""The worker pool and OpenMP regions compute the same bits; groupnorm.torch turns the pool off."""
import subprocess
import sys

import numpy as np
import pytest

import groupnorm


@pytest.fixture
def restore_pool():
    before = groupnorm.worker_pool()
    yield
    groupnorm.set_worker_pool(before)


@pytest.mark.parametrize("shape,groups,cl", [
    ((3, 64, 40, 40), 8, False),      # sets over threads (mode A)
    ((1, 32, 256, 256), 4, False),    # one big sample: tiles over threads (mode B)
    ((2, 40, 40, 64), 16, True),
    ((1, 200, 200, 32), 8, True),
])
def test_pool_and_openmp_regions_give_the_same_bits(shape, groups, cl, restore_pool):
    rng = np.random.default_rng()
    x = (rng.standard_normal(shape) * 3 + 5).astype(np.float32)
    c = shape[-1] if cl else shape[1]
    w = rng.standard_normal(c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    gy = rng.standard_normal(shape).astype(np.float32)
    res = {}
    for on in (True, False):
        groupnorm.set_worker_pool(on)
        assert groupnorm.worker_pool() is on
        y, m, r = groupnorm.group_norm(x, groups, w, b, channels_last=cl, return_stats=True, num_threads=2)
        gx, gw, gb = groupnorm.group_norm_backward(gy, x, m, r, groups, w, b, channels_last=cl, num_threads=2)
        res[on] = (y, m, r, gx, gw, gb)
    for a, b_ in zip(res[True], res[False]):
        np.testing.assert_array_equal(a, b_)
    one = groupnorm.group_norm(x, groups, w, b, channels_last=cl, num_threads=1)
    np.testing.assert_array_equal(one, res[True][0])


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
    env = dict(__import__("os").environ, GROUPNORM_WORKER_POOL="0")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    assert out.strip() == "False"
