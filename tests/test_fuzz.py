"""Property-based fuzzing of the Python API (hypothesis).

Valid calls: random shapes (N 0-3, 0-3 spatial dims, sizes incl. 0 and 1),
non-contiguous views, dtypes, layouts, groups, eps, activation, skip /
skip_bias / sum_out, weight/bias dtypes, out=, return_stats, thread counts;
forward and backward against the independent float64 NumPy reference in
conftest, within the dtype's rounding. Every output is poisoned first.

Bad calls: one argument of a valid call made wrong; the call must raise
ValueError or TypeError with a short message (never pybind11's conversion
text), and leave every output (out=, sum_out=) and every input untouched.

Examples per test: GROUPNORM_FUZZ_EXAMPLES (default 150 each, about 450 in
all for CI). Locally, e.g. 20,000:
    GROUPNORM_FUZZ_EXAMPLES=7000 python -m pytest -q tests/test_fuzz.py
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ALL_DTYPES, BF16, F16, F32, F64, dtype_id, ref_backward, ref_forward
import groupnorm as gn

EXAMPLES = int(os.environ.get("GROUPNORM_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

# machine epsilon of each dtype (the unit of the tolerances below)
EPS = {F64: 2.0**-52, F32: 2.0**-23, F16: 2.0**-10, BF16: 2.0**-7}


def acc_eps(dtype):
    """Rounding unit of the arithmetic: float64 for float64 data, float32 otherwise."""
    return EPS[F64] if dtype == F64 else EPS[F32]


# Units of acc_eps the statistics may be off by. One-pass sums shifted by a tile's
# first element lose bits when that element lies a few sigma from the mean (the
# core falls back to an exact two-pass only beyond a threshold): channels-last
# float32 data of shape (1, 7, 7, 7, 2), mean 10, std 1 gives rstd 83 units off
# where channels-first gives 0.2 (the README's standard: ~1e-5 of float64).
STAT_UNITS = 128


# ----------------------------------------------------------------- generating a call


@st.composite
def problems(draw, with_skip=True):
    dtype = draw(st.sampled_from(ALL_DTYPES))
    n = draw(st.sampled_from([0, 1, 1, 2, 2, 3]))
    groups = draw(st.sampled_from([1, 1, 2, 3, 4]))
    cg = draw(st.sampled_from([1, 1, 2, 3, 5]))
    c = groups * cg
    nsp = draw(st.integers(0, 3))
    spatial = tuple(draw(st.lists(st.sampled_from([0, 1, 1, 2, 3, 4, 7]), min_size=nsp, max_size=nsp)))
    # mostly non-empty spatial dims: zeros would make most examples empty
    if draw(st.booleans()):
        spatial = tuple(max(d, 1) for d in spatial)
    channels_last = draw(st.booleans())
    shape = (n,) + spatial + (c,) if channels_last else (n, c) + spatial
    p = {
        "dtype": dtype, "shape": shape, "groups": groups, "channels": c, "channels_last": channels_last,
        "eps": draw(st.sampled_from([1e-5, 1e-5, 1e-3, 0.5, 1e-12, 2.0])),
        "activation": draw(st.sampled_from([None, "silu"])),
        "view": draw(st.sampled_from(["contiguous", "contiguous", "strided", "reversed", "transposed"])),
        "weight": draw(st.sampled_from([None, "x", F32, F64, F16])),
        "bias": draw(st.sampled_from([None, "x", F32, F64, BF16])),
        "skip": with_skip and draw(st.booleans()),
        "skip_bias": draw(st.sampled_from([None, "x", F32])),
        "sum_out": draw(st.booleans()),
        "out": draw(st.booleans()),
        "return_stats": draw(st.booleans()),
        "num_threads": draw(st.sampled_from([None, 1, 2, 3])),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "offset": draw(st.sampled_from([0.0, 1.0, -3.0, 10.0])),
        "scale": draw(st.sampled_from([1.0, 0.01, 100.0])),
    }
    return p


def _pdtype(spec, x_dtype):
    return None if spec is None else (x_dtype if spec == "x" else np.dtype(spec))


def view_of(a, how, rng):
    """An array equal to `a` laid out differently in memory (a view, not a copy)."""
    if how == "contiguous" or a.ndim == 0:
        return a
    if how == "strided":  # every other element of a twice-as-large buffer along the last axis
        big = np.empty(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        big[..., 1::2] = np.asarray(rng.standard_normal(big[..., 1::2].shape)).astype(a.dtype)
        v = big[..., ::2]
    elif how == "reversed":  # negative strides
        r = np.ascontiguousarray(a[::-1, ...][..., ::-1])
        v = r[::-1, ...][..., ::-1]
    else:  # transposed storage
        t = np.ascontiguousarray(a.T)
        v = t.T
    assert np.array_equal(v, a, equal_nan=True)
    return v


def make_call(p):
    """Arrays and keyword arguments of a valid call, and the inputs' saved copies."""
    rng = np.random.default_rng(p["seed"])
    dt, shape, c = p["dtype"], p["shape"], p["channels"]
    x = (rng.standard_normal(shape) * p["scale"] + p["offset"] * p["scale"]).astype(dt)
    kw = {"eps": p["eps"], "channels_last": p["channels_last"], "activation": p["activation"],
          "return_stats": p["return_stats"]}
    if p["num_threads"] is not None:
        kw["num_threads"] = p["num_threads"]
    wdt, bdt = _pdtype(p["weight"], dt), _pdtype(p["bias"], dt)
    w = None if wdt is None else (rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c)).astype(wdt)
    b = None if bdt is None else rng.normal(0, 0.5, c).astype(bdt)
    skip = sb = None
    if p["skip"]:
        skip = (rng.standard_normal(shape) * p["scale"]).astype(dt)
        sbdt = _pdtype(p["skip_bias"], dt)
        if sbdt is not None:
            sb = rng.normal(0, p["scale"], c).astype(sbdt)
            kw["skip_bias"] = sb
        kw["skip"] = view_of(skip, p["view"], rng)
        if p["sum_out"]:
            kw["sum_out"] = np.full(shape, np.nan, dt)
    if p["out"]:
        kw["out"] = np.full(shape, np.nan, dt)
    xv = view_of(x, p["view"], rng)
    # per-channel parameters as views too (strided or reversed storage)
    if p["view"] in ("strided", "reversed"):
        w = None if w is None else view_of(w, p["view"], rng)
        b = None if b is None else view_of(b, p["view"], rng)
        if sb is not None:
            kw["skip_bias"] = view_of(sb, p["view"], rng)
    return xv, w, b, skip, sb, kw


def materialize(x, skip, sb, channels_last):
    """The documented residual sum: x + skip (+ skip_bias) in float32 (float64 for
    float64 data), rounded to x's dtype; skip_bias rounded to the parameter dtype first."""
    if skip is None:
        return x
    acc = F64 if x.dtype == F64 else F32
    s = x.astype(acc) + skip.astype(acc)
    if sb is not None:
        shape = (1,) * (x.ndim - 1) + (-1,) if channels_last else (1, -1) + (1,) * (x.ndim - 2)
        s = s + sb.astype(acc).reshape(shape)
    return s.astype(x.dtype)


def _bc(p, x, channels_last):
    shape = (1,) * (x.ndim - 1) + (-1,) if channels_last else (1, -1) + (1,) * (x.ndim - 2)
    return np.asarray(p, np.float64).reshape(shape)


def _stats_bc(a, x, groups, channels_last):
    """(N, G) -> broadcastable to x (per channel of each group)."""
    n, c = a.shape[0], x.shape[-1] if channels_last else x.shape[1]
    per_c = np.repeat(a, c // groups, axis=1)
    return per_c.reshape((n,) + (1,) * (x.ndim - 2) + (c,)) if channels_last else \
        per_c.reshape((n, c) + (1,) * (x.ndim - 2))


def check_forward(p, x, w, b, skip, sb, kw, res):
    dt, groups, cl = p["dtype"], p["groups"], p["channels_last"]
    y, mean, rstd = res if p["return_stats"] else (res, None, None)
    assert y.shape == x.shape and y.dtype == dt
    if "out" in kw:
        assert y is kw["out"]
    s = materialize(np.ascontiguousarray(x), skip, sb, cl)
    if "sum_out" in kw:
        so = kw["sum_out"]
        # the sum is exact in the accumulation type up to one rounding of each addition
        mag = np.abs(x.astype(np.float64)) + np.abs(skip.astype(np.float64))
        if sb is not None:
            mag = mag + np.abs(_bc(sb, x, cl))
        tol = 2 * EPS[dt] * mag + 2 * acc_eps(dt) * mag
        assert np.all(np.abs(so.astype(np.float64) - s.astype(np.float64)) <= tol), "sum_out"
    n, c = x.shape[0], p["channels"]
    size = int(np.prod(x.shape))
    if mean is not None:
        sd = F64 if dt == F64 else F32
        assert mean.shape == (n, groups) and rstd.shape == (n, groups)
        assert mean.dtype == sd and rstd.dtype == sd
    if size == 0:
        if mean is not None and n > 0:  # empty groups: NaN statistics
            assert np.isnan(mean).all() and np.isnan(rstd).all()
        return s
    ry, rmean, rrstd, parts = ref_forward(s, groups, w, b, eps=p["eps"], channels_last=cl,
                                          activation=p["activation"], return_parts=True)
    # magnitude of each output's terms: |w * x_hat| + |b| (+ the same through silu)
    wabs = np.abs(_bc(w, x, cl)) if w is not None else 1.0
    babs = np.abs(_bc(b, x, cl)) if b is not None else 0.0
    # (x - mean) cancels: its rounding is relative to |x| + |mean|, not to |x - mean|; and
    # the mean's own rounding is relative to the group's spread (1 after normalizing)
    xm = 1 + (np.abs(s.astype(np.float64)) + np.abs(_stats_bc(rmean, x, groups, cl))) * _stats_bc(rrstd, x, groups, cl)
    mag = wabs * (np.abs(parts["xhat"]) + xm) + babs + np.abs(ry)
    # the statistics carry the accumulation type's rounding over the group, plus
    # each parameter's rounding to float32 when the kernels take it so
    ae = acc_eps(dt) * STAT_UNITS + (EPS[F32] * 2 if dt != F64 else 0.0)
    tol = ae * (mag + 1e-30) + EPS[dt] * np.abs(ry)
    if dt in (F16, BF16):  # outputs below the normal range round in absolute terms
        tol = tol + (2.0**-24 if dt == F16 else 2.0**-133)
    got = y.astype(np.float64)
    bad = ~(np.abs(got - ry) <= tol)
    assert not bad.any(), (f"y: {bad.sum()} of {y.size} beyond tolerance; got "
                           f"{got[bad][:3].tolist()} expected {ry[bad][:3].tolist()} tol {tol[bad][:3].tolist()}")
    if mean is not None:
        sd_ref = 1.0 / rrstd
        tol_m = STAT_UNITS * acc_eps(dt) * (np.abs(rmean) + sd_ref) + 1e-300
        assert np.all(np.abs(mean - rmean) <= tol_m), f"mean {mean.tolist()} vs {rmean.tolist()}"
        assert np.all(np.abs(rstd - rrstd) <= STAT_UNITS * acc_eps(dt) * rrstd + 1e-300), \
            f"rstd {rstd.tolist()} vs {rrstd.tolist()}"
    return s


@given(problems())
@FUZZ
def test_fuzz_forward(p):
    x, w, b, skip, sb, kw = make_call(p)
    x0 = x.copy()
    res = gn.group_norm(x, p["groups"], w, b, **kw)
    check_forward(p, x, w, b, skip, sb, kw, res)
    assert np.array_equal(x, x0, equal_nan=True), "x was modified"


@given(problems(), st.booleans(), st.booleans())
@FUZZ
def test_fuzz_backward(p, with_out, dy_view):
    p = dict(p, return_stats=True)
    x, w, b, skip, sb, kw = make_call(p)
    dt, groups, cl, act = p["dtype"], p["groups"], p["channels_last"], p["activation"]
    y, mean, rstd = gn.group_norm(x, groups, w, b, **kw)
    s = check_forward(p, x, w, b, skip, sb, kw, (y, mean, rstd))
    xs = kw["sum_out"] if "sum_out" in kw else materialize(np.ascontiguousarray(x), skip, sb, cl)
    rng = np.random.default_rng(p["seed"] + 1)
    dy = rng.standard_normal(x.shape).astype(dt)
    bkw = {"channels_last": cl, "activation": act}
    if p["num_threads"] is not None:
        bkw["num_threads"] = p["num_threads"]
    if with_out:
        bkw["out"] = np.full(x.shape, np.nan, dt)
    dyv = view_of(dy, p["view"], rng) if dy_view else dy
    gx, gw, gb = gn.group_norm_backward(dyv, xs, mean, rstd, groups, w, b, **bkw)
    assert gx.shape == x.shape and gx.dtype == dt
    if with_out:
        assert gx is bkw["out"]
    assert (gw is None) == (w is None) and (gb is None) == (b is None)
    if gw is not None:
        assert gw.dtype == w.dtype and gw.shape == (p["channels"],)
    if gb is not None:
        assert gb.dtype == b.dtype and gb.shape == (p["channels"],)
    if x.size == 0:
        for g in (gw, gb):
            if g is not None:
                assert np.all(g == 0)
        return
    rx, rw, rb = ref_backward(dy, s, groups, w, b, eps=p["eps"], channels_last=cl, activation=act)
    # scale of grad_x: rstd * |w| * (|dy| + mean|dy| + |x_hat| * mean|dy x_hat|) per group
    _, rmean, rrstd = ref_forward(s, groups, eps=p["eps"], channels_last=cl)
    rs = _stats_bc(rrstd, x, groups, cl)
    wabs = np.abs(_bc(w, x, cl)) if w is not None else 1.0
    dyabs = np.abs(dy.astype(np.float64))
    xm = (np.abs(s.astype(np.float64)) + np.abs(_stats_bc(rmean, x, groups, cl))) * rs
    scale = rs * wabs * (dyabs + dyabs.max()) * (1 + xm)
    ae = acc_eps(dt) * 4 * STAT_UNITS + (EPS[F32] * 4 if dt != F64 else 0.0)
    if act == "silu":
        ae *= 4
    tol = ae * scale + EPS[dt] * np.abs(rx)
    if dt in (F16, BF16):
        tol = tol + (2.0**-24 if dt == F16 else 2.0**-133)
    got = gx.astype(np.float64)
    bad = ~(np.abs(got - rx) <= tol)
    assert not bad.any(), (f"grad_x: {bad.sum()} of {gx.size} beyond tolerance; got {got[bad][:3].tolist()} "
                           f"expected {rx[bad][:3].tolist()} tol {tol[bad][:3].tolist()}")
    red = tuple(i for i in range(x.ndim) if i != (x.ndim - 1 if cl else 1))
    xhat = (s.astype(np.float64) - _stats_bc(rmean, x, groups, cl)) * rs
    for g, r, term, what in ((gw, rw, dyabs * (np.abs(xhat) + xm), "grad_weight"), (gb, rb, dyabs, "grad_bias")):
        if g is None:
            continue
        mag = (term * (4.0 if act == "silu" else 1.0)).sum(axis=red)
        tol_p = ae * 4 * mag + EPS[g.dtype] * np.abs(r) + 1e-300
        if g.dtype in (F16, BF16):
            tol_p = tol_p + (2.0**-24 if g.dtype == F16 else 2.0**-133)
        assert np.all(np.abs(g.astype(np.float64) - r) <= tol_p), f"{what}: got {g.tolist()} expected {r.tolist()}"


# ----------------------------------------------------------------- bad arguments

FORWARD_MUTATIONS = [
    "groups_not_divisor", "groups_zero", "groups_negative", "groups_bool", "groups_float", "groups_huge",
    "groups_str", "eps_nan", "eps_inf", "eps_negative", "eps_str", "eps_none", "eps_bool", "cl_str", "cl_none", "cl_int",
    "stats_str", "act_bad", "act_int", "threads_zero", "threads_bool", "threads_float", "threads_negative",
    "x_int", "x_ndim1", "x_complex", "x_list_of_str", "weight_shape", "weight_int", "weight_2d", "bias_shape",
    "bias_bool_dtype", "out_shape", "out_dtype", "out_readonly", "out_noncontig", "out_list", "skip_shape",
    "skip_dtype", "skip_bias_shape", "skip_bias_no_skip", "sum_out_no_skip", "sum_out_shape",
    "sum_out_dtype", "sum_out_readonly", "sum_out_noncontig",
]


def _sentinel(shape, dt):
    return np.full(shape, 7.25, dt)


def mutate(m, p, x, w, b, kw):
    """Apply mutation m to a valid call; returns (x, num_groups, w, b, kw)."""
    g, c, shape, dt = p["groups"], p["channels"], x.shape, p["dtype"]
    other = F64 if dt != F64 else F32
    if m == "groups_not_divisor":
        g = c + 1 if c > 1 else 2
    elif m == "groups_zero":
        g = 0
    elif m == "groups_negative":
        g = -g
    elif m == "groups_bool":
        g = True
    elif m == "groups_float":
        g = float(g)
    elif m == "groups_huge":
        g = 2**63 + g
    elif m == "groups_str":
        g = str(g)
    elif m.startswith("eps_"):
        kw["eps"] = {"eps_nan": float("nan"), "eps_inf": float("inf"), "eps_negative": -kw["eps"],
                     "eps_str": "1e-5", "eps_none": None, "eps_bool": True}[m]
    elif m.startswith("cl_"):
        kw["channels_last"] = {"cl_str": "no", "cl_none": None, "cl_int": 1}[m]
    elif m == "stats_str":
        kw["return_stats"] = "yes"
    elif m == "act_bad":
        kw["activation"] = "relu"
    elif m == "act_int":
        kw["activation"] = 1
    elif m.startswith("threads_"):
        kw["num_threads"] = {"threads_zero": 0, "threads_bool": True, "threads_float": 2.0,
                             "threads_negative": -4}[m]
    elif m == "x_int":
        x = np.ones(shape, np.int32)
    elif m == "x_ndim1":
        x = np.ones((c,), dt)
    elif m == "x_complex":
        x = np.ones(shape, np.complex64)
    elif m == "x_list_of_str":
        x = [["a"] * c] * 2
    elif m == "weight_shape":
        w = np.ones(c + 1, F32)
    elif m == "weight_int":
        w = np.ones(c, np.int64)
    elif m == "weight_2d":
        w = np.ones((1, c), F32)
    elif m == "bias_shape":
        b = np.ones(max(c - 1, 0) if c > 1 else 2, F32)
    elif m == "bias_bool_dtype":
        b = np.ones(c, bool)
    elif m == "out_shape":
        kw["out"] = _sentinel(shape[:-1] + (shape[-1] + 1,), dt)
    elif m == "out_dtype":
        kw["out"] = _sentinel(shape, other)
    elif m == "out_readonly":
        kw["out"] = _sentinel(shape, dt)
        kw["out"].setflags(write=False)
    elif m == "out_noncontig":
        kw["out"] = _sentinel(shape[:-1] + (2 * shape[-1],), dt)[..., ::2]
        if kw["out"].flags.c_contiguous:  # (a last dim of 0 or 1 leaves it contiguous)
            kw["out"] = _sentinel(shape, other)
    elif m == "out_list":
        kw["out"] = [0.0] * 4
    elif m == "skip_shape":
        kw["skip"] = np.ones(shape[:-1] + (shape[-1] + 1,), dt)
    elif m == "skip_dtype":
        kw["skip"] = np.ones(shape, other)
    elif m == "skip_bias_shape":
        kw["skip"] = np.ones(shape, dt)
        kw["skip_bias"] = np.ones(c + 2, F32)
    elif m == "skip_bias_no_skip":
        kw.pop("skip", None)
        kw.pop("sum_out", None)
        kw["skip_bias"] = np.ones(c, F32)
    elif m == "sum_out_no_skip":
        kw.pop("skip", None)
        kw.pop("skip_bias", None)
        kw["sum_out"] = _sentinel(shape, dt)
    elif m.startswith("sum_out_"):
        kw["skip"] = np.ones(shape, dt)
        if m == "sum_out_shape":
            kw["sum_out"] = _sentinel(shape[:-1] + (shape[-1] + 1,), dt)
        elif m == "sum_out_dtype":
            kw["sum_out"] = _sentinel(shape, other)
        elif m == "sum_out_readonly":
            kw["sum_out"] = _sentinel(shape, dt)
            kw["sum_out"].setflags(write=False)
        else:
            kw["sum_out"] = _sentinel(shape[:-1] + (2 * shape[-1],), dt)[..., ::2]
            if kw["sum_out"].flags.c_contiguous:
                kw["sum_out"] = _sentinel(shape, other)
    else:  # pragma: no cover
        raise AssertionError(m)
    return x, g, w, b, kw


def _snapshot(*arrays):
    return [None if not isinstance(a, np.ndarray) else (a, a.copy()) for a in arrays]


def _unchanged(snap):
    for s in snap:
        if s is not None:
            a, a0 = s
            assert np.array_equal(a, a0, equal_nan=True) and a.tobytes() == a0.tobytes(), "an array was written"


def _clean_error(ei):
    msg = str(ei.value)
    assert "incompatible function arguments" not in msg, msg
    assert 0 < len(msg) < 300, msg


@given(problems(), st.sampled_from(FORWARD_MUTATIONS))
@FUZZ
def test_fuzz_bad_forward_arguments(p, m):
    x, w, b, skip, sb, kw = make_call(p)
    # valid outputs are sentinel-filled: a failing call must not write them either
    for k in ("out", "sum_out"):
        if k in kw:
            kw[k] = _sentinel(x.shape, p["dtype"])
    x, g, w, b, kw = mutate(m, p, x, w, b, kw)
    snap = _snapshot(x, w, b, *kw.values())
    with pytest.raises((ValueError, TypeError)) as ei:
        gn.group_norm(x, g, w, b, **kw)
    _clean_error(ei)
    _unchanged(snap)


BACKWARD_MUTATIONS = [
    "groups_not_divisor", "groups_bool", "groups_huge", "mean_shape", "rstd_shape", "mean_int", "dy_shape",
    "dy_dtype", "out_shape", "out_dtype", "out_readonly", "weight_shape", "bias_shape", "cl_str", "act_bad",
    "threads_bool", "threads_zero", "x_int",
]


@given(problems(with_skip=False), st.sampled_from(BACKWARD_MUTATIONS))
@FUZZ
def test_fuzz_bad_backward_arguments(p, m):
    x, w, b, _, _, kw = make_call(dict(p, return_stats=True, out=False))
    dt, g, cl = p["dtype"], p["groups"], p["channels_last"]
    _, mean, rstd = gn.group_norm(x, g, w, b, **kw)
    dy = np.ones(x.shape, dt)
    other = F64 if dt != F64 else F32
    bkw = {"channels_last": cl, "activation": p["activation"], "out": _sentinel(x.shape, dt)}
    n = x.shape[0]
    if m == "groups_not_divisor":
        g = p["channels"] + 1 if p["channels"] > 1 else 2
    elif m == "groups_bool":
        g = True
    elif m == "groups_huge":
        g = 2**64
    elif m == "mean_shape":
        mean = np.zeros((n, g + 1), mean.dtype)
    elif m == "rstd_shape":
        rstd = np.zeros((n + 1, g), rstd.dtype)
    elif m == "mean_int":
        mean = np.zeros((n, g), np.int32)
    elif m == "dy_shape":
        dy = np.ones(x.shape[:-1] + (x.shape[-1] + 1,), dt)
    elif m == "dy_dtype":
        dy = np.ones(x.shape, other)
    elif m == "out_shape":
        bkw["out"] = _sentinel(x.shape[:-1] + (x.shape[-1] + 1,), dt)
    elif m == "out_dtype":
        bkw["out"] = _sentinel(x.shape, other)
    elif m == "out_readonly":
        bkw["out"].setflags(write=False)
    elif m == "weight_shape":
        w = np.ones(p["channels"] + 1, F32)
    elif m == "bias_shape":
        b = np.ones((1, p["channels"]), F32)
    elif m == "cl_str":
        bkw["channels_last"] = "yes"
    elif m == "act_bad":
        bkw["activation"] = "gelu"
    elif m == "threads_bool":
        bkw["num_threads"] = False
    elif m == "threads_zero":
        bkw["num_threads"] = 0
    elif m == "x_int":
        x = np.ones(x.shape, np.int16)
    snap = _snapshot(dy, x, mean, rstd, w, b, bkw["out"])
    with pytest.raises((ValueError, TypeError)) as ei:
        gn.group_norm_backward(dy, x, mean, rstd, g, w, b, **bkw)
    _clean_error(ei)
    _unchanged(snap)


def test_fuzz_profile_is_set():
    """The CI profile really runs examples (a misspelt variable must not make it 0)."""
    assert EXAMPLES >= 1
    assert dtype_id(F16) == "f16"
