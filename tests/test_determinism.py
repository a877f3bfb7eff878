"""Bitwise determinism: batch size, thread count, instruction set, worker pool.
(Forced schedules: tests/test_schedules.py.)

These are the only tests that compare groupnorm with itself; each also checks one
result against the reference so that a consistently wrong answer cannot pass.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import (BF16, F16, F32, F64, assert_bitwise_equal, assert_close, dtype_id, make_shape,
                      poison, ref_backward, ref_forward)

# (shape, G, channels_last): big ones are split over threads / chunks, small ones are not
BIG = [((1, 64, 128, 128), 4, False), ((2, 64, 64, 96), 8, True)]
SMALL = [((3, 8, 5, 7), 2, False), ((3, 5, 7, 8), 4, True), ((4, 6), 3, False), ((2, 3, 4, 5, 6), 3, True)]
MEDIUM = [((3, 32, 40, 40), 8, False), ((3, 20, 20, 48), 16, True), ((2, 16, 4100), 1, False)]


def _case_id(c):
    shape, G, cl = c
    return f"{'x'.join(map(str, shape))}-G{G}-{'cl' if cl else 'cf'}"


def _C(shape, cl):
    return shape[-1] if cl else shape[1]


def _forward_all(gn, x, G, w, b, cl, **kw):
    y, m, r = gn.group_norm(x, G, w, b, channels_last=cl, return_stats=True, **kw)
    return y, m, r


def _assert_ref(y, x, G, w, b, cl, activation=None):
    ref, _, _ = ref_forward(x, G, w, b, channels_last=cl, activation=activation)
    if x.dtype == F64:
        assert_close(y, ref, rtol=1e-10, atol=1e-10)
    elif x.dtype == F32:
        assert_close(y, ref, rtol=3e-5, atol=3e-5)
    else:
        assert_close(y, ref, rtol=2e-2, atol=2e-2)


# ----------------------------------------------------------------- batch size


@pytest.mark.parametrize("dtype", [F32, F64, F16, BF16], ids=dtype_id)
@pytest.mark.parametrize("case", SMALL + MEDIUM[:2], ids=_case_id)
@pytest.mark.parametrize("activation", [None, "silu"])
def test_batch_size_independence(gn, rng, dtype, case, activation):
    shape, G, cl = case
    x = rng.x(shape, dtype)
    w, b = rng.params(_C(shape, cl))
    y, m, r = _forward_all(gn, x, G, w, b, cl, activation=activation)
    _assert_ref(y, x, G, w, b, cl, activation)
    for i in range(shape[0]):
        yi, mi, ri = _forward_all(gn, x[i:i + 1].copy(), G, w, b, cl, activation=activation)
        assert_bitwise_equal(yi[0], y[i], f"y sample {i}")
        assert_bitwise_equal(mi[0], m[i], f"mean sample {i}")
        assert_bitwise_equal(ri[0], r[i], f"rstd sample {i}")
    # a sub-batch taken out of the middle, too
    if shape[0] >= 3:
        y2, _, _ = _forward_all(gn, x[1:3].copy(), G, w, b, cl, activation=activation)
        assert_bitwise_equal(y2, y[1:3], "y sub-batch")


@pytest.mark.parametrize("case", BIG, ids=_case_id)
def test_batch_size_independence_big(gn, rng, case):
    shape, G, cl = case
    x = rng.x((3,) + shape[1:], np.float32)
    w, b = rng.params(_C(shape, cl))
    y = gn.group_norm(x, G, w, b, channels_last=cl)
    _assert_ref(y[2:], x[2:], G, w, b, cl)
    y1 = gn.group_norm(x[2:].copy(), G, w, b, channels_last=cl)
    assert_bitwise_equal(y1, y[2:], "last sample alone vs in batch")


@pytest.mark.parametrize("case", SMALL[:2] + MEDIUM[:2], ids=_case_id)
@pytest.mark.parametrize("activation", [None, "silu"])
def test_backward_grad_x_batch_size_independence(gn, rng, case, activation):
    shape, G, cl = case
    x = rng.x(shape, np.float32)
    dy = rng.normal(shape, np.float32)
    w, b = rng.params(_C(shape, cl))
    _, m, r = _forward_all(gn, x, G, w, b, cl)
    gx, _, _ = gn.group_norm_backward(dy, x, m, r, G, w, b, channels_last=cl, activation=activation)
    rx, _, _ = ref_backward(dy, x, G, w, b, channels_last=cl, activation=activation)
    assert_close(gx, rx, rtol=1e-4, atol=3e-5)
    for i in range(shape[0]):
        gxi, _, _ = gn.group_norm_backward(dy[i:i + 1].copy(), x[i:i + 1].copy(), m[i:i + 1], r[i:i + 1], G,
                                           w, b, channels_last=cl, activation=activation)
        assert_bitwise_equal(gxi[0], gx[i], f"grad_x sample {i}")


# ----------------------------------------------------------------- thread count


THREADS = [1, 2, 3, 4, 7]


@pytest.mark.parametrize("case", BIG + MEDIUM + SMALL[:2], ids=_case_id)
def test_thread_count_independence_forward(gn, rng, case):
    shape, G, cl = case
    x = rng.x(shape, np.float32, loc=3.0)
    w, b = rng.params(_C(shape, cl))
    base = _forward_all(gn, x, G, w, b, cl, num_threads=1)
    _assert_ref(base[0], x, G, w, b, cl)
    for t in THREADS[1:]:
        res = _forward_all(gn, x, G, w, b, cl, num_threads=t)
        for name, a, c in zip(("y", "mean", "rstd"), res, base):
            assert_bitwise_equal(a, c, f"{name} with {t} threads vs 1")


@pytest.mark.parametrize("dtype", [F64, F16, BF16], ids=dtype_id)
@pytest.mark.parametrize("case", [MEDIUM[0], MEDIUM[1], BIG[1]], ids=_case_id)
def test_thread_count_independence_dtypes(gn, rng, dtype, case):
    shape, G, cl = case
    x = rng.x(shape, dtype)
    w, b = rng.params(_C(shape, cl))
    base = _forward_all(gn, x, G, w, b, cl, num_threads=1, activation="silu")
    for t in (2, 3, 4):
        res = _forward_all(gn, x, G, w, b, cl, num_threads=t, activation="silu")
        for name, a, c in zip(("y", "mean", "rstd"), res, base):
            assert_bitwise_equal(a, c, f"{name} with {t} threads vs 1")


def test_default_threads_follow_set_num_threads(gn, rng):
    shape, G, cl = BIG[0]
    x = rng.x(shape, np.float32)
    base = gn.group_norm(x, G, num_threads=1)
    for t in (1, 2, 3):
        gn.set_num_threads(t)
        assert_bitwise_equal(gn.group_norm(x, G), base, f"set_num_threads({t})")


@pytest.mark.parametrize("case", [BIG[0], BIG[1], MEDIUM[0], MEDIUM[2]], ids=_case_id)
@pytest.mark.parametrize("activation", [None, "silu"])
def test_thread_count_independence_backward(gn, rng, case, activation):
    shape, G, cl = case
    x = rng.x(shape, np.float32)
    dy = rng.normal(shape, np.float32)
    w, b = rng.params(_C(shape, cl))
    _, m, r = _forward_all(gn, x, G, w, b, cl)
    base = gn.group_norm_backward(dy, x, m, r, G, w, b, channels_last=cl, activation=activation, num_threads=1)
    if shape[0] * np.prod(shape[1:]) <= 2_000_000:
        rx, rw, rb = ref_backward(dy, x, G, w, b, channels_last=cl, activation=activation)
        assert_close(base[0], rx, rtol=1e-4, atol=3e-5)
        assert_close(base[2], rb, rtol=1e-4, atol=1e-4 * np.abs(rb).max())
    for t in (2, 3, 4):
        res = gn.group_norm_backward(dy, x, m, r, G, w, b, channels_last=cl, activation=activation,
                                     num_threads=t)
        for name, a, c in zip(("grad_x", "grad_weight", "grad_bias"), res, base):
            assert_bitwise_equal(a, c, f"{name} with {t} threads vs 1")


# ----------------------------------------------------------------- instruction set


def _isas(gn):
    isas = gn.available_isas()
    if len(isas) < 2:
        pytest.skip(f"host: only one instruction set available: {isas}")
    return isas


@pytest.mark.parametrize("dtype", [F32, F64, F16, BF16], ids=dtype_id)
@pytest.mark.parametrize("case", SMALL + MEDIUM[:2] + [BIG[1]], ids=_case_id)
@pytest.mark.parametrize("activation", [None, "silu"])
def test_isa_independence_forward(gn, rng, dtype, case, activation):
    isas = _isas(gn)
    shape, G, cl = case
    x = rng.x(shape, dtype, loc=1.0)
    w, b = rng.params(_C(shape, cl))
    w *= 3  # spread z over the silu's range
    skip = rng.normal(shape, dtype)
    results = {}
    for isa in isas:
        gn.set_isa(isa)
        assert gn.active_isa() == isa
        y, m, r = _forward_all(gn, x, G, w, b, cl, activation=activation)
        ys = gn.group_norm(x, G, w, b, channels_last=cl, activation=activation, skip=skip, skip_bias=b)
        results[isa] = (y, m, r, ys)
    first = isas[0]
    _assert_ref(results[first][0], x, G, w, b, cl, activation)
    for isa in isas[1:]:
        for name, a, c in zip(("y", "mean", "rstd", "y(skip)"), results[isa], results[first]):
            assert_bitwise_equal(a, c, f"{name} on {isa} vs {first}")


@pytest.mark.parametrize("dtype", [F32, F64, F16, BF16], ids=dtype_id)
@pytest.mark.parametrize("case", SMALL[:2] + MEDIUM[:2], ids=_case_id)
@pytest.mark.parametrize("activation", [None, "silu"])
def test_isa_independence_backward(gn, rng, dtype, case, activation):
    isas = _isas(gn)
    shape, G, cl = case
    x = rng.x(shape, dtype)
    dy = rng.normal(shape, dtype)
    w, b = rng.params(_C(shape, cl))
    _, m, r = _forward_all(gn, x, G, w, b, cl)
    results = {}
    for isa in isas:
        gn.set_isa(isa)
        results[isa] = gn.group_norm_backward(dy, x, m, r, G, w, b, channels_last=cl, activation=activation)
    first = isas[0]
    for isa in isas[1:]:
        for name, a, c in zip(("grad_x", "grad_weight", "grad_bias"), results[isa], results[first]):
            assert_bitwise_equal(a, c, f"{name} on {isa} vs {first}")


@pytest.mark.parametrize("dtype", [F16, BF16], ids=dtype_id)
@pytest.mark.parametrize("channels_last", [False, True])
def test_isa_independence_half_special_outputs(gn, rng, dtype, channels_last):
    # outputs that are 16-bit denormals, huge (float16: inf), NaN, and -0.0: the
    # conversions' edge cases on every target (the avx512bf16 target's
    # instruction flushes denormals, so it must fall back for those vectors)
    isas = _isas(gn)
    C, G = 16, 4
    shape = (2, 40, C) if channels_last else (2, C, 40)
    x = rng.x(shape, dtype)
    tiny = 2.0 ** -130 if dtype == BF16 else 2.0 ** -20  # y in the dtype's denormal range
    w = np.array([tiny, -tiny, 1.0, 3e38 if dtype == BF16 else 6e4] * 4, np.float32)  # float16: overflows
    b = np.zeros(C, np.float32)
    b[2::4] = -0.0
    xn = x.copy()
    (xn[1, :, 0:4] if channels_last else xn[1, 0:4, :])[...] = np.nan  # a whole group of sample 1
    results = {}
    for isa in isas:
        gn.set_isa(isa)
        y = gn.group_norm(xn, G, w, b, channels_last=channels_last)
        dx = gn.group_norm_backward(xn, x, *gn.group_norm(x, G, return_stats=True)[1:], G, w, b,
                                    channels_last=channels_last)[0]
        results[isa] = (y, dx)
    bits = results[isas[0]][0].view(np.uint16)
    exp = bits & 0x7f80 if dtype == BF16 else bits & 0x7c00
    assert np.any((exp == 0) & ((bits & 0x7fff) != 0)), "no denormal output: the test would not check them"
    assert dtype == BF16 or np.any(np.isinf(results[isas[0]][0].astype(np.float32)))
    assert np.any(np.isnan(results[isas[0]][0].astype(np.float32)))
    for isa in isas[1:]:
        for name, a, c in zip(("y", "grad_x"), results[isa], results[isas[0]]):
            assert_bitwise_equal(a, c, f"{name} on {isa} vs {isas[0]}")


@pytest.mark.parametrize("case", BIG, ids=_case_id)
def test_isa_and_threads_independence_big(gn, rng, case):
    isas = _isas(gn)
    shape, G, cl = case
    x = rng.x(shape, np.float32)
    w, b = rng.params(_C(shape, cl))
    gn.set_isa(isas[-1])
    base = gn.group_norm(x, G, w, b, channels_last=cl, num_threads=1, activation="silu")
    for isa in isas[:-1]:
        gn.set_isa(isa)
        y = gn.group_norm(x, G, w, b, channels_last=cl, num_threads=3, activation="silu")
        assert_bitwise_equal(y, base, f"y on {isa} with 3 threads vs {isas[-1]} with 1")


def test_set_isa_each(gn):
    for isa in gn.available_isas():
        gn.set_isa(isa)
        assert gn.active_isa() == isa


@pytest.mark.parametrize("cap", ["portable", "avx2"])
def test_env_var_caps_isa(gn, cap, tmp_path):
    if cap not in gn.available_isas():
        pytest.skip(f"host: the CPU has no {cap}")
    code = ("import groupnorm, numpy as np;"
            "print(groupnorm.active_isa());"
            "x = (np.arange(2*8*9, dtype=np.float32).reshape(2, 8, 9) % 7) - 3;"
            "print(groupnorm.group_norm(x, 2).tobytes().hex())")
    env = dict(os.environ, GROUPNORM_ISA=cap)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == cap
    x = (np.arange(2 * 8 * 9, dtype=np.float32).reshape(2, 8, 9) % 7) - 3
    assert lines[1] == gn.group_norm(x, 2).tobytes().hex()


# ----------------------------------------------------------------- schedule
# Forced schedules (pipelined, whole sets, shared steps, non-temporal stores)
# giving the same bits, and checked to have run: tests/test_schedules.py.
# Here: the worker pool or OpenMP regions, and threads descheduled with their
# tiles stolen, must not change a bit either.


@pytest.fixture
def restore_pool(gn):
    before = gn.worker_pool()
    yield
    gn.set_worker_pool(before)


@pytest.mark.parametrize("shape,groups,cl", [
    ((3, 64, 40, 40), 8, False),      # sets over threads (mode A)
    ((1, 32, 256, 256), 4, False),    # one big sample: tiles over threads (mode B)
    ((2, 40, 40, 64), 16, True),
    ((1, 200, 200, 32), 8, True),
])
def test_pool_and_openmp_regions_give_the_same_bits(gn, rng, shape, groups, cl, restore_pool):
    """(tests/test_worker_pool.py checks that the pool path is the one taken with the pool on)"""
    rng = rng.rng
    x = (rng.standard_normal(shape) * 3 + 5).astype(np.float32)
    c = shape[-1] if cl else shape[1]
    w = rng.standard_normal(c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    gy = rng.standard_normal(shape).astype(np.float32)
    res = {}
    for on in (True, False):
        gn.set_worker_pool(on)
        assert gn.worker_pool() is on
        y, m, r = gn.group_norm(x, groups, w, b, channels_last=cl, return_stats=True, num_threads=2)
        gx, gw, gb = gn.group_norm_backward(gy, x, m, r, groups, w, b, channels_last=cl, num_threads=2)
        res[on] = (y, m, r, gx, gw, gb)
    for a, b_ in zip(res[True], res[False]):
        np.testing.assert_array_equal(a, b_)
    one = gn.group_norm(x, groups, w, b, channels_last=cl, num_threads=1)
    np.testing.assert_array_equal(one, res[True][0])


# shapes for each schedule: many sets (mode A), one big sample (mode B, channels-last),
# few big groups (mode B, channels-first)
SCHED_SHAPES = [(8, 32, (24, 24), 8), (1, 64, (96, 96), 4), (1, 8, (256, 288), 2)]


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("N, C, S, G", SCHED_SHAPES, ids=["many_sets", "one_sample", "big_groups"])
def test_oversubscribed_threads_steal_work_without_changing_bits(gn, rng, channels_last, N, C, S, G):
    # 7 threads on a machine with fewer cores: threads are descheduled at random
    # points and the others take their unclaimed tiles; results must not move
    shape = make_shape(N, C, S, channels_last)
    x = rng.x(shape, F32, loc=3.0)
    gy = rng.x(shape, F32)
    w, b = rng.params(C, F32)
    y1, m1, r1 = gn.group_norm(x, G, w, b, channels_last=channels_last, activation="silu", return_stats=True,
                               num_threads=1)
    g1 = gn.group_norm_backward(gy, x, m1, r1, G, w, b, channels_last=channels_last, activation="silu",
                                num_threads=1)
    assert_close(y1, ref_forward(x, G, w, b, channels_last=channels_last, activation="silu")[0], 1e-4, 1e-4)
    for _ in range(5):
        y = gn.group_norm(x, G, w, b, channels_last=channels_last, activation="silu", num_threads=7,
                          out=poison(shape, F32))
        assert_bitwise_equal(y, y1, "forward, 7 threads vs 1")
        g = gn.group_norm_backward(gy, x, m1, r1, G, w, b, channels_last=channels_last, activation="silu",
                                   num_threads=7, out=poison(shape, F32))
        for a, b_, name in zip(g, g1, ("grad_x", "grad_weight", "grad_bias")):
            assert_bitwise_equal(a, b_, f"{name}, 7 threads vs 1")
