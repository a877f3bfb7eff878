"""Backward pass vs the independent float64 reference and torch autograd."""
import numpy as np
import pytest

from conftest import (F32, F64, assert_close, make_shape, poison, ref_backward, ref_forward,
                      torch_tensor)

SPATIALS = [(), (7,), (5, 6), (3, 4, 5)]
TOL = {F32: dict(rtol=1e-4, atol=2e-5), F64: dict(rtol=1e-10, atol=1e-11)}


def _run(gn, x, G, w, b, dy, channels_last, activation, eps=1e-5, **kw):
    _, mean, rstd = gn.group_norm(x, G, w, b, eps=eps, channels_last=channels_last,
                                  activation=activation, return_stats=True)
    return gn.group_norm_backward(dy, x, mean, rstd, G, w, b, channels_last=channels_last,
                                  activation=activation, **kw)


def _check_param_grad(got, ref, dtype, what):
    # sums over N*spatial elements: scale atol with the magnitude of the summed terms
    assert got.dtype == dtype, f"{what} dtype {got.dtype}, expected {dtype}"
    assert got.shape == ref.shape
    t = TOL[np.dtype(dtype)]
    assert_close(got, ref, rtol=t["rtol"], atol=t["atol"] * max(1.0, np.abs(ref).max()), what=what)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("spatial", SPATIALS, ids=lambda s: f"sp{len(s)}")
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
def test_backward_matches_reference(gn, rng, dtype, channels_last, spatial, affine):
    N, C, G = 3, 12, 4
    shape = make_shape(N, C, spatial, channels_last)
    x = rng.x(shape, dtype)
    dy = rng.normal(shape, dtype)
    w, b = rng.params(C, dtype)
    w = w if affine in ("both", "weight") else None
    b = b if affine in ("both", "bias") else None
    gx, gw, gb = _run(gn, x, G, w, b, dy, channels_last, None)
    rx, rw, rb = ref_backward(dy, x, G, w, b, channels_last=channels_last)
    assert gx.shape == x.shape and gx.dtype == dtype
    assert_close(gx, rx, what="grad_x", **TOL[dtype])
    if w is None:
        assert gw is None
    else:
        _check_param_grad(gw, rw, w.dtype, "grad_weight")
    if b is None:
        assert gb is None
    else:
        _check_param_grad(gb, rb, b.dtype, "grad_bias")


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("spatial", SPATIALS, ids=lambda s: f"sp{len(s)}")
def test_silu_backward_matches_reference(gn, rng, dtype, channels_last, spatial):
    N, C, G = 2, 8, 2
    shape = make_shape(N, C, spatial, channels_last)
    x = rng.x(shape, dtype)
    dy = rng.normal(shape, dtype)
    w, b = rng.params(C, dtype)
    w = w * 2
    gx, gw, gb = _run(gn, x, G, w, b, dy, channels_last, "silu")
    rx, rw, rb = ref_backward(dy, x, G, w, b, channels_last=channels_last, activation="silu")
    assert_close(gx, rx, what="grad_x (silu)", **TOL[dtype])
    _check_param_grad(gw, rw, w.dtype, "grad_weight (silu)")
    _check_param_grad(gb, rb, b.dtype, "grad_bias (silu)")


@pytest.mark.parametrize("with_bias", [True, False])
def test_silu_backward_bias_matters(gn, rng, with_bias):
    """silu backward recomputes z = x_hat*w + b: passing bias (or not) must change the result."""
    x = rng.x((2, 4, 9), np.float64)
    dy = rng.normal((2, 4, 9), np.float64)
    w, b = rng.params(4, np.float64)
    b = b + 1.0
    bb = b if with_bias else None
    gx, gw, gb = _run(gn, x, 2, w, bb, dy, False, "silu")
    rx, rw, rb = ref_backward(dy, x, 2, w, bb, activation="silu")
    assert_close(gx, rx, what="grad_x", **TOL[F64])
    assert_close(gw, rw, what="grad_w", **TOL[F64])


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("spatial", [(), (6,), (4, 5), (2, 3, 4)], ids=lambda s: f"sp{len(s)}")
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_backward_matches_torch_autograd(gn, rng, torch, dtype, channels_last, spatial, affine,
                                         activation):
    N, C, G = 2, 8, 4
    shape = make_shape(N, C, spatial, channels_last)
    x = rng.x(shape, dtype)
    dy = rng.normal(shape, dtype)
    w, b = rng.params(C, dtype) if affine else (None, None)
    gx, gw, gb = _run(gn, x, G, w, b, dy, channels_last, activation, eps=1e-3)

    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    wt = torch.from_numpy(w.astype(np.float64)).requires_grad_(True) if affine else None
    bt = torch.from_numpy(b.astype(np.float64)).requires_grad_(True) if affine else None
    xin = torch.movedim(xt, -1, 1) if channels_last else xt
    yt = torch.nn.functional.group_norm(xin, G, wt, bt, eps=1e-3)
    if activation == "silu":
        yt = torch.nn.functional.silu(yt)
    if channels_last:
        yt = torch.movedim(yt, 1, -1)
    (yt * torch.from_numpy(dy.astype(np.float64))).sum().backward()
    assert_close(gx, xt.grad.numpy(), what="grad_x vs torch", **TOL[dtype])
    if affine:
        _check_param_grad(gw, wt.grad.numpy(), w.dtype, "grad_weight vs torch")
        _check_param_grad(gb, bt.grad.numpy(), b.dtype, "grad_bias vs torch")
    else:
        assert gw is None and gb is None


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_backward_f64_x_f32_weight(gn, rng, channels_last):
    """float64 data with float32 parameters: grads of the parameters come back float32."""
    shape = make_shape(2, 6, (5, 4), channels_last)
    x = rng.x(shape, np.float64)
    dy = rng.normal(shape, np.float64)
    w, b = rng.params(6, np.float32)
    gx, gw, gb = _run(gn, x, 3, w, b, dy, channels_last, None)
    rx, rw, rb = ref_backward(dy, x, 3, w, b, channels_last=channels_last)
    assert gx.dtype == F64 and gw.dtype == F32 and gb.dtype == F32
    assert_close(gx, rx, rtol=1e-6, atol=1e-6, what="grad_x")
    assert_close(gw, rw, rtol=1e-5, atol=1e-5, what="grad_weight")
    assert_close(gb, rb, rtol=1e-5, atol=1e-5, what="grad_bias")


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_backward_large_offset(gn, rng, channels_last):
    shape = make_shape(2, 8, (12, 10), channels_last)
    x = (1e4 + rng.rng.normal(0, 1, size=shape)).astype(np.float32)
    dy = rng.normal(shape, np.float32)
    w, b = rng.params(8)
    gx, gw, gb = _run(gn, x, 2, w, b, dy, channels_last, None)
    rx, rw, rb = ref_backward(dy, x, 2, w, b, channels_last=channels_last)
    assert_close(gx, rx, rtol=0, atol=5e-3, what="grad_x (offset 1e4)")
    assert_close(gw, rw, rtol=0, atol=5e-3 * np.abs(dy).sum() / 8, what="grad_w (offset 1e4)")
    assert_close(gb, rb, rtol=1e-5, atol=1e-4, what="grad_b (offset 1e4)")


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_backward_strided_inputs(gn, rng, channels_last):
    big = rng.x((3, 10, 8, 9), np.float32)
    dbig = rng.normal((3, 10, 8, 9), np.float32)
    if channels_last:
        x = big[:, :, ::-1, 1:].transpose(0, 2, 3, 1)    # (3, 8, 8, 10) channels-last, C=10
        dy = dbig[:, :, :, 1:].transpose(0, 2, 3, 1)[:, ::-1]
        C = 10
    else:
        x = big[:, 1:9, ::2, ::-1]                        # C=8
        dy = dbig[::-1, 2:, ::2].copy()[:, :, :, ::-1]
        C = 8
    assert x.shape == dy.shape
    w, b = rng.params(C)
    gx, gw, gb = _run(gn, x, 2, w, b, dy, channels_last, None)
    rx, rw, rb = ref_backward(np.ascontiguousarray(dy), np.ascontiguousarray(x), 2, w, b,
                              channels_last=channels_last)
    assert_close(gx, rx, what="grad_x", **TOL[F32])
    _check_param_grad(gw, rw, F32, "grad_weight")
    _check_param_grad(gb, rb, F32, "grad_bias")


def test_backward_out_poisoned(gn, rng):
    """group_norm_backward writes every grad_x element (via its optional out=)."""
    x = rng.x((2, 8, 5, 5), np.float32)
    dy = rng.normal(x.shape, np.float32)
    _, mean, rstd = gn.group_norm(x, 4, return_stats=True)
    out = poison(x.shape, np.float32)
    gx, _, _ = gn.group_norm_backward(dy, x, mean, rstd, 4, out=out)
    assert gx is out
    assert not np.isnan(gx).any()
    rx, _, _ = ref_backward(dy, x, 4)
    assert_close(gx, rx, **TOL[F32])


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_backward_empty_batch(gn, dtype):
    """N = 0: empty grad_x and all-zero parameter gradients (a sum over nothing)."""
    x = np.zeros((0, 6, 4), dtype)
    dy = np.zeros((0, 6, 4), dtype)
    w, b = np.ones(6, dtype), np.full(6, 0.5, dtype)
    _, mean, rstd = gn.group_norm(x, 3, w, b, return_stats=True)
    gx, gw, gb = gn.group_norm_backward(dy, x, mean, rstd, 3, w, b)
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, np.zeros(6, dtype))
    np.testing.assert_array_equal(gb, np.zeros(6, dtype))


def test_backward_uses_given_stats(gn, rng):
    """The backward uses the mean/rstd it is given (from the forward), as documented."""
    x = rng.x((2, 4, 16), np.float64)
    dy = rng.normal(x.shape, np.float64)
    _, mean, rstd = gn.group_norm(x, 2, return_stats=True)
    gx, _, _ = gn.group_norm_backward(dy, x, mean, rstd, 2)
    rx, _, _ = ref_backward(dy, x, 2)
    assert_close(gx, rx, **TOL[F64])
    # stats from a different eps give the gradient for that eps
    _, mean2, rstd2 = gn.group_norm(x, 2, eps=0.5, return_stats=True)
    gx2, _, _ = gn.group_norm_backward(dy, x, mean2, rstd2, 2)
    rx2, _, _ = ref_backward(dy, x, 2, eps=0.5)
    assert_close(gx2, rx2, **TOL[F64])


@pytest.mark.parametrize("xdtype", ["f64", "f32", "f16", "bf16"])
@pytest.mark.parametrize("wd,bd", [("f32", "f32"), ("x", "x"), ("f32", "x"), ("x", "f32")])
def test_param_grad_dtypes_follow_params(gn, rng, xdtype, wd, bd):
    """grad_weight has weight's dtype and grad_bias has bias's dtype, also when the two differ."""
    import ml_dtypes
    dt = {"f64": F64, "f32": F32, "f16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16)}[xdtype]
    x = rng.x((2, 6, 5), dt)
    dy = rng.normal(x.shape, dt)
    w, b = rng.params(6, np.float32)
    w = w.astype(F32 if wd == "f32" else dt)
    b = b.astype(F32 if bd == "f32" else dt)
    y, mean, rstd = gn.group_norm(x, 3, w, b, return_stats=True)
    ref, _, _ = ref_forward(x, 3, w, b)
    assert_close(y, ref, rtol=1e-2, atol=1e-2, what="y with mixed parameter dtypes")
    gx, gw, gb = gn.group_norm_backward(dy, x, mean, rstd, 3, w, b)
    assert gw.dtype == w.dtype, f"grad_weight dtype {gw.dtype}, weight is {w.dtype}"
    assert gb.dtype == b.dtype, f"grad_bias dtype {gb.dtype}, bias is {b.dtype}"
    rx, rw, rb = ref_backward(dy, x, 3, w, b)
    assert_close(gw, rw, rtol=1e-2, atol=1e-2, what="grad_weight")
    assert_close(gb, rb, rtol=1e-2, atol=1e-2, what="grad_bias")
