"""GPU arrays (__cuda_array_interface__) and the CUDA backend.

The argument checks run everywhere, with made-up device arrays (FakeGpuArray)
and the CUDA entry points replaced by recorders: every bad argument is refused
before any CUDA call. The numerical tests need a CUDA build and a PyTorch CUDA
device (they skip with "no GPU" otherwise): results must match the CPU backend
within float32 rounding and be bitwise repeatable.
"""
import numpy as np
import pytest

import groupnorm as gn
from groupnorm import _core


class FakeGpuArray:
    """Looks like a device array to groupnorm: a __cuda_array_interface__ with a
    made-up pointer (never dereferenced: these tests fail before any CUDA call,
    or run against a build without a device)."""

    def __init__(self, shape, typestr="<f4", strides=None, readonly=False, ptr=0x7F0000000000, device=None,
                 stream=None):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": typestr, "data": (ptr, readonly),
                                         "version": 3, "strides": strides, "stream": stream}
        if device is not None:
            self.device = type("Device", (), {"id": device})()


def test_cpu_only_build_rejects_gpu_arrays(monkeypatch):
    monkeypatch.setattr(_core, "HAS_CUDA", False)
    with pytest.raises(TypeError, match="CPU only.*GROUPNORM_CUDA=ON"):
        gn.group_norm(FakeGpuArray((2, 8, 4)), 2)
    with pytest.raises(TypeError, match="CPU only"):
        gn.group_norm_backward(FakeGpuArray((2, 8, 4)), FakeGpuArray((2, 8, 4)), None, None, 2)


def test_mixed_devices_are_rejected():
    x = np.ones((2, 8, 4), np.float32)
    with pytest.raises(TypeError, match="GPU array"):
        gn.group_norm_backward(FakeGpuArray((2, 8, 4)), x, np.zeros((2, 2), np.float32),
                               np.ones((2, 2), np.float32), 2)


# ----------------------------------------------------------------- GPU argument checks, before any CUDA call
# The core entry points and the output allocator are replaced by recorders: a bad
# argument must raise ValueError/TypeError naming it without reaching either. In
# .ci/cuda.sh these run against a CUDA build on a machine without a device.

@pytest.fixture
def cuda_calls(monkeypatch):
    calls = []

    def record(name):
        def f(**kwargs):  # the binding is called with keyword arguments only
            calls.append((name, kwargs))
        return f

    monkeypatch.setattr(_core, "HAS_CUDA", True)
    monkeypatch.setattr(_core, "forward_cuda", record("forward_cuda"))
    monkeypatch.setattr(_core, "backward_cuda", record("backward_cuda"))

    def no_alloc(shape, dtype, like):
        calls.append(("alloc", (shape, dtype)))
        return FakeGpuArray(shape, np.dtype(dtype).str, ptr=0x7F0000100000)

    monkeypatch.setattr(gn._cuda, "_empty", no_alloc)
    return calls


SHAPE = (2, 8, 3, 4)
F = FakeGpuArray
FORWARD_BAD = [
    # (keyword arguments, exception, text the message names)
    ({"x": F((8,))}, ValueError, "x"),
    ({"x": F(SHAPE, "<i4")}, TypeError, "x"),
    ({"x": F(SHAPE, strides=(4, 8, 32, 96))}, ValueError, "C-contiguous"),
    ({"x": F(SHAPE, ptr=0)}, ValueError, "x"),
    ({"x": F(SHAPE, ptr=-5)}, ValueError, "x"),
    ({"x": F(SHAPE, stream="s")}, ValueError, "stream"),
    ({"num_groups": 3}, ValueError, "divisible"),
    ({"weight": F((7,))}, ValueError, "weight"),
    ({"weight": np.ones(8, np.float32)}, TypeError, "weight"),
    ({"bias": F((8,), "<f8")}, TypeError, "bias"),
    ({"weight": F((8,)), "bias": F((8,), "<f2")}, TypeError, "share one dtype"),
    ({"out": F(SHAPE, readonly=True)}, ValueError, "out"),
    ({"out": F((2, 8, 3, 5))}, ValueError, "out"),
    ({"out": F(SHAPE, "<f8")}, TypeError, "out"),
    ({"out": np.empty(SHAPE, np.float32)}, TypeError, "out"),
    ({"out": F(SHAPE, strides=(4, 8, 32, 96))}, ValueError, "out"),
    ({"skip": F((2, 8, 3, 5))}, ValueError, "skip"),
    ({"skip": F(SHAPE, "<f2")}, TypeError, "skip"),
    ({"skip": F(SHAPE), "sum_out": F(SHAPE, readonly=True)}, ValueError, "sum_out"),
    ({"skip": F(SHAPE), "sum_out": F((2, 8, 12))}, ValueError, "sum_out"),
    ({"skip": F(SHAPE), "sum_out": F(SHAPE, "<f8")}, TypeError, "sum_out"),
    ({"skip": F(SHAPE), "skip_bias": F((4,))}, ValueError, "skip_bias"),
    ({"sum_out": F(SHAPE)}, ValueError, "skip"),
    ({"x": F(SHAPE, device=0), "out": F(SHAPE, device=1)}, ValueError, "device"),
    ({"x": F(SHAPE, device=1), "weight": F((8,), device=0)}, ValueError, "device"),
    ({"eps": float("nan")}, ValueError, "eps"),
    ({"activation": "relu"}, ValueError, "activation"),
]


@pytest.mark.parametrize("kw,exc,text", FORWARD_BAD, ids=[str(i) for i in range(len(FORWARD_BAD))])
def test_gpu_forward_bad_arguments_fail_before_cuda(cuda_calls, kw, exc, text):
    args = {"x": F(SHAPE), "num_groups": 2, **kw}
    with pytest.raises(exc, match=text):
        gn.group_norm(**args, return_stats=True)
    assert cuda_calls == [], "reached CUDA (or allocated) before rejecting the arguments"


def _stats(n=2, g=2, typestr="<f4", **kw):
    return F((n, g), typestr, **kw), F((n, g), typestr, **kw)


BACKWARD_BAD = [
    ({"grad_y": F((2, 8, 3, 5))}, ValueError, "grad_y"),
    ({"grad_y": F(SHAPE, "<f8")}, TypeError, "grad_y"),
    ({"grad_y": np.ones(SHAPE, np.float32)}, TypeError, "grad_y"),
    ({"mean": F((2, 4))}, ValueError, "mean"),
    ({"rstd": F((2, 2), "<f8")}, TypeError, "rstd"),
    ({"mean": np.zeros((2, 2), np.float32)}, TypeError, "mean"),
    ({"rstd": F((2, 2), strides=(4, 8))}, ValueError, "rstd"),
    ({"num_groups": 3}, ValueError, "divisible"),
    ({"weight": F((4,))}, ValueError, "weight"),
    ({"weight": F((8,)), "bias": F((8,), "<f8")}, TypeError, "share one dtype"),
    ({"out": F(SHAPE, readonly=True)}, ValueError, "out"),
    ({"out": F(SHAPE, "<f2")}, TypeError, "out"),
    ({"out": F((2, 8, 12))}, ValueError, "out"),
    ({"x": F(SHAPE, device=0), "mean": F((2, 2), device=1)}, ValueError, "device"),
    ({"activation": 3}, TypeError, "activation"),
]


@pytest.mark.parametrize("kw,exc,text", BACKWARD_BAD, ids=[str(i) for i in range(len(BACKWARD_BAD))])
def test_gpu_backward_bad_arguments_fail_before_cuda(cuda_calls, kw, exc, text):
    m, r = _stats()
    args = {"grad_y": F(SHAPE), "x": F(SHAPE), "mean": m, "rstd": r, "num_groups": 2, "weight": F((8,)),
            "bias": F((8,)), **kw}
    with pytest.raises(exc, match=text):
        gn.group_norm_backward(**args)
    assert cuda_calls == [], "reached CUDA (or allocated) before rejecting the arguments"


def test_gpu_valid_arguments_reach_the_core(cuda_calls):
    """The positive control of the tests above: valid arrays do reach the core, with their geometry."""
    x, y = F(SHAPE, ptr=0x7F0000001000, stream=7), F(SHAPE, ptr=0x7F0000002000)
    w, b = F((8,), ptr=0x7F0000003000), F((8,), ptr=0x7F0000004000)
    assert gn.group_norm(x, 2, w, b, out=y) is y
    (name, args), = cuda_calls
    assert name == "forward_cuda"
    assert {k: args[k] for k in ("x", "n", "c", "s", "groups", "weight", "bias")} == dict(
        x=0x7F0000001000, n=2, c=8, s=12, groups=2, weight=0x7F0000003000, bias=0x7F0000004000)
    assert args["y"] == 0x7F0000002000 and args["stream"] == 7  # y, and x's stream
    cuda_calls.clear()
    gn.group_norm(F((2, 3, 4, 8)), 4, channels_last=True, return_stats=True)
    assert [c[0] for c in cuda_calls] == ["alloc", "alloc", "alloc", "forward_cuda"]
    assert tuple(cuda_calls[-1][1][k] for k in "ncs") == (2, 8, 12)
    cuda_calls.clear()
    m, r = _stats()
    gn.group_norm_backward(F(SHAPE), F(SHAPE), m, r, 2, w, b, out=F(SHAPE))
    assert [c[0] for c in cuda_calls] == ["alloc", "alloc", "backward_cuda"]  # grad_weight, grad_bias


def test_gpu_valid_arguments_reach_cuda_unmocked():
    """Unmocked: a CUDA build without a device (as on CI) passes valid arrays on to
    the CUDA runtime, which reports the missing device as a RuntimeError; a CPU-only
    build names the rebuild. (With a device, the made-up pointers must not reach a
    kernel: the numerical tests below cover that path with real arrays.)"""
    x, y = F(SHAPE), F(SHAPE, ptr=0x7F0000002000)
    if not _core.HAS_CUDA:
        with pytest.raises(TypeError, match="CPU only"):
            gn.group_norm(x, 2, out=y)
    elif not _core.cuda_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            gn.group_norm(x, 2, out=y)


# ----------------------------------------------------------------- on a GPU


def _cuda_torch():
    import torch
    if not (_core.HAS_CUDA and torch.cuda.is_available()):
        pytest.skip("no GPU (needs a CUDA build of groupnorm and a CUDA device)")
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
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 32, 16, 16)).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(32).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    _, m, r = gn.group_norm(x, 4, w, b, return_stats=True)
    gx, gw, gb = gn.group_norm_backward(gy, x, m, r, 4, w, b)
    t = [torch.from_numpy(a).cuda() for a in (gy, x, m, r, w, b)]
    try:
        import cupy  # noqa: F401  (GPU outputs are CuPy arrays)
    except ImportError:
        with pytest.raises(TypeError, match="cupy"):
            gn.group_norm_backward(t[0], t[1], t[2], t[3], 4, t[4], t[5])
        return
    gx_d, gw_d, gb_d = gn.group_norm_backward(t[0], t[1], t[2], t[3], 4, t[4], t[5])
    np.testing.assert_allclose(np.asarray(gx_d.get()), gx, atol=1e-4)
    np.testing.assert_allclose(np.asarray(gw_d.get()), gw, atol=1e-3)
    np.testing.assert_allclose(np.asarray(gb_d.get()), gb, atol=1e-3)


def test_gpu_threads_share_a_stream_safely():
    """Host threads on one stream, with problems that need the cached workspace:
    bitwise the results of one thread."""
    import concurrent.futures
    torch = _cuda_torch()
    rng = np.random.default_rng(2)
    xs = [torch.from_numpy(rng.standard_normal((1, 64, 256, 256 + 32 * i)).astype(np.float32)).cuda()
          for i in range(4)]
    ref = []
    for x in xs:
        y = torch.empty_like(x)
        gn.group_norm(x, 8, out=y)
        ref.append(y)
    torch.cuda.synchronize()
    outs = [[torch.empty_like(x) for x in xs] for _ in range(8)]

    def work(k):
        for x, y in zip(xs, outs[k]):
            gn.group_norm(x, 8, out=y)

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        list(ex.map(work, range(8)))
    torch.cuda.synchronize()
    for o in outs:
        for a, b in zip(o, ref):
            assert torch.equal(a, b)


def test_gpu_arrays_on_another_device_are_refused():
    torch = _cuda_torch()
    if torch.cuda.device_count() < 2:
        pytest.skip("no GPU: needs two devices")
    x = torch.ones((2, 8, 4), device="cuda:0")
    y = torch.empty((2, 8, 4), device="cuda:1")
    with pytest.raises(ValueError, match="device"):
        gn.group_norm(x, 2, out=y)
