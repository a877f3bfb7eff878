"""float16 / bfloat16 (issue 4): accuracy vs a float64 reference on the half inputs, rounding,
overflow safety, torch and ONNX agreement, and the fused skip (residual) input."""
import numpy as np
import pytest

from conftest import (ALL_DTYPES, BF16, F16, F32, F64, HALF_DTYPES, assert_bitwise_equal, assert_close,
                      assert_within_ulps, dtype_id, make_shape, poison, ref_backward, ref_forward,
                      torch_tensor, torch_to_numpy, ulp)

U32 = 2.0 ** -24  # float32 unit roundoff
SPATIALS = [(), (7,), (5, 6), (3, 4, 5)]


def _bc(p, shape, cl):
    """(C,) parameter broadcast against x of `shape` in its layout (float64)."""
    p = np.asarray(p, np.float64)
    return p if cl else p.reshape((-1,) + (1,) * (len(shape) - 2))


def _ref_and_tol(x, G, w, b, cl, activation, eps=1e-5):
    """float64 reference on the half inputs, plus the per-element budget for float32 arithmetic:
    about 16 float32 roundings of the largest intermediate |w|*rstd*(|x|+|mean|) + |b|."""
    ref, mean, rstd, parts = ref_forward(x, G, w, b, eps=eps, channels_last=cl, activation=activation,
                                         return_parts=True)
    x64 = x.astype(np.float64)
    xc = np.moveaxis(x64, -1, 1) if cl else x64
    n, c = xc.shape[:2]
    per_c = lambda a: np.repeat(a, c // G, axis=1).reshape((n, c) + (1,) * (xc.ndim - 2))
    big = per_c(rstd) * (np.abs(xc) + np.abs(per_c(mean)))
    if cl:
        big = np.moveaxis(big, 1, -1)
    wabs = np.abs(_bc(w, x.shape, cl)) if w is not None else 1.0
    babs = np.abs(_bc(b, x.shape, cl)) if b is not None else 0.0
    atol = 16 * U32 * (wabs * big + babs)
    return ref, mean, rstd, atol


def check_half_forward(y, x, G, w, b, cl, activation, eps=1e-5, ulps=4, what="y"):
    ref, _, _, atol = _ref_and_tol(x, G, w, b, cl, activation, eps)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_within_ulps(y, ref, x.dtype, ulps=ulps, atol=atol, what=what)


def _params(rng, C, pdtype):
    if pdtype is None:
        return None, None
    w, b = rng.params(C, np.float32)
    return w.astype(pdtype), b.astype(pdtype)


# ----------------------------------------------------------------- forward accuracy


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("spatial", SPATIALS, ids=lambda s: f"sp{len(s)}")
@pytest.mark.parametrize("pdtype", ["f32", "half", None])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_half_forward(gn, rng, dtype, channels_last, spatial, pdtype, activation):
    N, C, G = 3, 16, 4
    x = rng.x(make_shape(N, C, spatial, channels_last), dtype)
    pd = {"f32": F32, "half": dtype, None: None}[pdtype]
    w, b = _params(rng, C, pd)
    y, mean, rstd = gn.group_norm(x, G, w, b, channels_last=channels_last, activation=activation,
                                  return_stats=True)
    check_half_forward(y, x, G, w, b, channels_last, activation)
    assert mean.dtype == F32 and rstd.dtype == F32 and mean.shape == (N, G)
    _, mref, rref = ref_forward(x, G, channels_last=channels_last)
    assert_close(mean, mref, rtol=1e-6, atol=1e-6, what="mean")
    assert_close(rstd, rref, rtol=1e-5, atol=0, what="rstd")


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("shape_G", [((2, 64, 17, 19), 8), ((1, 32, 4100), 1), ((4, 96, 3, 3), 32)], ids=str)
def test_half_forward_larger(gn, rng, dtype, channels_last, shape_G):
    shape, G = shape_G
    if channels_last:
        shape = (shape[0],) + shape[2:] + (shape[1],)
    x = rng.x(shape, dtype, loc=0.5)
    C = shape[-1] if channels_last else shape[1]
    w, b = rng.params(C)
    y = gn.group_norm(x, G, w, b, channels_last=channels_last, activation="silu")
    check_half_forward(y, x, G, w, b, channels_last, "silu")


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
def test_half_out_poisoned_and_in_place(gn, rng, dtype, channels_last):
    x = rng.x(make_shape(2, 8, (9, 7), channels_last), dtype)
    w, b = rng.params(8)
    out = poison(x.shape, dtype)
    y = gn.group_norm(x, 2, w, b, channels_last=channels_last, out=out)
    assert np.shares_memory(y, out) and not np.isnan(out.astype(np.float32)).any()
    check_half_forward(out, x, 2, w, b, channels_last, None)
    x0 = x.copy()
    gn.group_norm(x, 2, w, b, channels_last=channels_last, out=x)
    assert_bitwise_equal(x, out, "in-place result vs out= result")
    check_half_forward(x, x0, 2, w, b, channels_last, None)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
def test_half_strided(gn, rng, dtype):
    big = rng.x((3, 12, 8, 10), dtype)
    x = big[::-1, 2:10, ::2, 1::3]
    w, b = rng.params(8)
    y = gn.group_norm(x, 4, w, b)
    check_half_forward(y, np.ascontiguousarray(x), 4, w, b, False, None)
    xl = big[:, :8].transpose(0, 3, 2, 1)  # channels-last view (3, 10, 8, 8)
    y = gn.group_norm(xl, 4, w, b, channels_last=True)
    check_half_forward(y, np.ascontiguousarray(xl), 4, w, b, True, None)


# ----------------------------------------------------------------- range / overflow


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
def test_mean_300_no_overflow(gn, rng, dtype, channels_last):
    """float16 sums of 4096 values ~300 (and their squares) overflow float16: must accumulate in float32."""
    shape = make_shape(2, 8, (32, 32), channels_last)
    x = (300.0 + rng.rng.normal(0, 1, size=shape)).astype(dtype)
    w, b = rng.params(8)
    y, mean, rstd = gn.group_norm(x, 2, w, b, channels_last=channels_last, return_stats=True)
    assert np.isfinite(y.astype(np.float32)).all(), "overflow: non-finite outputs"
    check_half_forward(y, x, 2, w, b, channels_last, None)
    _, mref, rref = ref_forward(x, 2, channels_last=channels_last)
    assert_close(mean, mref, rtol=1e-6, atol=0, what="mean")
    assert_close(rstd, rref, rtol=1e-4, atol=0, what="rstd")
    # and the backward
    dy = rng.normal(shape, dtype)
    gx, gw, gb = gn.group_norm_backward(dy, x, mean, rstd, 2, w, b, channels_last=channels_last)
    assert np.isfinite(gx.astype(np.float32)).all()
    rx, rw, rb = ref_backward(dy, x, 2, w, b, channels_last=channels_last)
    assert_within_ulps(gx, rx, dtype, ulps=4, atol=2e-5 * np.abs(rx).max(), what="grad_x")
    assert_close(gw, rw, rtol=1e-4, atol=1e-3, what="grad_weight")
    assert_close(gb, rb, rtol=1e-4, atol=1e-3, what="grad_bias")


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_float16_large_values(gn, rng, channels_last):
    """|x| up to ~6e4: x*x overflows float16 (and sum of x overflows) but not float32."""
    shape = make_shape(2, 4, (16, 16), channels_last)
    x = np.clip(rng.rng.normal(0, 2e4, size=shape), -65000, 65000).astype(np.float16)
    y, mean, rstd = gn.group_norm(x, 2, return_stats=True, channels_last=channels_last)
    check_half_forward(y, x, 2, None, None, channels_last, None)
    _, mref, rref = ref_forward(x, 2, channels_last=channels_last)
    assert_close(rstd, rref, rtol=1e-5, atol=0, what="rstd")


def test_float16_tiny_values(gn, rng):
    """Subnormal-range float16 inputs (variance ~1e-10, below float16's range) with eps=0."""
    x = (rng.rng.normal(0, 1, size=(2, 4, 64)) * 1e-5).astype(np.float16)
    y = gn.group_norm(x, 2, eps=0.0)
    check_half_forward(y, x, 2, None, None, False, None, eps=0.0)


def test_float16_output_overflow_rounds_to_inf(gn):
    """An output beyond float16's range becomes +-inf as an IEEE cast would, never garbage or NaN."""
    x = np.array([[-1.0, 1.0, -1.0, 1.0]], np.float16)  # x_hat = -1, 1, -1, 1 (eps = 0)
    w = np.array([1e5, 1e5, 2.0, 65504.0], np.float32)
    y = gn.group_norm(x, 1, w, None, eps=0.0)
    assert y.astype(np.float64).tolist() == [[-np.inf, np.inf, -2.0, 65504.0]]


# ----------------------------------------------------------------- rounding


def _tie_values(dtype):
    """float32 values exactly halfway between two `dtype` values, and their RNE result."""
    m = 10 if dtype == F16 else 7
    u = 2.0 ** -m  # ulp of 1
    vals = [
        (1 + u / 2, 1.0),                       # tie, even below
        (1 + u + u / 2, 1 + 2 * u),             # tie, even above
        (-(1 + u / 2), -1.0),
        (-(1 + 3 * u / 2), -(1 + 2 * u)),
        (1 + u / 2 + 2.0 ** -20, 1 + u),        # just above a tie: up
        (1 + u / 2 - 2.0 ** -20, 1.0),          # just below: down
        (2 + u, 2.0),                           # tie at a larger exponent (ulp 2u)
        (2 + 3 * u, 2 + 4 * u),
        (1 - u / 4, 1.0),                       # tie across a binade (ulp below 1 is u/2)
        (0.0, 0.0),
    ]
    if dtype == F16:
        s = 2.0 ** -24  # smallest subnormal
        vals += [(s / 2, 0.0), (3 * s / 2, 2 * s), (5 * s / 2, 2 * s)]
    vals = [(np.float32(a), np.float64(e)) for a, e in vals]
    for a, e in vals:
        assert float(a) == float(np.float64(a))  # exact float32
    return vals


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_output_rounding_is_rne(gn, rng, dtype, channels_last):
    """weight 0 makes y = bias exactly in float32; the cast to x's dtype must round to nearest even."""
    vals = _tie_values(dtype)
    C = len(vals) + (len(vals) % 2)
    b = np.zeros(C, np.float32)
    b[:len(vals)] = [a for a, _ in vals]
    exp = np.zeros(C)
    exp[:len(vals)] = [e for _, e in vals]
    w = np.zeros(C, np.float32)
    x = rng.x(make_shape(2, C, (3, 5), channels_last), dtype)
    y = gn.group_norm(x, 2, w, b, channels_last=channels_last)
    yc = np.moveaxis(y, -1, 1) if channels_last else y
    for c in range(C):
        got = np.unique(yc[:, c].astype(np.float64))
        assert got.tolist() == [exp[c]], f"bias {float(b[c])!r}: got {got}, expected {exp[c]!r} (RNE)"
    # and agree with ml_dtypes / numpy casting
    assert_bitwise_equal(yc[:, :, 0, 0], np.broadcast_to(b.astype(dtype), (2, C)), "vs astype")


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
def test_skip_sum_rounding_is_rne(gn, rng, dtype):
    """sum_out = round(x + skip + skip_bias) with x + skip == 0 exactly and float32 skip_bias a tie."""
    vals = _tie_values(dtype)
    n = len(vals)
    x = rng.x((3, n), dtype)                      # channels-last, C = n
    skip = -x
    skip_bias = np.array([a for a, _ in vals], np.float32)
    sum_out = poison(x.shape, dtype)
    gn.group_norm(x, 1, skip=skip, skip_bias=skip_bias, sum_out=sum_out, channels_last=True)
    for row in sum_out.astype(np.float64):
        assert row.tolist() == [e for _, e in vals], f"sum_out {row.tolist()} != RNE {[e for _, e in vals]}"
    # the same ties formed by two half values, without skip_bias: 1 + u/2 and (1 + u) + u/2
    u = 2.0 ** -(10 if dtype == F16 else 7)
    x2 = np.array([[1.0, 1.0 + u, -1.0, 2.0]], np.float32).astype(dtype)
    s2 = np.array([[u / 2, u / 2, -u / 2, u]], np.float32).astype(dtype)
    out2 = poison(x2.shape, dtype)
    gn.group_norm(x2, 1, skip=s2, sum_out=out2)
    assert out2.astype(np.float64).tolist() == [[1.0, 1.0 + 2 * u, -1.0, 2.0]]


# ----------------------------------------------------------------- backward accuracy


def _abs_sums(dy, x, G, w, b, cl, activation):
    """Per-channel sums of |dz * xhat| and |dz| (to scale the float32 accumulation budget)."""
    _, _, _, parts = ref_forward(x, G, w, b, channels_last=cl, activation=activation, return_parts=True)
    dz = dy.astype(np.float64)
    if activation == "silu":
        z = parts["z"]
        s = 0.5 * (1 + np.tanh(0.5 * z))
        dz = dz * s * (1 + z * (1 - s))
    axes = tuple(range(x.ndim - 1)) if cl else (0,) + tuple(range(2, x.ndim))
    return np.abs(dz * parts["xhat"]).sum(axis=axes), np.abs(dz).sum(axis=axes)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("spatial", SPATIALS, ids=lambda s: f"sp{len(s)}")
@pytest.mark.parametrize("pdtype", ["f32", "half", None])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_half_backward(gn, rng, dtype, channels_last, spatial, pdtype, activation):
    N, C, G = 2, 8, 2
    shape = make_shape(N, C, spatial, channels_last)
    x = rng.x(shape, dtype)
    dy = rng.normal(shape, dtype)
    pd = {"f32": F32, "half": dtype, None: None}[pdtype]
    w, b = _params(rng, C, pd)
    _, mean, rstd = gn.group_norm(x, G, w, b, channels_last=channels_last, return_stats=True)
    gx, gw, gb = gn.group_norm_backward(dy, x, mean, rstd, G, w, b, channels_last=channels_last,
                                        activation=activation)
    rx, rw, rb = ref_backward(dy, x, G, w, b, channels_last=channels_last, activation=activation)
    assert gx.dtype == dtype
    assert_within_ulps(gx, rx, dtype, ulps=4, atol=1e-5 * np.abs(rx).max(), what="grad_x")
    if w is None:
        assert gw is None and gb is None
        return
    assert gw.dtype == pd and gb.dtype == pd
    sw, sb = _abs_sums(dy, x, G, w, b, channels_last, activation)
    if pd == F32:
        assert_close(gw, rw, rtol=0, atol=1e-5 * sw.max() + 1e-7, what="grad_weight")
        assert_close(gb, rb, rtol=0, atol=1e-5 * sb.max() + 1e-7, what="grad_bias")
    else:
        assert_within_ulps(gw, rw, dtype, ulps=4, atol=1e-5 * sw.max(), what="grad_weight")
        assert_within_ulps(gb, rb, dtype, ulps=4, atol=1e-5 * sb.max(), what="grad_bias")


# ----------------------------------------------------------------- torch agreement


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("pdtype", ["f32", "half"])
def test_half_vs_torch(gn, rng, torch, dtype, channels_last, pdtype):
    N, C, G = 2, 16, 4
    x = rng.x(make_shape(N, C, (6, 7), channels_last), dtype)
    pd = F32 if pdtype == "f32" else dtype
    w, b = _params(rng, C, pd)
    y = gn.group_norm(x, G, w, b, channels_last=channels_last)
    xt = torch_tensor(x)
    if channels_last:
        xt = torch.movedim(xt, -1, 1)
    t = torch.nn.functional.group_norm(xt, G, torch_tensor(w), torch_tensor(b), eps=1e-5)
    if channels_last:
        t = torch.movedim(t, 1, -1)
    t = torch_to_numpy(t)
    assert t.dtype == dtype
    # torch rounds its own float32 math once too: allow 2 ulps + a little
    assert_within_ulps(y, t, dtype, ulps=2, atol=1e-4 if dtype == F16 else 1e-3, what="y vs torch")


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_half_silu_vs_torch(gn, rng, torch, dtype, channels_last):
    """silu(group_norm(x)) with torch doing float32 math on the same half inputs, one rounding."""
    N, C, G = 2, 16, 8
    x = rng.x(make_shape(N, C, (5, 9), channels_last), dtype)
    w, b = rng.params(C)
    w *= 3
    y = gn.group_norm(x, G, w, b, channels_last=channels_last, activation="silu")
    xt = torch_tensor(x).float()
    if channels_last:
        xt = torch.movedim(xt, -1, 1)
    t = torch.nn.functional.silu(torch.nn.functional.group_norm(xt, G, torch.from_numpy(w),
                                                                torch.from_numpy(b), eps=1e-5))
    if channels_last:
        t = torch.movedim(t, 1, -1)
    t = t.numpy()
    assert_within_ulps(y, t, dtype, ulps=2, atol=1e-5, what="silu y vs torch float32")


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
def test_half_backward_vs_torch(gn, rng, torch, dtype):
    """Backward vs torch autograd in float64 on the same half inputs."""
    C, G = 8, 4
    x = rng.x((2, C, 6, 5), dtype)
    dy = rng.normal(x.shape, dtype)
    w, b = rng.params(C)
    _, mean, rstd = gn.group_norm(x, G, w, b, return_stats=True)
    gx, gw, gb = gn.group_norm_backward(dy, x, mean, rstd, G, w, b, activation="silu")
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    wt = torch.from_numpy(w.astype(np.float64)).requires_grad_(True)
    bt = torch.from_numpy(b.astype(np.float64)).requires_grad_(True)
    yt = torch.nn.functional.silu(torch.nn.functional.group_norm(xt, G, wt, bt, eps=1e-5))
    (yt * torch.from_numpy(dy.astype(np.float64))).sum().backward()
    assert_within_ulps(gx, xt.grad.numpy(), dtype, ulps=4, atol=1e-5 * np.abs(xt.grad.numpy()).max(),
                       what="grad_x vs torch")
    assert_close(gw, wt.grad.numpy(), rtol=1e-4, atol=1e-4, what="grad_weight vs torch")
    assert_close(gb, bt.grad.numpy(), rtol=1e-4, atol=1e-4, what="grad_bias vs torch")


# ----------------------------------------------------------------- skip / residual


def materialize(x, skip, skip_bias, channels_last):
    """s = x + skip (+ skip_bias[c]), computed in float32 (float64 for float64), left to right,
    rounded to x's dtype."""
    acc = F64 if x.dtype == F64 else F32
    s = x.astype(acc) + skip.astype(acc)
    if skip_bias is not None:
        s = s + _bc(skip_bias, x.shape, channels_last).astype(acc)
    return s.astype(x.dtype)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("skip_bias_dtype", [None, "f32", "x"])
@pytest.mark.parametrize("param_dtype", [None, "f32", "x"], ids=lambda p: f"w{p}")
@pytest.mark.parametrize("with_sum_out", [False, True], ids=["nosum", "sum_out"])
def test_skip_combinations(gn, rng, dtype, channels_last, activation, skip_bias_dtype, param_dtype,
                           with_sum_out):
    """Every dtype x layout x activation x skip_bias dtype x weight dtype x sum_out: the fused sum is
    bitwise the materialized one (float32 sum, float64 for float64, rounded once to x's dtype)."""
    N, C, G = 2, 12, 3
    shape = make_shape(N, C, (5, 7), channels_last)
    x = rng.x(shape, dtype)
    skip = rng.x(shape, dtype, scale=0.7)
    sb = None
    if skip_bias_dtype is not None:
        sb = rng.normal((C,), F32 if skip_bias_dtype == "f32" else dtype)
    w, b = _params(rng, C, {None: None, "f32": F32, "x": dtype}[param_dtype])
    x0, skip0 = x.copy(), skip.copy()
    s = materialize(x, skip, sb, channels_last)
    kw = dict(channels_last=channels_last, activation=activation, return_stats=True)
    sum_out = poison(shape, dtype) if with_sum_out else None
    y, mean, rstd = gn.group_norm(x, G, w, b, skip=skip, skip_bias=sb, sum_out=sum_out, **kw)
    # inputs untouched
    assert_bitwise_equal(x, x0, "x after skip call")
    assert_bitwise_equal(skip, skip0, "skip after skip call")
    if with_sum_out:
        assert_bitwise_equal(sum_out, s, "sum_out vs materialized sum")
    ys, means, rstds = gn.group_norm(s, G, w, b, **kw)
    assert_bitwise_equal(y, ys, "y(skip) vs y(materialized sum)")
    assert_bitwise_equal(mean, means, "mean(skip) vs mean(materialized sum)")
    assert_bitwise_equal(rstd, rstds, "rstd(skip) vs rstd(materialized sum)")
    # and against the reference on s
    if dtype in HALF_DTYPES:
        check_half_forward(y, s, G, w, b, channels_last, activation)
    else:
        ref, _, _ = ref_forward(s, G, w, b, channels_last=channels_last, activation=activation)
        tol = 3e-5 if dtype == F32 else 1e-10
        assert_close(y, ref, rtol=tol, atol=tol, what="y(skip) vs reference")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_skip_big_and_threads(gn, rng, dtype, channels_last):
    """Skip on a shape split over threads/chunks: still equal to the materialized sum, any thread count."""
    shape = make_shape(2, 32, (40, 36), channels_last)
    x = rng.x(shape, dtype)
    skip = rng.x(shape, dtype)
    sb = rng.normal((32,), F32)
    s = materialize(x, skip, sb, channels_last)
    base = gn.group_norm(s, 8, channels_last=channels_last, num_threads=1)
    for t in (1, 2, 3):
        sum_out = poison(shape, dtype)
        y = gn.group_norm(x, 8, channels_last=channels_last, skip=skip, skip_bias=sb, sum_out=sum_out,
                          num_threads=t)
        assert_bitwise_equal(sum_out, s, f"sum_out, {t} threads")
        assert_bitwise_equal(y, base, f"y(skip), {t} threads")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
def test_skip_strided_inputs(gn, rng, dtype):
    big = rng.x((2, 10, 6, 8), dtype)
    bigs = rng.x((2, 10, 8, 6), dtype)
    x = big[:, 1:9, ::-1]               # (2, 8, 6, 8)
    skip = bigs[:, ::-1][:, :8].transpose(0, 1, 3, 2)  # (2, 8, 6, 8)
    sb = rng.normal((16,), dtype)[::2]
    s = materialize(np.ascontiguousarray(x), np.ascontiguousarray(skip), sb.copy(), False)
    sum_out = poison(x.shape, dtype)
    y = gn.group_norm(x, 4, skip=skip, skip_bias=sb, sum_out=sum_out)
    assert_bitwise_equal(sum_out, s, "sum_out")
    assert_bitwise_equal(y, gn.group_norm(s, 4), "y")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
def test_skip_in_place(gn, rng, dtype):
    """out= may alias x also when a skip is added."""
    x = rng.x((2, 8, 6, 5), dtype)
    skip = rng.x((2, 8, 6, 5), dtype)
    s = materialize(x, skip, None, False)
    expected = gn.group_norm(s, 2)
    gn.group_norm(x, 2, skip=skip, out=x)
    assert_bitwise_equal(x, expected, "in-place y(skip)")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_backward_after_skip(gn, rng, dtype, channels_last, activation):
    """The backward of a skip forward takes x = s (the sum_out)."""
    N, C, G = 2, 8, 4
    shape = make_shape(N, C, (6, 5), channels_last)
    x = rng.x(shape, dtype)
    skip = rng.x(shape, dtype)
    sb = rng.normal((C,), F32)
    w, b = rng.params(C, F64 if dtype == F64 else F32)
    dy = rng.normal(shape, dtype)
    s = np.empty(shape, dtype)
    _, mean, rstd = gn.group_norm(x, G, w, b, skip=skip, skip_bias=sb, sum_out=s, return_stats=True,
                                  channels_last=channels_last, activation=activation)
    gx, gw, gb = gn.group_norm_backward(dy, s, mean, rstd, G, w, b, channels_last=channels_last,
                                        activation=activation)
    rx, rw, rb = ref_backward(dy, materialize(x, skip, sb, channels_last), G, w, b,
                              channels_last=channels_last, activation=activation)
    if dtype in HALF_DTYPES:
        assert_within_ulps(gx, rx, dtype, ulps=4, atol=1e-5 * np.abs(rx).max(), what="grad_x")
        sw, sb_ = _abs_sums(dy, s, G, w, b, channels_last, activation)
        assert_close(gw, rw, rtol=0, atol=1e-5 * sw.max() + 1e-7, what="grad_weight")
        assert_close(gb, rb, rtol=0, atol=1e-5 * sb_.max() + 1e-7, what="grad_bias")
    else:
        tol = dict(rtol=1e-4, atol=3e-5) if dtype == F32 else dict(rtol=1e-10, atol=1e-10)
        assert_close(gx, rx, what="grad_x", **tol)
        assert_close(gw, rw, rtol=tol["rtol"], atol=tol["atol"] * 30, what="grad_weight")
        assert_close(gb, rb, rtol=tol["rtol"], atol=tol["atol"] * 30, what="grad_bias")


# ----------------------------------------------------------------- ONNX reference


def _onnx_group_norm(x, scale, bias, num_groups, epsilon):
    import onnx  # a test dependency (pyproject's [test] extra): its absence is an error, not a skip
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator
    C = x.shape[1]
    node = helper.make_node("GroupNormalization", ["X", "scale", "bias"], ["Y"], num_groups=num_groups,
                            epsilon=epsilon, stash_type=1)
    graph = helper.make_graph(
        [node], "gn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT16, list(x.shape)),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT16, [C]),
         helper.make_tensor_value_info("bias", TensorProto.FLOAT16, [C])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, list(x.shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    (y,) = ReferenceEvaluator(model).run(None, {"X": x, "scale": scale, "bias": bias})
    return np.asarray(y)


def test_onnx_reference_sanity():
    """The ONNX reference itself agrees with our float64 reference (so it is a meaningful oracle)."""
    x = np.random.default_rng(0).normal(size=(2, 4, 5)).astype(np.float16)
    y = _onnx_group_norm(x, np.ones(4, np.float16), np.zeros(4, np.float16), 2, 1e-5)
    ref, _, _ = ref_forward(x, 2)
    assert_within_ulps(y, ref, F16, ulps=2, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("G", [1, 2, 4, 8])
@pytest.mark.parametrize("spatial", [(), (9,), (5, 6), (2, 3, 4)], ids=lambda s: f"sp{len(s)}")
@pytest.mark.parametrize("affine", [False, True])
def test_float16_vs_onnx_groupnormalization21(gn, rng, channels_last, G, spatial, affine):
    C = 8
    x = rng.x(make_shape(2, C, spatial, channels_last), F16)
    if affine:
        w, b = rng.params(C, F16)
    else:
        w, b = np.ones(C, F16), np.zeros(C, F16)
    eps = 1e-5
    xo = np.ascontiguousarray(np.moveaxis(x, -1, 1)) if channels_last else x
    yo = _onnx_group_norm(xo, w, b, G, eps)
    if channels_last:
        yo = np.moveaxis(yo, 1, -1)
    y = gn.group_norm(x, G, w, b, eps=eps, channels_last=channels_last)
    if not affine:
        # ONNX: one rounding of the float32 x_hat; ours: one rounding of float32 math
        assert_within_ulps(y, yo, F16, ulps=1, atol=1e-6, what="y vs ONNX")
    else:
        # ONNX rounds x_hat to float16, then multiplies and adds in float16 (3 roundings)
        ref, _, _, parts = ref_forward(x, G, w, b, eps=eps, channels_last=channels_last, return_parts=True)
        wx = np.abs(parts["xhat"] * _bc(w, x.shape, channels_last))
        mag = np.maximum(np.maximum(wx, np.abs(_bc(b, x.shape, channels_last))), np.abs(ref))
        tol = 3 * ulp(mag, F16)
        diff = np.abs(y.astype(np.float64) - yo.astype(np.float64))
        assert (diff <= tol).all(), f"y vs ONNX: max diff {diff.max():.3e}, {np.sum(diff > tol)} elements"
        # and we are the more accurate of the two
        check_half_forward(y, x, G, w, b, channels_last, None, eps=eps, ulps=1)
