"""Bitwise determinism: batch size, thread count, instruction set, schedule.

These are the only tests that compare groupnorm with itself; each also checks one
result against the reference so that a consistently wrong answer cannot pass.
"""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from conftest import (ALL_DTYPES, BF16, F16, F32, F64, assert_bitwise_equal, assert_close, dtype_id, make_shape,
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


# ----------------------------------------------------------------- pipelined walk
# The channels-first forward applies a worker's previous set in one walk with
# the moments of its next set (the backward: dx of the previous set with the
# sums of the next). GROUPNORM_PIPELINE=0 runs the phases one after the other:
# both must give the same bits (and the right answer).
_PIPE_CODE = r"""
import pickle, sys, ml_dtypes, numpy as np, groupnorm as gn
with open(sys.argv[1], "rb") as f:
    data = pickle.load(f)
out = {"schedules": set()}
for key in sorted(k for k in data if k.startswith("x_")):
    x = data[key]; i = key[2:]
    G = data["G_" + i]; act = data["act_" + i] or None
    skip = data.get("skip_" + i)
    for t in (1, 2):
        y, m, r = gn.group_norm(x, G, data["w_" + i], data["b_" + i], skip=skip, activation=act,
                                return_stats=True, num_threads=t)
        out["schedules"].add(gn._core.last_schedule()[0])
        out[f"y{t}_{i}"], out[f"m{t}_{i}"], out[f"r{t}_{i}"] = y, m, r
        m, r = gn.group_norm(x, G, return_stats=True)[1:]
        out[f"gx{t}_{i}"], out[f"gw{t}_{i}"], out[f"gb{t}_{i}"] = gn.group_norm_backward(
            data["gy_" + i], x, m, r, G, data["w_" + i], data["b_" + i], activation=act, num_threads=t)
        out["schedules"].add(gn._core.last_schedule()[0])
with open(sys.argv[2], "wb") as f:
    pickle.dump(out, f)
"""


@pytest.mark.parametrize("dtype", [F32, F64, F16, BF16], ids=dtype_id)
def test_pipelined_walk_matches_phases(gn, rng, dtype, tmp_path):
    # (shape, G, activation, skip): one tile per group, several, pieces of a
    # channel, several groups per set, and a tail that is not a whole vector
    cases = [((3, 32, 40, 40), 8, None, False), ((2, 16, 4100), 4, "silu", False), ((5, 12, 33, 17), 3, "silu", True),
             ((4, 64, 9, 9), 32, None, True), ((2, 8, 70001), 8, None, False)]
    arrays = {}
    for i, (shape, G, act, skip) in enumerate(cases):
        arrays[f"x_{i}"], arrays[f"G_{i}"], arrays[f"act_{i}"] = rng.x(shape, dtype, loc=3.0), G, act or ""
        arrays[f"w_{i}"], arrays[f"b_{i}"] = rng.params(shape[1], F64 if dtype == F64 else np.float32)
        arrays[f"w_{i}"] *= 3  # spread z over the silu's range
        arrays[f"gy_{i}"] = rng.normal(shape, dtype)
        if skip:
            arrays[f"skip_{i}"] = rng.normal(shape, dtype)
    src, dst = tmp_path / "in.pkl", tmp_path / "out.pkl"
    with open(src, "wb") as f:
        pickle.dump(arrays, f)
    env = dict(os.environ, GROUPNORM_PIPELINE="0")
    run = subprocess.run([sys.executable, "-c", _PIPE_CODE, str(src), str(dst)], env=env, capture_output=True,
                         text=True, timeout=300, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr
    with open(dst, "rb") as f:
        phased = pickle.load(f)
    assert "pipelined" not in phased["schedules"], phased["schedules"]  # GROUPNORM_PIPELINE=0 was read
    schedules = set()
    for i, (shape, G, act, skip) in enumerate(cases):
        x, w, b = arrays[f"x_{i}"], arrays[f"w_{i}"], arrays[f"b_{i}"]
        sk = arrays.get(f"skip_{i}")
        for t in (1, 2):
            y, m, r = gn.group_norm(x, G, w, b, skip=sk, activation=act, return_stats=True, num_threads=t)
            schedules.add(gn._core.last_schedule()[0])
            assert_bitwise_equal(y, phased[f"y{t}_{i}"])
            assert_bitwise_equal(m, phased[f"m{t}_{i}"])
            assert_bitwise_equal(r, phased[f"r{t}_{i}"])
            m, r = gn.group_norm(x, G, return_stats=True)[1:]
            grads = gn.group_norm_backward(arrays[f"gy_{i}"], x, m, r, G, w, b, activation=act, num_threads=t)
            schedules.add(gn._core.last_schedule()[0])
            for name, got in zip(("gx", "gw", "gb"), grads):
                assert_bitwise_equal(got, phased[f"{name}{t}_{i}"], f"{name}, case {i}, {t} threads")
        gx_ref, _, _ = ref_backward(arrays[f"gy_{i}"], x, G, w, b, activation=act)
        tol = 1e-8 if dtype == F64 else (2e-4 if dtype == F32 else 6e-2)
        assert_close(grads[0], gx_ref, rtol=tol, atol=tol * max(1.0, float(np.abs(gx_ref).max())))
        ref_x = x if sk is None else (x.astype(np.float64) + sk.astype(np.float64)).astype(dtype)
        _assert_ref(y, ref_x, G, w, b, False, activation=act)
    assert "pipelined" in schedules, schedules  # what the subprocess was compared against


# ----------------------------------------------------------------- schedule
# How a call is scheduled (cache budget: per-thread sets, pipelined or not, or
# shared steps; streaming stores; the worker pool or OpenMP regions; threads
# descheduled and their tiles stolen) must not change a bit. The forced run
# checks that the schedules it forces were taken.
SCHEDULE_CASES = [
    # (shape, groups, channels_last)
    ((2, 32, 40, 33), 8, False),
    ((1, 16, 9000), 4, False),       # long channels: split into pieces
    ((3, 17, 19, 24), 6, True),
    ((1, 50, 40, 32), 4, True),      # many rows, few groups
    ((5, 48), 12, False),            # no spatial dims
]

_SCHEDULE_CODE = r"""
import json, sys
import numpy as np
import groupnorm as gn
import ml_dtypes
cases = json.loads(sys.argv[1])
out = {}
for i, (shape, groups, cl, dtype, act, threads) in enumerate(cases):
    rng = np.random.default_rng(1000 + i)
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bf16" else np.dtype({"f16": "float16", "f32": "float32", "f64": "float64"}[dtype])
    c = shape[-1] if cl else shape[1]
    x = (rng.standard_normal(shape) * 3 + 5).astype(dt)
    w = rng.standard_normal(c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    gy = rng.standard_normal(shape).astype(dt)
    y, m, r = gn.group_norm(x, groups, w, b, channels_last=cl, activation=act, return_stats=True, num_threads=threads)
    fwd = list(gn._core.last_schedule())
    gx, gw, gb = gn.group_norm_backward(gy, x, m, r, groups, w, b, channels_last=cl, activation=act, num_threads=threads)
    bwd = list(gn._core.last_schedule())
    out[str(i)] = [a.view(np.uint8).tobytes().hex() for a in (y, m, r, gx, gw, gb)] + [fwd, bwd]
np.save(sys.argv[2], np.array(json.dumps(out)))
"""


def _schedule_cases():
    cases = []
    for shape, groups, cl in SCHEDULE_CASES:
        for dtype in ALL_DTYPES:
            for act in (None, "silu"):
                cases.append((list(shape), groups, cl, dtype_id(dtype), act, 2))
    return cases


def _run_schedule(env_extra, tmp_path, name):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUPNORM_")}
    env.update(env_extra)
    path = str(tmp_path / f"{name}.npy")
    subprocess.run([sys.executable, "-c", _SCHEDULE_CODE, json.dumps(_schedule_cases()), path], env=env, check=True,
                   cwd=os.path.dirname(__file__))
    return json.loads(str(np.load(path)))


def test_scheduling_does_not_change_results(tmp_path):
    plain = _run_schedule({}, tmp_path, "plain")
    # tiny cache: cooperative steps everywhere; streaming stores for every output
    forced = _run_schedule({"GROUPNORM_CACHE_BYTES": "4096", "GROUPNORM_STREAM_BYTES": "1"}, tmp_path, "forced")
    assert plain.keys() == forced.keys()
    # one result against the reference, so that a consistently wrong answer cannot pass
    i = next(i for i, c in enumerate(_schedule_cases()) if c[3] == dtype_id(F32) and c[4] is None)
    shape, groups, cl = _schedule_cases()[i][:3]
    data = np.random.default_rng(1000 + i)  # as the child draws case i
    x = (data.standard_normal(shape) * 3 + 5).astype(np.float32)
    w = data.standard_normal(shape[-1] if cl else shape[1]).astype(np.float32)
    b = data.standard_normal(shape[-1] if cl else shape[1]).astype(np.float32)
    y = np.frombuffer(bytes.fromhex(plain[str(i)][0]), np.float32).reshape(shape)
    assert_close(y, ref_forward(x, groups, w, b, channels_last=cl)[0], rtol=3e-5, atol=3e-5)
    for k in plain:
        for j, name in enumerate(("y", "mean", "rstd", "grad_x", "grad_weight", "grad_bias")):
            assert plain[k][j] == forced[k][j], f"case {_schedule_cases()[int(k)]}: {name} differs"
    # the forced schedules ran (each call reports the schedule it took, _core.last_schedule()):
    # every call planned for more than one thread took shared steps (a call small enough for one
    # thread has nothing to share), and every output was planned as streaming stores, which no
    # forward of the plain run was (these tensors are far below the L3)
    plain_taken, changed = set(), 0
    for k in plain:
        for p, f, direction in zip(plain[k][6:], forced[k][6:], ("forward", "backward")):
            case = f"case {_schedule_cases()[int(k)]} {direction}"
            plain_taken.add(p[0])
            assert f[1] == 1 or f[0] == "shared_steps", f"{case}: forced run took {f[0]} on {f[1]} threads"
            assert f[2] and (direction == "backward" or not p[2]), \
                f"{case}: streaming stores plain {p[2]}, forced {f[2]}"
            changed += p[0] != f[0]
    assert plain_taken >= {"pipelined", "whole_sets"}, plain_taken
    assert changed >= 10, f"only {changed} calls changed schedule"


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
