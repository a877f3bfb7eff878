"""GroupNorm layer: parameters, forward, backward, gradient accumulation, state dict."""
import numpy as np
import pytest

from conftest import (BF16, F16, F32, F64, assert_close, make_shape, ref_backward, ref_forward)


def test_defaults(gn):
    layer = gn.GroupNorm(4, 12)
    assert layer.weight.shape == (12,) and layer.bias.shape == (12,)
    assert layer.weight.dtype == F32 and layer.bias.dtype == F32
    np.testing.assert_array_equal(layer.weight, np.ones(12))
    np.testing.assert_array_equal(layer.bias, np.zeros(12))
    assert isinstance(layer.weight, np.ndarray)


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_forward_backward(gn, rng, channels_last, dtype, activation):
    N, C, G = 3, 12, 4
    layer = gn.GroupNorm(G, C, eps=1e-3, channels_last=channels_last, activation=activation, dtype=dtype)
    assert layer.weight.dtype == dtype
    w, b = rng.params(C, dtype)
    layer.weight[...] = w
    layer.bias[...] = b
    shape = make_shape(N, C, (5, 6), channels_last)
    x = rng.x(shape, dtype)
    dy = rng.normal(shape, dtype)
    tol = dict(rtol=1e-4, atol=3e-5) if dtype == F32 else dict(rtol=1e-10, atol=1e-10)

    y = layer(x)
    ref, _, _ = ref_forward(x, G, w, b, eps=1e-3, channels_last=channels_last, activation=activation)
    assert y.dtype == dtype and y.shape == shape
    assert_close(y, ref, what="layer y", **tol)

    gx = layer.backward(dy)
    rx, rw, rb = ref_backward(dy, x, G, w, b, eps=1e-3, channels_last=channels_last, activation=activation)
    assert_close(gx, rx, what="layer grad_x", **tol)
    assert layer.weight_grad.dtype == dtype and layer.bias_grad.dtype == dtype
    assert_close(layer.weight_grad, rw, rtol=tol["rtol"], atol=tol["atol"] * 30, what="weight_grad")
    assert_close(layer.bias_grad, rb, rtol=tol["rtol"], atol=tol["atol"] * 30, what="bias_grad")

    # a second backward ADDS into the gradients
    dy2 = rng.normal(shape, dtype)
    layer.backward(dy2)
    _, rw2, rb2 = ref_backward(dy2, x, G, w, b, eps=1e-3, channels_last=channels_last, activation=activation)
    assert_close(layer.weight_grad, rw + rw2, rtol=tol["rtol"], atol=tol["atol"] * 60, what="accumulated wg")
    assert_close(layer.bias_grad, rb + rb2, rtol=tol["rtol"], atol=tol["atol"] * 60, what="accumulated bg")

    layer.zero_grad()
    np.testing.assert_array_equal(layer.weight_grad, np.zeros(C))
    np.testing.assert_array_equal(layer.bias_grad, np.zeros(C))
    assert layer.weight_grad.shape == (C,) and layer.weight_grad.dtype == dtype


def test_backward_uses_latest_input(gn, rng):
    layer = gn.GroupNorm(2, 4, dtype=np.float64)
    layer.weight[...] = [1.0, 2.0, -1.0, 0.5]
    x1 = rng.x((2, 4, 6), np.float64)
    x2 = rng.x((3, 4, 5), np.float64, loc=4.0)
    layer(x1)
    layer(x2)
    dy = rng.normal(x2.shape, np.float64)
    gx = layer.backward(dy)
    rx, rw, rb = ref_backward(dy, x2, 2, layer.weight, layer.bias)
    assert_close(gx, rx, rtol=1e-10, atol=1e-10)
    assert_close(layer.weight_grad, rw, rtol=1e-10, atol=1e-10)


def test_layer_matches_torch_module(gn, rng, torch):
    C, G = 16, 4
    tm = torch.nn.GroupNorm(G, C, eps=1e-5).double()
    with torch.no_grad():
        tm.weight.copy_(torch.from_numpy(rng.normal((C,), np.float64)))
        tm.bias.copy_(torch.from_numpy(rng.normal((C,), np.float64)))
    layer = gn.GroupNorm(G, C, dtype=np.float64)
    layer.load_state_dict({"weight": tm.weight.detach().numpy(), "bias": tm.bias.detach().numpy()})
    x = rng.x((2, C, 7, 3), np.float64)
    dy = rng.normal(x.shape, np.float64)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = tm(xt)
    (yt * torch.from_numpy(dy)).sum().backward()
    y = layer(x)
    gx = layer.backward(dy)
    assert_close(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10, what="y")
    assert_close(gx, xt.grad.numpy(), rtol=1e-10, atol=1e-10, what="grad_x")
    assert_close(layer.weight_grad, tm.weight.grad.numpy(), rtol=1e-10, atol=1e-10, what="weight_grad")
    assert_close(layer.bias_grad, tm.bias.grad.numpy(), rtol=1e-10, atol=1e-10, what="bias_grad")


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_affine_false(gn, rng, channels_last):
    layer = gn.GroupNorm(3, 6, affine=False, channels_last=channels_last)
    assert layer.weight is None and layer.bias is None
    x = rng.x(make_shape(2, 6, (4, 4), channels_last), np.float32)
    dy = rng.normal(x.shape, np.float32)
    y = layer(x)
    ref, _, _ = ref_forward(x, 3, channels_last=channels_last)
    assert_close(y, ref, rtol=2e-5, atol=2e-5)
    gx = layer.backward(dy)
    rx, _, _ = ref_backward(dy, x, 3, channels_last=channels_last)
    assert_close(gx, rx, rtol=1e-4, atol=3e-5)


def test_state_dict_roundtrip_and_copies(gn, rng):
    C = 8
    layer = gn.GroupNorm(2, C)
    sd = layer.state_dict()
    assert set(sd) == {"weight", "bias"}
    np.testing.assert_array_equal(sd["weight"], np.ones(C))
    np.testing.assert_array_equal(sd["bias"], np.zeros(C))
    # state_dict returns copies: mutating them leaves the layer alone
    sd["weight"][...] = 5.0
    np.testing.assert_array_equal(layer.weight, np.ones(C))

    w, b = rng.params(C)
    src = {"weight": w.copy(), "bias": b.copy()}
    layer.load_state_dict(src)
    np.testing.assert_array_equal(layer.weight, w)
    np.testing.assert_array_equal(layer.bias, b)
    # load_state_dict copies: mutating the source afterwards leaves the layer alone
    src["weight"][...] = -7.0
    src["bias"][...] = 9.0
    np.testing.assert_array_equal(layer.weight, w)
    np.testing.assert_array_equal(layer.bias, b)

    # the loaded parameters are used by the forward
    x = rng.x((2, C, 5), np.float32)
    ref, _, _ = ref_forward(x, 2, w, b)
    assert_close(layer(x), ref, rtol=2e-5, atol=2e-5)

    # and round-trip into another layer
    other = gn.GroupNorm(2, C)
    other.load_state_dict(layer.state_dict())
    np.testing.assert_array_equal(other.weight, w)
    np.testing.assert_array_equal(other.bias, b)
    assert other.weight.dtype == F32


def test_load_state_dict_float64_into_float32(gn):
    layer = gn.GroupNorm(1, 3)
    layer.load_state_dict({"weight": np.array([1.5, 2.0, 3.0]), "bias": np.array([0.25, 0.0, -1.0])})
    assert layer.weight.dtype == F32
    np.testing.assert_array_equal(layer.weight, np.array([1.5, 2.0, 3.0], np.float32))
    np.testing.assert_array_equal(layer.bias, np.array([0.25, 0.0, -1.0], np.float32))


def test_weight_update_is_seen(gn, rng):
    """weight/bias are live NumPy arrays: an in-place optimizer step changes the next forward."""
    layer = gn.GroupNorm(2, 4)
    x = rng.x((2, 4, 6), np.float32)
    y0 = layer(x)
    layer.weight *= 2.0
    layer.bias += 1.0
    y1 = layer(x)
    assert_close(y1, 2.0 * y0 + 1.0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["f16", "bf16"])
def test_half_layer(gn, rng, dtype):
    layer = gn.GroupNorm(2, 8, dtype=np.float32, activation="silu")
    w, b = rng.params(8)
    layer.load_state_dict({"weight": w, "bias": b})
    x = rng.x((2, 8, 5, 5), dtype)
    dy = rng.normal(x.shape, dtype)
    y = layer(x)
    assert y.dtype == dtype
    ref, _, _ = ref_forward(x, 2, w, b, activation="silu")
    assert_close(y, ref, rtol=2e-2, atol=1e-2)
    gx = layer.backward(dy)
    assert gx.dtype == dtype
    rx, rw, rb = ref_backward(dy, x, 2, w, b, activation="silu")
    assert_close(gx, rx, rtol=3e-2, atol=3e-2 * np.abs(rx).max())
    assert layer.weight_grad.dtype == F32
    assert_close(layer.weight_grad, rw, rtol=1e-3, atol=1e-3 * np.abs(rw).max())
    assert_close(layer.bias_grad, rb, rtol=1e-3, atol=1e-3 * np.abs(rb).max())
