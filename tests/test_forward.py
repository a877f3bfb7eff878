"""Forward pass vs the independent float64 reference (and torch)."""
import numpy as np
import pytest

from conftest import (ALL_DTYPES, F32, F64, assert_close, dtype_id, make_shape, poison, ref_forward,
                      torch_tensor)

# per-dtype tolerances for well-scaled data (output magnitude ~ 1)
TOL = {F32: dict(rtol=2e-5, atol=2e-5), F64: dict(rtol=1e-11, atol=1e-11)}

SPATIALS = [(), (7,), (5, 6), (3, 4, 5)]


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("spatial", SPATIALS, ids=lambda s: f"sp{len(s)}")
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
def test_forward_matches_reference(gn, rng, dtype, channels_last, spatial, affine):
    N, C, G = 3, 12, 4
    x = rng.x(make_shape(N, C, spatial, channels_last), dtype)
    w, b = rng.params(C, dtype)
    w = w if affine in ("both", "weight") else None
    b = b if affine in ("both", "bias") else None
    y = gn.group_norm(x, G, w, b, channels_last=channels_last)
    assert y.shape == x.shape and y.dtype == x.dtype
    ref, _, _ = ref_forward(x, G, w, b, channels_last=channels_last)
    assert_close(y, ref, what="y", **TOL[dtype])


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("G,C", [(1, 8), (8, 8), (2, 6), (3, 9), (16, 32), (1, 1)])
def test_group_counts(gn, rng, dtype, channels_last, G, C):
    x = rng.x(make_shape(2, C, (5, 3), channels_last), dtype)
    w, b = rng.params(C, dtype)
    y = gn.group_norm(x, G, w, b, channels_last=channels_last)
    ref, _, _ = ref_forward(x, G, w, b, channels_last=channels_last)
    assert_close(y, ref, what="y", **TOL[dtype])


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("odd", [(1, 4, 1), (1, 4, 1, 1), (2, 2, 13), (5, 6, 31), (1, 64, 3)], ids=str)
def test_odd_sizes(gn, rng, channels_last, odd):
    """Sizes that are not multiples of any vector width (tails, single elements)."""
    N, C, S = odd[0], odd[1], odd[2:]
    G = 2 if C % 2 == 0 else 1
    x = rng.x(make_shape(N, C, S, channels_last), np.float32)
    w, b = rng.params(C, np.float32)
    y = gn.group_norm(x, G, w, b, channels_last=channels_last)
    ref, _, _ = ref_forward(x, G, w, b, channels_last=channels_last)
    assert_close(y, ref, what="y", **TOL[F32])


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("eps", [1e-5, 0.0, 1e-12, 0.1, 3.0])
def test_eps_variants(gn, rng, dtype, eps):
    x = rng.normal((2, 8, 6, 5), dtype, scale=3.0)  # group variance ~9 >> 0.5, so var + eps > 0
    w, b = rng.params(8, dtype)
    ref, mref, rref = ref_forward(x, 4, w, b, eps=eps)
    y, mean, rstd = gn.group_norm(x, 4, w, b, eps=eps, return_stats=True)
    assert_close(y, ref, what="y", **TOL[dtype])
    assert_close(rstd, rref, rtol=TOL[dtype]["rtol"], atol=0, what="rstd")
    if abs(eps) >= 0.1:
        # and eps actually matters: the eps=0 result differs
        y0 = gn.group_norm(x, 4, w, b, eps=0.0)
        assert not np.allclose(y0, y, rtol=0, atol=0)


@pytest.mark.parametrize("eps", [-0.25, -1e-300, -np.inf])
def test_negative_eps_is_rejected(gn, rng, eps):
    """var + eps < 0 has no square root: a negative eps is an error, and y is not written."""
    x = rng.normal((2, 4, 10), np.float64, scale=2.0)
    out = np.full_like(x, np.nan)
    with pytest.raises(ValueError, match="eps"):
        gn.group_norm(x, 2, eps=eps, out=out)
    assert np.isnan(out).all()


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("with_params", [False, True])
def test_large_offset_1e4_float32(gn, rng, channels_last, with_params):
    """x = 1e4 + N(0, 1) in float32: the naive E[x^2]-E[x]^2 fails; we want <= 5e-3."""
    N, C, G = 2, 16, 4
    shape = make_shape(N, C, (9, 11), channels_last)
    x = (1e4 + rng.rng.normal(0, 1, size=shape)).astype(np.float32)
    w, b = rng.params(C) if with_params else (None, None)
    y, mean, rstd = gn.group_norm(x, G, w, b, channels_last=channels_last, return_stats=True)
    ref, mref, rref = ref_forward(x, G, w, b, channels_last=channels_last)
    assert np.isfinite(y).all()
    assert_close(y, ref, rtol=0, atol=5e-3, what="y (offset 1e4)")
    assert_close(mean, mref, rtol=1e-6, atol=0, what="mean (offset 1e4)")
    assert_close(rstd, rref, rtol=1e-3, atol=0, what="rstd (offset 1e4)")


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_large_offset_1e6_float32(gn, rng, channels_last):
    N, C, G = 2, 8, 2
    shape = make_shape(N, C, (16, 16), channels_last)
    x = (1e6 + rng.rng.normal(0, 1, size=shape)).astype(np.float32)
    y, mean, rstd = gn.group_norm(x, G, channels_last=channels_last, return_stats=True)
    ref, mref, rref = ref_forward(x, G, channels_last=channels_last)
    # float32 spacing at 1e6 is 0.0625: the input is coarsely quantized but its variance is ~1
    assert_close(y, ref, rtol=0, atol=0.1, what="y (offset 1e6)")
    assert_close(rstd, rref, rtol=0.05, atol=0, what="rstd (offset 1e6)")


def test_large_offset_float64(gn, rng):
    x = 1e8 + rng.normal((2, 8, 20, 20), np.float64)
    y = gn.group_norm(x, 4)
    ref, _, _ = ref_forward(x, 4)
    assert_close(y, ref, rtol=0, atol=1e-6, what="y (float64, offset 1e8)")


def test_constant_group(gn):
    """A group with zero variance: y = bias (x_hat = 0), no NaN."""
    x = np.ones((1, 4, 3, 3), np.float32) * 7.25
    x[0, 2:] = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
    b = np.array([0.5, -1.0, 0.0, 2.0], np.float32)
    w = np.array([2.0, 3.0, 1.0, 1.0], np.float32)
    y = gn.group_norm(x, 2, w, b)
    assert_close(y[0, :2], np.broadcast_to(b[:2, None, None], (2, 3, 3)), rtol=0, atol=1e-6, what="y const")
    ref, _, _ = ref_forward(x, 2, w, b)
    assert_close(y, ref, **TOL[F32])


# ----------------------------------------------------------------- strides / layouts


def _strided_cases(rng, dtype):
    big = rng.x((4, 10, 9, 14), dtype)
    yield "slice_batch_step", big[::2]                      # (2, 10, 9, 14)
    yield "slice_channels", big[:, 1:9]                     # (4, 8, 9, 14)
    yield "neg_stride_spatial", big[:, :8, ::-1, ::-2]
    yield "neg_stride_channels", big[:, ::-1][:, :8]
    yield "transposed_spatial", big[:, :8].transpose(0, 1, 3, 2)
    yield "fortran", np.asfortranarray(big[:, :8])
    yield "broadcast_like_zero_stride", np.broadcast_to(big[:1, :8], (3, 8, 9, 14))
    yield "channels_last_view_of_nchw", big[:, :8].transpose(0, 2, 3, 1)  # really channels-last data


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", range(8))
def test_strided_inputs(gn, rng, dtype, case):
    name, x = list(_strided_cases(rng, dtype))[case]
    channels_last = name == "channels_last_view_of_nchw"
    assert not x.flags.c_contiguous
    C = x.shape[-1] if channels_last else x.shape[1]
    G = 2
    w, b = rng.params(C, dtype)
    xc = np.ascontiguousarray(x).copy()
    y = gn.group_norm(x, G, w, b, channels_last=channels_last)
    ref, _, _ = ref_forward(xc, G, w, b, channels_last=channels_last)
    assert_close(y, ref, what=f"y ({name})", **TOL[dtype])
    np.testing.assert_array_equal(np.ascontiguousarray(x), xc)  # input untouched


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_strided_weight_bias(gn, rng, dtype):
    x = rng.x((2, 6, 5), dtype)
    wb = rng.normal((12,), dtype)
    w, b = wb[::2], wb[::-2]
    y = gn.group_norm(x, 3, w, b)
    ref, _, _ = ref_forward(x, 3, w.copy(), b.copy())
    assert_close(y, ref, what="y", **TOL[dtype])


def test_list_input(gn):
    x = [[1.0, 2.0, 3.0, 5.0], [0.5, -1.0, 4.0, 2.0]]
    y = gn.group_norm(np.asarray(x, np.float64), 2)
    ref, _, _ = ref_forward(np.asarray(x), 2)
    assert_close(y, ref, **TOL[F64])


# ----------------------------------------------------------------- out=, in place, stats


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_out_poisoned(gn, rng, dtype, channels_last):
    x = rng.x(make_shape(3, 8, (7, 5), channels_last), dtype)
    w, b = rng.params(8, dtype)
    out = poison(x.shape, dtype)
    y = gn.group_norm(x, 4, w, b, channels_last=channels_last, out=out)
    assert np.shares_memory(y, out)
    assert not np.isnan(out).any(), "some output elements were never written"
    ref, _, _ = ref_forward(x, 4, w, b, channels_last=channels_last)
    assert_close(out, ref, what="out", **TOL[dtype])


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("shape_kind", ["small", "large"])
def test_in_place(gn, rng, dtype, channels_last, shape_kind):
    sp = (6, 5) if shape_kind == "small" else (48, 40)
    x = rng.x(make_shape(2, 16, sp, channels_last), dtype)
    w, b = rng.params(16, dtype)
    ref, _, _ = ref_forward(x, 4, w, b, channels_last=channels_last, activation="silu")
    y = gn.group_norm(x, 4, w, b, channels_last=channels_last, out=x, activation="silu")
    assert np.shares_memory(y, x)
    assert_close(x, ref, what="in-place x", **TOL[dtype])


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("spatial", SPATIALS, ids=lambda s: f"sp{len(s)}")
def test_return_stats(gn, rng, dtype, channels_last, spatial):
    N, C, G = 3, 12, 3
    x = rng.x(make_shape(N, C, spatial, channels_last), dtype, loc=2.0)
    res = gn.group_norm(x, G, channels_last=channels_last, return_stats=True, eps=1e-3)
    assert isinstance(res, tuple) and len(res) == 3
    y, mean, rstd = res
    assert mean.shape == (N, G) and rstd.shape == (N, G)
    assert mean.dtype == rstd.dtype == (F64 if dtype == F64 else F32)
    ref, mref, rref = ref_forward(x, G, channels_last=channels_last, eps=1e-3)
    r = TOL[dtype]["rtol"]
    assert_close(mean, mref, rtol=r, atol=r, what="mean")
    assert_close(rstd, rref, rtol=r, atol=0, what="rstd")
    assert_close(y, ref, what="y", **TOL[dtype])


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_nan_isolated_to_its_group(gn, rng, channels_last, dtype):
    N, C, G = 3, 8, 4
    x = rng.x(make_shape(N, C, (4, 5), channels_last), dtype)
    w, b = rng.params(C)
    ref, _, _ = ref_forward(x, G, w, b, channels_last=channels_last)
    # NaN in sample 1, channel 3 (group 1 of 4)
    if channels_last:
        x[1, 2, 3, 3] = np.nan
    else:
        x[1, 3, 2, 3] = np.nan
    y = gn.group_norm(x, G, w, b, channels_last=channels_last)
    yc = np.moveaxis(y, -1, 1) if channels_last else y
    rc = np.moveaxis(ref, -1, 1) if channels_last else ref
    assert np.isnan(yc[1, 2:4]).all(), "the poisoned group should be NaN (its mean is NaN)"
    mask = np.ones(yc.shape, bool)
    mask[1, 2:4] = False
    assert np.isfinite(yc[mask]).all(), "NaN leaked out of its group"
    tol = TOL.get(np.dtype(dtype), dict(rtol=1e-2, atol=1e-2))
    assert_close(yc[mask], rc[mask], what="other groups", **tol)


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
def test_empty_batch(gn, dtype, channels_last):
    x = np.zeros(make_shape(0, 6, (4, 3), channels_last), dtype)
    y, mean, rstd = gn.group_norm(x, 3, np.ones(6, dtype), np.zeros(6, dtype),
                                  channels_last=channels_last, return_stats=True)
    assert y.shape == x.shape and y.dtype == dtype
    assert mean.shape == (0, 3) and rstd.shape == (0, 3)
    assert mean.dtype == (F64 if dtype == F64 else F32)
    y2 = gn.group_norm(x, 3, channels_last=channels_last, activation="silu", skip=x.copy())
    assert y2.shape == x.shape and y2.dtype == dtype


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_weight_float32_with_any_x(gn, rng, dtype, channels_last):
    """weight/bias float32 with float64 x (allowed) and x-dtype weights give the right answer."""
    x = rng.x(make_shape(2, 6, (5,), channels_last), dtype)
    w, b = rng.params(6, np.float32)
    y = gn.group_norm(x, 2, w, b, channels_last=channels_last)
    assert y.dtype == dtype
    ref, _, _ = ref_forward(x, 2, w, b, channels_last=channels_last)
    assert_close(y, ref, what="y", **TOL[dtype])


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("spatial", SPATIALS[1:], ids=lambda s: f"sp{len(s)}")
def test_silu(gn, rng, dtype, channels_last, spatial):
    x = rng.x(make_shape(2, 8, spatial, channels_last), dtype, scale=2.0)
    w, b = rng.params(8, dtype)
    w = w * 4  # push z into the saturating parts of the sigmoid too
    y = gn.group_norm(x, 2, w, b, channels_last=channels_last, activation="silu")
    ref, _, _ = ref_forward(x, 2, w, b, channels_last=channels_last, activation="silu")
    assert_close(y, ref, what="silu y", **TOL[dtype])


def test_silu_large_z(gn):
    """silu must not overflow/NaN for large |z| (exp(-z) overflow in a naive formula)."""
    x = np.array([[[-1.0, 1.0]] * 2], np.float32).reshape(1, 2, 2)
    w = np.array([200.0, -200.0], np.float32)
    b = np.array([0.0, 0.0], np.float32)
    y = gn.group_norm(x, 2, w, b, activation="silu", eps=0.0)
    ref, _, _ = ref_forward(x, 2, w, b, activation="silu", eps=0.0)
    assert_close(y, ref, rtol=1e-5, atol=1e-6, what="silu large z")


# ----------------------------------------------------------------- torch agreement


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("spatial", SPATIALS, ids=lambda s: f"sp{len(s)}")
@pytest.mark.parametrize("activation", [None, "silu"])
def test_matches_torch(gn, rng, torch, dtype, channels_last, spatial, activation):
    N, C, G = 2, 16, 4
    x = rng.x(make_shape(N, C, spatial, channels_last), dtype)
    w, b = rng.params(C, dtype)
    y = gn.group_norm(x, G, w, b, eps=1e-4, channels_last=channels_last, activation=activation)
    xt = torch_tensor(x)
    if channels_last:
        xt = torch.movedim(xt, -1, 1)
    t = torch.nn.functional.group_norm(xt, G, torch_tensor(w), torch_tensor(b), eps=1e-4)
    if activation == "silu":
        t = torch.nn.functional.silu(t)
    if channels_last:
        t = torch.movedim(t, 1, -1)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == F32 else dict(rtol=1e-10, atol=1e-10)
    assert_close(y, t.numpy(), what="y vs torch", **tol)


def test_module_threads_api(gn):
    old = gn.get_num_threads()
    assert isinstance(old, int) and old >= 1
    gn.set_num_threads(3)
    assert gn.get_num_threads() == 3
    gn.set_num_threads(old)
    assert gn.get_num_threads() == old


def test_isa_api(gn):
    isas = gn.available_isas()
    assert isinstance(isas, list) and len(isas) >= 1
    assert isas[-1] == "portable"
    assert gn.active_isa() in isas
    assert gn.bfloat16 == np.dtype(__import__("ml_dtypes").bfloat16)


# ----------------------------------------------------------------- bigger shapes / hard data


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", [
    ((2, 256, 33, 17), 32, False),
    ((2, 31, 29, 320), 40, True),
    ((1, 3, 70001), 1, False),
    ((1, 70001, 6), 2, True),
    ((1, 8, 256, 256), 2, False),
    ((1, 128, 128, 8), 1, True),
    ((3, 96, 1, 1), 24, False),
], ids=lambda c: f"{'x'.join(map(str, c[0]))}-G{c[1]}-{'cl' if c[2] else 'cf'}")
def test_larger_shapes_vs_reference(gn, rng, threads, case):
    """Shapes that exercise chunking, band tiling, cache-sized splits and tails, vs the reference."""
    shape, G, cl = case
    C = shape[-1] if cl else shape[1]
    x = rng.x(shape, np.float32, loc=5.0)
    w, b = rng.params(C)
    y, mean, rstd = gn.group_norm(x, G, w, b, channels_last=cl, activation="silu", return_stats=True,
                                  num_threads=threads)
    ref, mref, rref = ref_forward(x, G, w, b, channels_last=cl, activation="silu")
    assert_close(y, ref, rtol=3e-5, atol=3e-5, what="y")
    assert_close(mean, mref, rtol=1e-6, atol=1e-6, what="mean")
    assert_close(rstd, rref, rtol=1e-5, atol=0, what="rstd")


def _adversarial(kind, shape, rng):
    a = rng.rng.normal(0, 1, size=shape)
    flat = a.reshape(-1)
    if kind == "first_outlier":        # a shift taken from the first element is far from the mean
        a = a + 1e4
        flat[0] = 1e4 + 1e3
    elif kind == "last_outlier":
        a = a + 1e4
        a.reshape(-1)[-1] = 1e4 - 1e3
    elif kind == "ramp":               # sorted data: chunk means drift
        a = np.linspace(1e4, 1e4 + 100, a.size).reshape(shape)
    elif kind == "two_levels":         # half the elements at one value, half at another
        a = np.where(np.arange(a.size).reshape(shape) % 2 == 0, 3e3, 3e3 + 1.0)
    elif kind == "one_spike":          # all equal but one
        a = np.full(shape, 123.0)
        a.reshape(-1)[a.size // 3] = 124.0
    return a.astype(np.float32)


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("kind", ["first_outlier", "last_outlier", "ramp", "two_levels", "one_spike"])
def test_adversarial_data_single_group(gn, rng, channels_last, kind):
    """One group of 65536 float32 values whose variance is tiny next to their mean / the shift."""
    shape = (1, 64, 64, 16) if channels_last else (1, 16, 64, 64)
    x = _adversarial(kind, shape, rng)
    y, mean, rstd = gn.group_norm(x, 1, channels_last=channels_last, return_stats=True, eps=0.0 if
                                  kind != "one_spike" else 1e-9)
    ref, mref, rref = ref_forward(x, 1, channels_last=channels_last, eps=0.0 if kind != "one_spike" else 1e-9)
    assert_close(rstd, rref, rtol=2e-3, atol=0, what=f"rstd ({kind})")
    scale = max(1.0, np.abs(ref).max())
    assert_close(y, ref, rtol=0, atol=5e-3 * scale, what=f"y ({kind})")
