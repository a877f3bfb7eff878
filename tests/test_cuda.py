"""GPU arrays (__cuda_array_interface__) and the CUDA backend.

Without a CUDA build or a GPU these tests skip, except the check that a CPU-only
build rejects GPU arrays with a clear error. With both (a CUDA build and a
PyTorch CUDA device), results must match the CPU backend within float32
rounding and be bitwise repeatable.
"""
import numpy as np
import pytest

import groupnorm as gn
from groupnorm import _core


class FakeGpuArray:
    """Looks like a device array to groupnorm (never dereferenced by these tests)."""

    def __init__(self, shape):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (0, False), "version": 3,
                                         "strides": None}


@pytest.mark.skipif(_core.HAS_CUDA, reason="this build has the CUDA backend")
def test_cpu_only_build_rejects_gpu_arrays():
    with pytest.raises(TypeError, match="CPU only.*GROUPNORM_CUDA=ON"):
        gn.group_norm(FakeGpuArray((2, 8, 4)), 2)
    with pytest.raises(TypeError, match="CPU only"):
        gn.group_norm_backward(FakeGpuArray((2, 8, 4)), FakeGpuArray((2, 8, 4)), None, None, 2)


def test_mixed_devices_are_rejected():
    x = np.ones((2, 8, 4), np.float32)
    with pytest.raises(TypeError, match="GPU array"):
        gn.group_norm_backward(FakeGpuArray((2, 8, 4)), x, np.zeros((2, 2), np.float32),
                               np.ones((2, 2), np.float32), 2)


def _cuda_torch():
    torch = pytest.importorskip("torch")
    if not (_core.HAS_CUDA and torch.cuda.is_available()):
        pytest.skip("needs a CUDA build of groupnorm and a CUDA device")
    return torch


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_gpu_matches_cpu(channels_last, dtype, activation):
    torch = _cuda_torch()
    rng = np.random.default_rng(0)
    shape = (2, 64, 32, 64) if channels_last else (2, 64, 32, 32)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    c = shape[-1] if channels_last else shape[1]
    w = rng.standard_normal(c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    y_cpu, m_cpu, r_cpu = gn.group_norm(x, 8, w, b, channels_last=channels_last, activation=activation,
                                        return_stats=True)
    xt, wt, bt = (torch.from_numpy(a).cuda() for a in (x, w, b))
    yt = torch.empty_like(xt)
    gn.group_norm(xt, 8, wt, bt, channels_last=channels_last, activation=activation, out=yt)
    torch.cuda.synchronize()
    tol = 2e-5 if dtype == "float32" else 2e-3
    np.testing.assert_allclose(yt.cpu().numpy().astype(np.float64), y_cpu.astype(np.float64), atol=tol, rtol=tol)
    yt2 = torch.empty_like(xt)
    gn.group_norm(xt, 8, wt, bt, channels_last=channels_last, activation=activation, out=yt2)
    assert torch.equal(yt, yt2)  # bitwise repeatable


def test_gpu_backward_matches_cpu():
    torch = _cuda_torch()
    pytest.importorskip("cupy")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 32, 16, 16)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(32).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    _, m, r = gn.group_norm(x, 4, w, b, return_stats=True)
    gx, gw, gb = gn.group_norm_backward(gy, x, m, r, 4, w, b)
    t = [torch.from_numpy(a).cuda() for a in (gy, x, m, r, w, b)]
    gx_d, gw_d, gb_d = gn.group_norm_backward(t[0], t[1], t[2], t[3], 4, t[4], t[5])
    np.testing.assert_allclose(np.asarray(gx_d.get()), gx, atol=1e-4)
    np.testing.assert_allclose(np.asarray(gw_d.get()), gw, atol=1e-3)
    np.testing.assert_allclose(np.asarray(gb_d.get()), gb, atol=1e-3)
