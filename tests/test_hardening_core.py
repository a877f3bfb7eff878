"""Hostile-caller regressions of the C++ core, through the Python API: thread
requests far beyond the machine, in-place residual adds on every kernel, outputs
partly overlapping inputs, empty batches of absurd width, and data at the edges
of each dtype's range."""
import time

import numpy as np
import pytest

from conftest import ref_forward

F32, F64 = np.float32, np.float64


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


# ----------------------------------------------------------------- 1. threads
@pytest.mark.parametrize("n", [30000, 40000, 65536, 2**31 - 1])
def test_huge_num_threads_is_capped(gn, rng, n):
    x = rng.normal((65536, 32), F32)
    y1 = gn.group_norm(x, 8, num_threads=1)
    t0 = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="cap of"):
        y = gn.group_norm(x, 8, num_threads=n)
    elapsed = time.perf_counter() - t0
    assert np.array_equal(_bits(y), _bits(y1))
    assert elapsed < 2.0, f"num_threads={n} took {elapsed:.2f} s"
    with pytest.warns(RuntimeWarning, match="cap of"):
        gx, _, _ = gn.group_norm_backward(x, x, *gn.group_norm(x, 8, return_stats=True)[1:], 8, num_threads=n)
    gx1, _, _ = gn.group_norm_backward(x, x, *gn.group_norm(x, 8, return_stats=True)[1:], 8, num_threads=1)
    assert np.array_equal(_bits(gx), _bits(gx1))


def test_set_num_threads_is_capped_and_restorable(gn, rng):
    from groupnorm import _core
    default = gn.get_num_threads()
    cap = _core.max_threads()
    assert 4 <= cap <= 65536 and 1 <= default <= cap
    x = rng.normal((64, 32, 5), F32)
    y1 = gn.group_norm(x, 8, num_threads=1)
    try:
        _core.set_num_threads(65536)
        assert gn.get_num_threads() == cap
        assert np.array_equal(_bits(gn.group_norm(x, 8)), _bits(y1))
    finally:
        _core.set_num_threads(0)
    assert gn.get_num_threads() == default


# ----------------------------------------------------------------- 2. sum_out aliasing x or skip
LAYOUTS = [((6, 32), False), ((6, 32), True), ((3, 16, 7, 5), False), ((3, 7, 5, 16), True),
           ((2, 9, 2048), True), ((2, 16, 20000), False)]


@pytest.mark.parametrize("shape,cl", LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [F32, F64, np.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("alias", ["sum_out=x", "sum_out=skip", "y=x,sum_out=skip", "y=skip,sum_out=x"])
def test_sum_out_aliasing_inputs(gn, rng, shape, cl, dtype, alias):
    C = shape[-1] if cl else shape[1]
    x = rng.normal(shape, dtype)
    skip = rng.normal(shape, dtype)
    w, b = rng.params(C, F32)
    sb = rng.normal((C,), F32, scale=0.3)
    y0 = np.full(shape, np.nan, dtype)
    s0 = np.full(shape, np.nan, dtype)
    gn.group_norm(x, 4, w, b, skip=skip, skip_bias=sb, sum_out=s0, out=y0, channels_last=cl)
    ref, _, _ = ref_forward(s0, 4, w, b, channels_last=cl)
    assert np.allclose(y0.astype(F64), ref, rtol=0, atol=5e-3 if dtype == np.float16 else 1e-4)
    xs, ks = x.copy(), skip.copy()
    if alias == "sum_out=x":
        y = gn.group_norm(xs, 4, w, b, skip=ks, skip_bias=sb, sum_out=xs, channels_last=cl)
        s = xs
    elif alias == "sum_out=skip":
        y = gn.group_norm(xs, 4, w, b, skip=ks, skip_bias=sb, sum_out=ks, channels_last=cl)
        s = ks
    elif alias == "y=x,sum_out=skip":
        y = gn.group_norm(xs, 4, w, b, skip=ks, skip_bias=sb, sum_out=ks, out=xs, channels_last=cl)
        s = ks
        assert y is xs or np.shares_memory(y, xs)
    else:
        y = gn.group_norm(xs, 4, w, b, skip=ks, skip_bias=sb, sum_out=xs, out=ks, channels_last=cl)
        s = xs
    assert np.array_equal(_bits(s), _bits(s0)), "sum_out"
    assert np.array_equal(_bits(y), _bits(y0)), "y"


def test_issue_reproducer_sum_out_is_x_channels_last(gn, rng):
    x = rng.normal((4, 8, 8, 32), F32)
    skip = rng.normal((4, 8, 8, 32), F32)
    want = gn.group_norm(x + skip, 4, channels_last=True)
    xs = x.copy()
    y = gn.group_norm(xs, 4, skip=skip, sum_out=xs, channels_last=True)
    assert np.array_equal(xs, x + skip)  # the in-place residual sum
    assert np.allclose(y, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_grad_x_in_place_of_grad_y(gn, rng, dtype):
    x = rng.normal((3, 12, 50), dtype)
    dy = rng.normal((3, 12, 50), dtype)
    w, b = rng.params(12, dtype)
    _, m, r = gn.group_norm(x, 3, w, b, return_stats=True)
    gx0, gw0, gb0 = gn.group_norm_backward(dy, x, m, r, 3, w, b)
    g = dy.copy()
    gx, gw, gb = gn.group_norm_backward(g, x, m, r, 3, w, b, out=g)
    assert np.array_equal(_bits(g), _bits(gx0)) and np.array_equal(gw, gw0) and np.array_equal(gb, gb0)


# ----------------------------------------------------------------- 3. partial overlap
@pytest.mark.parametrize("channels_last", [False, True])
def test_out_partly_overlapping_x_is_rejected(gn, rng, channels_last):
    buf = rng.normal((2 * 4 * 8 * 6 + 8,), F32)
    before = buf.copy()
    x = buf[:2 * 4 * 8 * 6].reshape(2, 4, 8, 6)
    out = buf[8:].reshape(2, 4, 8, 6)
    with pytest.raises(ValueError, match="overlap"):
        gn.group_norm(x, 2, out=out, channels_last=channels_last)
    assert np.array_equal(_bits(buf), _bits(before)), "nothing may be written"


def test_sum_out_partly_overlapping_skip_is_rejected(gn, rng):
    buf = rng.normal((2 * 4 * 10 + 4,), F32)
    before = buf.copy()
    x = rng.normal((2, 4, 10), F32)
    skip = buf[:80].reshape(2, 4, 10)
    sum_out = buf[4:].reshape(2, 4, 10)
    with pytest.raises(ValueError, match="sum_out.*skip|skip.*sum_out"):
        gn.group_norm(x, 2, skip=skip, sum_out=sum_out)
    assert np.array_equal(_bits(buf), _bits(before))


def test_backward_out_partly_overlapping_grad_y_is_rejected(gn, rng):
    buf = rng.normal((2 * 4 * 10 + 1,), F32)
    x = rng.normal((2, 4, 10), F32)
    _, m, r = gn.group_norm(x, 2, return_stats=True)
    before = buf.copy()
    dy = buf[:80].reshape(2, 4, 10)
    out = buf[1:].reshape(2, 4, 10)
    with pytest.raises(ValueError, match="grad_x.*grad_y"):
        gn.group_norm_backward(dy, x, m, r, 2, out=out)
    assert np.array_equal(_bits(buf), _bits(before))


def test_y_equal_to_sum_out_is_rejected(gn, rng):
    x = rng.normal((2, 4, 10), F32)
    skip = rng.normal((2, 4, 10), F32)
    o = np.full_like(x, np.nan)
    with pytest.raises(ValueError, match="overlap"):
        gn.group_norm(x, 2, skip=skip, sum_out=o, out=o)
    assert np.isnan(o).all()


# ----------------------------------------------------------------- 4. empty batches
def test_backward_empty_batch_huge_channels_does_not_hang(gn):
    x = np.zeros((0, 2**40), F32)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="num_channels"):
        gn.group_norm_backward(x, x, np.zeros((0, 1), F32), np.zeros((0, 1), F32), 1)
    assert time.perf_counter() - t0 < 1.0


def test_empty_batch_still_checks_sizes(gn):
    x = np.zeros((0, 2**31), F32)
    with pytest.raises(ValueError, match="num_channels"):
        gn.group_norm(x, 1)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_empty_batch_backward_gives_zero_parameter_gradients(gn, rng, dtype):
    x = np.zeros((0, 6, 4), dtype)
    w, b = rng.params(6, dtype)
    gx, gw, gb = gn.group_norm_backward(x, x, np.zeros((0, 3), dtype), np.zeros((0, 3), dtype), 3, w, b)
    assert gx.shape == (0, 6, 4) and np.array_equal(gw, np.zeros(6)) and np.array_equal(gb, np.zeros(6))


# ----------------------------------------------------------------- 5. range limits
from conftest import BF16  # noqa: E402

F16 = np.float16
# float32 data: above ~1.8e19 the squares overflow float; near 3.4e38 x - mean can too
RANGE_SHAPES = [((2, 8, 100), False), ((2, 8, 100), True), ((3, 16), False), ((1, 4, 40000), False),
                ((1, 40000, 4), True), ((2, 6, 5, 8), True)]


def _scaled_ref(x, G, channels_last, weight=None, bias=None):
    """float64 reference of data at any scale: exact power-of-two rescaling first (eps is negligible)."""
    x64 = np.asarray(x).astype(F64)
    amax = np.max(np.abs(x64))
    k = np.ldexp(1.0, -int(np.frexp(amax)[1])) if amax > 0 else 1.0
    y, mean, rstd = ref_forward(x64 * k, G, weight, bias, eps=0.0, channels_last=channels_last)
    return y, mean / k, rstd * k


@pytest.mark.parametrize("shape,cl", RANGE_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype,scale", [(F32, 2e19), (F32, 1e30), (F32, 1.6e38), (BF16, 1e30), (BF16, 1.6e38),
                                         (F64, 1e200), (F64, 8e307)], ids=lambda v: str(v))
def test_data_near_the_dtype_max_normalizes(gn, rng, shape, cl, dtype, scale):
    x = (rng.rng.uniform(-1.0, 1.0, size=shape) * scale).astype(dtype)
    x.flat[0] = scale  # at least one value at the extreme (sign varies below)
    C = shape[-1] if cl else shape[1]
    w, b = rng.params(C, F32 if dtype != F64 else F64)
    y, mean, rstd = gn.group_norm(x, 4, w, b, channels_last=cl, return_stats=True)
    ref, mref, rref = _scaled_ref(x, 4, cl, w, b)
    tol = {F32: 1e-5, BF16: 2e-2, F64: 1e-12}[dtype]
    assert np.isfinite(y.astype(F64)).all()
    assert np.abs(y.astype(F64) - ref).max() <= tol * max(1.0, np.abs(ref).max())
    assert np.allclose(mean, mref, rtol=tol, atol=0)
    assert np.allclose(rstd.astype(F64), rref, rtol=tol, atol=0)


def test_float32_group_spanning_the_whole_range(gn):
    """x - mean exceeds float32's max here: the apply must not overflow."""
    x = np.array([[3e38, -3e38, 2e38, 1e38]], F32)
    y = gn.group_norm(x, 1)
    ref, _, _ = _scaled_ref(x, 1, False)
    assert np.allclose(y, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [F32, F64, F16, BF16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("eps", [1e-5, 1e-40, 1e-80, 1e-300, 5e-324])
@pytest.mark.parametrize("channels_last", [False, True])
def test_constant_group_is_exactly_the_bias_for_any_positive_eps(gn, rng, dtype, eps, channels_last):
    shape = (2, 5, 8, 12) if channels_last else (2, 8, 5, 12)
    x = rng.normal(shape, dtype)
    C = 12 if channels_last else 8
    sl = (slice(None), Ellipsis, slice(0, 3)) if channels_last else (slice(None), slice(0, 2))
    x[sl] = 3.25  # group 0 of both samples is constant (G = 4: channels 0..1 / 0..2)
    G = 4
    w, b = rng.params(C, F32)
    y, mean, rstd = gn.group_norm(x, G, w, b, eps=eps, channels_last=channels_last, return_stats=True)
    cg = C // G
    yc = np.moveaxis(y, -1, 1) if channels_last else y
    want = np.broadcast_to(b[:cg].astype(dtype).reshape((1, cg) + (1,) * (yc.ndim - 2)), yc[:, :cg].shape)
    assert np.array_equal(yc[:, :cg].astype(F64), want.astype(F64)), "constant group: y must be the bias"
    assert np.array_equal(mean[:, 0], np.full(2, 3.25))
    assert (rstd[:, 0] > 0).all()
    # the other groups are ordinary
    ref, _, _ = ref_forward(x, G, w, b, eps=eps, channels_last=channels_last)
    refc = np.moveaxis(ref, -1, 1) if channels_last else ref
    tol = {F32: 1e-4, F64: 1e-10, F16: 1e-2, BF16: 5e-2}[dtype]
    assert np.abs(yc[:, cg:].astype(F64) - refc[:, cg:]).max() < tol * 10


@pytest.mark.parametrize("dtype", [F32, F64, F16, BF16], ids=lambda d: np.dtype(d).name)
def test_constant_group_with_eps_zero_is_nan_and_isolated(gn, rng, dtype):
    x = rng.normal((2, 8, 7), dtype)
    x[:, 0:2] = -1.5
    y, mean, rstd = gn.group_norm(x, 4, eps=0.0, return_stats=True)
    assert np.isnan(y[:, 0:2].astype(F64)).all()
    assert np.isinf(rstd[:, 0]).all() and np.array_equal(mean[:, 0], [-1.5, -1.5])
    assert np.isfinite(y[:, 2:].astype(F64)).all()


@pytest.mark.parametrize("dtype,scale", [(F32, 1e-41), (F32, 1e-30), (F32, 1e-20), (F64, 1e-310), (F64, 1e-160),
                                         (BF16, 1e-40), (F16, 1e-7)], ids=lambda v: str(v))
@pytest.mark.parametrize("eps", [1e-5, 1e-60, 1e-90, 1e-320, 0.0])
@pytest.mark.parametrize("channels_last", [False, True])
def test_denormal_scale_data_is_right_or_nan(gn, rng, dtype, scale, eps, channels_last):
    shape = (2, 5, 40, 8) if channels_last else (2, 8, 5, 40)
    x = (rng.rng.normal(0, 1, size=shape) * scale).astype(dtype)
    C = 8
    y = gn.group_norm(x, 4, eps=eps, channels_last=channels_last).astype(F64)
    xd = x.astype(F64)
    xc = np.moveaxis(xd, -1, 1) if channels_last else xd
    g = xc.reshape(2, 4, -1)
    # exact reference in scaled units: var + eps = (var_k + eps k^2) / k^2
    e = int(np.frexp(np.abs(g).max())[1])
    gk = np.ldexp(g, -e)
    m = gk.mean(-1, keepdims=True)
    with np.errstate(over="ignore"):
        ref = (gk - m) / np.sqrt(((gk - m) ** 2).mean(-1, keepdims=True) + np.ldexp(eps, -2 * e))
    ref = ref.reshape(xc.shape)
    if channels_last:
        ref = np.moveaxis(ref, 1, -1)
    tol = {F32: 2e-5, F64: 1e-9, F16: 4e-3, BF16: 3e-2}[dtype]
    ok = np.isnan(y) | (np.abs(y - ref) <= tol * np.maximum(1.0, np.abs(ref)))
    assert ok.all(), f"finite wrong values: {y[~ok][:4]} vs {ref[~ok][:4]}"
    if eps >= 1e-5 or (dtype == F32 and scale >= 1e-30) or (dtype == F64 and scale >= 1e-160):
        assert not np.isnan(y).any(), "this case is representable and must be right"


@pytest.mark.parametrize("channels_last", [False, True])
def test_range_limit_results_are_bitwise_stable(gn, rng, channels_last):
    shape = (3, 20, 16) if not channels_last else (3, 16, 20)
    x = (rng.rng.uniform(-1, 1, size=shape) * 1e35).astype(F32)
    x[1] = (rng.rng.uniform(-1, 1, size=shape[1:]) * 1e-41).astype(F32)
    x[2, ...] = 7.0
    outs = []
    for isa in gn.available_isas():
        gn.set_isa(isa)
        for t in (1, 2, 3):
            outs.append(gn.group_norm(x, 4, eps=1e-70, channels_last=channels_last, num_threads=t))
            outs.append(gn.group_norm(x[1:2], 4, eps=1e-70, channels_last=channels_last, num_threads=t))
    gn.set_isa(gn.available_isas()[0])
    for o in outs[2::2]:
        assert np.array_equal(_bits(o), _bits(outs[0]))
    for o in outs[3::2]:
        assert np.array_equal(_bits(o), _bits(outs[1]))
    assert np.array_equal(_bits(outs[1]), _bits(outs[0][1:2]))
