"""groupnorm.torch against PyTorch's own GroupNorm (float64 autograd as the reference)."""
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import groupnorm  # noqa: E402
import groupnorm.torch as gnt  # noqa: E402

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# error bound on outputs of magnitude ~1, relative to the float64 reference
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.2e-2}
SPATIAL = {0: (), 1: (7,), 2: (5, 6), 3: (3, 4, 5)}


def _seed(request):
    """A fresh seed per run, printed (pytest shows it when the test fails)."""
    seed = int.from_bytes(os.urandom(4), "little") >> 1
    print(f"{request.node.name}: seed {seed}")
    return seed


def make_x(shape, dtype, channels_last, gen, scale=1.0, offset=0.0):
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + offset).to(dtype)
    if channels_last:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        elif x.dim() == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        else:  # (N, C, L): C the fastest dim
            x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    return x


def is_channels_last(t):
    return t.dim() >= 3 and t.movedim(1, -1).is_contiguous() and not t.is_contiguous()


def reference(x, num_groups, weight, bias, eps, activation=None, skip=None, grad_y=None):
    """float64 torch autograd of the same inputs: (y, grad_x, grad_weight, grad_bias)."""
    s = x if skip is None else x + skip  # rounded to x's dtype, as the op does
    xd = s.detach().double().requires_grad_()
    wd = None if weight is None else weight.detach().double().requires_grad_()
    bd = None if bias is None else bias.detach().double().requires_grad_()
    y = F.group_norm(xd, num_groups, wd, bd, eps)
    if activation == "silu":
        y = F.silu(y)
    if grad_y is None:
        return y.detach(), None, None, None
    y.backward(grad_y.double())
    return (y.detach(), xd.grad, None if wd is None else wd.grad, None if bd is None else bd.grad)


def assert_close(got, ref, tol, name):
    assert got is not None and ref is not None, name
    got = got.detach().double()
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    scale = max(1.0, ref.abs().max().item())
    err = (got - ref).abs().max().item() / scale
    assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nsp,channels_last", [(0, False), (1, False), (1, True), (2, False), (2, True),
                                                (3, False), (3, True)], ids=lambda v: str(v))
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_forward_backward_match_torch(request, dtype, nsp, channels_last, affine):
    gen = torch.Generator().manual_seed(_seed(request))
    n, c, g = 3, 12, 4
    shape = (n, c) + SPATIAL[nsp]
    x = make_x(shape, dtype, channels_last, gen, scale=2.0, offset=0.5)
    pdtype = dtype if dtype != torch.float16 else torch.float32  # mixed parameters for one half type
    w = torch.randn(c, generator=gen, dtype=torch.float64).to(pdtype) if affine else None
    b = torch.randn(c, generator=gen, dtype=torch.float64).to(pdtype) if affine else None
    xg = x.clone().requires_grad_()
    wg = None if w is None else w.clone().requires_grad_()
    bg = None if b is None else b.clone().requires_grad_()
    y = gnt.group_norm(xg, g, wg, bg, 1e-5)
    assert y.dtype == dtype and y.shape == x.shape
    assert is_channels_last(y) == is_channels_last(x)
    gy = make_x(shape, dtype, False, gen)
    y.backward(gy)
    ry, rgx, rgw, rgb = reference(x, g, w, b, 1e-5, grad_y=gy)
    tol = TOL[dtype]
    assert_close(y, ry, tol, "y")
    assert_close(xg.grad, rgx, tol * 4, "grad_x")
    assert xg.grad.dtype == dtype
    if affine:
        # parameter gradients sum N*S terms: bound relative to their size
        assert_close(wg.grad, rgw, tol * 8, "grad_weight")
        assert_close(bg.grad, rgb, tol * 8, "grad_bias")
        assert wg.grad.dtype == pdtype and bg.grad.dtype == pdtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_silu_and_skip(request, dtype, channels_last):
    gen = torch.Generator().manual_seed(_seed(request))
    shape = (2, 16, 6, 5)
    x = make_x(shape, dtype, channels_last, gen)
    skip = make_x(shape, dtype, not channels_last, gen)  # the other layout: converted, still right
    w = torch.randn(16, generator=gen).to(dtype)
    b = torch.randn(16, generator=gen).to(dtype)
    xg, sg, wg, bg = (t.clone().requires_grad_() for t in (x, skip, w, b))
    y = gnt.group_norm(xg, 8, wg, bg, 1e-5, activation="silu", skip=sg)
    assert is_channels_last(y) == channels_last
    gy = make_x(shape, dtype, False, gen)
    y.backward(gy)
    ry, rgx, rgw, rgb = reference(x, 8, w, b, 1e-5, activation="silu", skip=skip, grad_y=gy)
    tol = TOL[dtype]
    assert_close(y, ry, tol, "y")
    assert_close(xg.grad, rgx, tol * 4, "grad_x")
    assert_close(sg.grad, rgx, tol * 4, "grad_skip")
    assert_close(wg.grad, rgw, tol * 8, "grad_weight")
    assert_close(bg.grad, rgb, tol * 8, "grad_bias")


def test_large_mean_channels_last_is_exact(request):
    """float32 data with mean 1e4: within float32 rounding of the float64 reference."""
    gen = torch.Generator().manual_seed(_seed(request))
    x = make_x((2, 32, 16, 16), torch.float32, True, gen, scale=1.0, offset=1e4)
    y = gnt.group_norm(x, 8)
    ry, *_ = reference(x, 8, None, None, 1e-5)
    assert_close(y, ry, 2e-3, "y")  # inputs themselves carry 1e4 * 6e-8 = 6e-4 rounding


def test_other_strides(request):
    gen = torch.Generator().manual_seed(_seed(request))
    base = torch.randn(2, 24, 9, 10, generator=gen)
    for x in (base[:, ::2], base[..., ::3], base.transpose(2, 3), base.contiguous(memory_format=torch.channels_last)[:, 4:]):
        y = gnt.group_norm(x, 4)
        ry, *_ = reference(x, 4, None, None, 1e-5)
        assert_close(y, ry, 3e-5, "y")


def test_every_element_written(request, monkeypatch):
    """Outputs pre-filled with NaN: every element is written."""
    import groupnorm._torch_ops as ops  # where the operators allocate their outputs
    real = ops._new_output

    def poisoned(x):
        y = real(x)
        y.fill_(float("nan"))
        return y

    monkeypatch.setattr(ops, "_new_output", poisoned)
    gen = torch.Generator().manual_seed(_seed(request))
    for cl in (False, True):
        x = make_x((2, 8, 5, 7), torch.float32, cl, gen).requires_grad_()
        w = torch.randn(8, generator=gen, requires_grad=True)
        y = gnt.group_norm(x, 2, w, None, skip=torch.randn(x.shape, generator=gen))
        gy = torch.randn(y.shape, generator=gen)
        y.backward(gy)
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_no_copy_of_contiguous_input(request, monkeypatch, channels_last):
    """The kernels read x and write y through views of the tensors themselves."""
    import groupnorm.functional as gf
    seen = {}
    real = gf.forward_checked  # what the operator calls with the arrays

    def spy(x, groups, weight, bias, eps, channels_last, act, num_threads, **kw):
        seen["x"] = x.__array_interface__["data"][0]
        seen["out"] = kw["out"].__array_interface__["data"][0]
        seen["threads"] = num_threads
        return real(x, groups, weight, bias, eps, channels_last, act, num_threads, **kw)

    monkeypatch.setattr(gf, "forward_checked", spy)
    gen = torch.Generator().manual_seed(_seed(request))
    x = make_x((2, 16, 8, 8), torch.float32, channels_last, gen)
    y = gnt.group_norm(x, 4)
    assert seen["x"] == x.data_ptr() and seen["out"] == y.data_ptr()
    assert seen["threads"] == torch.get_num_threads()


def test_thread_count_follows_torch_and_is_bitwise_stable(request):
    gen = torch.Generator().manual_seed(_seed(request))
    x = make_x((2, 64, 40, 40), torch.float32, True, gen).requires_grad_()
    w = torch.randn(64, generator=gen, requires_grad=True)
    gy = torch.randn(x.shape, generator=gen)
    before = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            x.grad = w.grad = None
            y = gnt.group_norm(x, 16, w, None)
            y.backward(gy)
            outs.append((y.detach().clone(), x.grad.clone(), w.grad.clone()))
    finally:
        torch.set_num_threads(before)
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            assert torch.equal(a, b)


def test_gradcheck_float64(request):
    gen = torch.Generator().manual_seed(_seed(request))
    for cl, act in ((False, None), (True, "silu")):
        x = make_x((2, 6, 3, 4), torch.float64, cl, gen).requires_grad_()
        w = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
        b = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
        s = make_x((2, 6, 3, 4), torch.float64, cl, gen).requires_grad_()
        assert torch.autograd.gradcheck(lambda x, w, b, s: gnt.group_norm(x, 3, w, b, 1e-5, activation=act, skip=s),
                                        (x, w, b, s))
        assert torch.autograd.gradcheck(lambda x: gnt.group_norm(x, 2), (x,))


def test_opcheck(request):
    gen = torch.Generator().manual_seed(_seed(request))
    op = torch.ops.groupnorm.group_norm.default
    x = torch.randn(2, 8, 4, 3, generator=gen, requires_grad=True)
    xcl = torch.randn(2, 8, 4, 3, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(8, generator=gen, requires_grad=True)
    b = torch.randn(8, generator=gen, requires_grad=True)
    for args in ((x, 4, w, b, 1e-5, "none", None), (xcl, 2, None, None, 1e-3, "silu", None),
                 (x, 4, w, None, 1e-5, "none", torch.randn(2, 8, 4, 3, generator=gen, requires_grad=True)),
                 (torch.randn(3, 8, generator=gen, dtype=torch.float64), 8, None, None, 0.1, "none", None)):
        torch.library.opcheck(op, args)
    gy = torch.randn(2, 8, 4, 3, generator=gen)
    _, mean, rstd, _ = op(x.detach(), 4, w.detach(), b.detach(), 1e-5, "none", None)
    torch.library.opcheck(torch.ops.groupnorm.group_norm_backward.default,
                          (gy, x.detach(), mean, rstd, 4, w.detach(), b.detach(), "none"))


class _Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.norm = gnt.GroupNorm(4, 16, activation="silu")

    def forward(self, x):
        return self.norm(self.conv(x)) * 2.0


def test_compile_fullgraph_matches_eager(request):
    """One compilation (forward and backward graphs), compared with eager."""
    torch.manual_seed(_seed(request))
    m = _Small()
    with torch.no_grad():
        m.norm.weight.uniform_(0.5, 1.5)
        m.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    xe = x.clone().requires_grad_()
    eager = m(xe)
    eager.square().sum().backward()
    grads = [xe.grad, m.norm.weight.grad.clone(), m.conv.weight.grad.clone()]
    m.zero_grad()
    compiled = torch.compile(m, fullgraph=True)
    xc = x.clone().requires_grad_()
    got = compiled(xc)
    got.square().sum().backward()
    assert torch.allclose(got, eager, rtol=0, atol=1e-5)
    for a, b in zip((xc.grad, m.norm.weight.grad, m.conv.weight.grad), grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_export():
    m = _Small().eval()
    x = torch.randn(2, 8, 10, 10)
    ep = torch.export.export(m, (x,))
    assert "groupnorm.group_norm" in str(ep.graph)
    assert torch.allclose(ep.module()(x), m(x), rtol=0, atol=0)


def _stock_model(seed):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.GroupNorm(4, 16), torch.nn.SiLU(),
                            torch.nn.Sequential(torch.nn.Conv3d(16, 8, 1), torch.nn.GroupNorm(2, 8, affine=False)))
    with torch.no_grad():
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.uniform_(-0.5, 0.5)
    return m


def test_replace_group_norm_and_state_dict(request):
    seed = _seed(request)
    stock = _stock_model(seed)
    m = _stock_model(seed)
    w_before = m[1].weight
    assert gnt.replace_group_norm(m) == 2
    assert type(m[1]) is gnt.GroupNorm and type(m[3][1]) is gnt.GroupNorm
    assert m[1].weight is w_before  # the same parameters (optimizers keep working)
    assert gnt.replace_group_norm(m) == 0
    x = torch.randn(2, 3, 9, 9)
    fwd = lambda mod, t: mod[3](mod[2](mod[1](mod[0](t))).unsqueeze(-1))  # noqa: E731
    assert torch.allclose(fwd(m, x), fwd(stock, x), atol=1e-5, rtol=0)
    sd = m.state_dict()
    assert list(sd) == list(stock.state_dict())
    # ours -> a fresh stock model, and back
    fresh = _stock_model(seed + 1)
    fresh.load_state_dict(sd)
    for k, v in stock.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    mine = gnt.GroupNorm(4, 16)
    mine.load_state_dict(stock[1].state_dict())
    assert torch.equal(mine.weight, stock[1].weight) and torch.equal(mine.bias, stock[1].bias)
    assert isinstance(mine, torch.nn.GroupNorm)
    # a GroupNorm at the root is swapped too
    root = torch.nn.GroupNorm(2, 4)
    assert gnt.replace_group_norm(root) == 1 and type(root) is gnt.GroupNorm


def test_module_dtype_device_and_repr():
    m = gnt.GroupNorm(2, 8, eps=1e-3, affine=True, device="cpu", dtype=torch.bfloat16, activation="silu")
    assert m.weight.dtype == torch.bfloat16 and m.num_groups == 2 and m.eps == 1e-3
    assert "activation='silu'" in repr(m)
    x = torch.randn(2, 8, 3).to(torch.bfloat16)
    ry, *_ = reference(x, 2, m.weight, m.bias, 1e-3, activation="silu")
    assert_close(m(x), ry, TOL[torch.bfloat16], "y")


def test_errors_name_the_argument():
    x = torch.randn(2, 8, 4)
    cases = [
        (lambda: gnt.group_norm(np.ones((2, 8, 4), np.float32), 2), TypeError, "x must be a torch.Tensor"),
        (lambda: gnt.group_norm(x.to(torch.int32), 2), TypeError, "x must be float64"),
        (lambda: gnt.group_norm(torch.randn(8), 2), ValueError, "at least 2 dims"),
        (lambda: gnt.group_norm(x, 3), ValueError, "3"),
        (lambda: gnt.group_norm(x, 2.5), TypeError, "num_groups"),
        (lambda: gnt.group_norm(x, 2, torch.ones(7)), ValueError, "weight must have shape (8,)"),
        (lambda: gnt.group_norm(x, 2, None, torch.ones(8, dtype=torch.int64)), TypeError, "bias must be a float"),
        (lambda: gnt.group_norm(x, 2, torch.ones(8, device="meta")), ValueError, "weight is on meta"),
        (lambda: gnt.group_norm(x, 2, skip=torch.randn(2, 8, 5)), ValueError, "skip must have shape"),
        (lambda: gnt.group_norm(x, 2, skip=x.double()), TypeError, "skip must have dtype"),
        (lambda: gnt.group_norm(x, 2, activation="relu"), ValueError, "relu"),
        (lambda: gnt.group_norm(x, 2, eps="big"), TypeError, "eps"),
        (lambda: gnt.GroupNorm(3, 8), ValueError, "3"),
        (lambda: gnt.GroupNorm(2, 8, activation="gelu"), ValueError, "gelu"),
        (lambda: gnt.replace_group_norm("model"), TypeError, "model must be a torch.nn.Module"),
    ]
    for fn, exc, text in cases:
        with pytest.raises(exc) as info:
            fn()
        assert text in str(info.value), (text, str(info.value))


@pytest.mark.skipif(groupnorm._core.HAS_CUDA, reason="this build has CUDA")
def test_cuda_tensors_need_a_cuda_build():
    """A CUDA tensor (a fake one: this torch may have no CUDA) is refused, naming x, before any work."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 8, 4, device="cuda")
        with pytest.raises(ValueError, match="x is on a CUDA device, but this groupnorm build runs on the CPU only"):
            gnt.group_norm(x, 2)
        with pytest.raises(ValueError, match="x is on a CUDA device"):
            gnt.GroupNorm(2, 8)(x)
        xc = torch.empty(2, 8, 4)
        with pytest.raises(ValueError, match="weight is on cuda"):
            gnt.group_norm(xc, 2, torch.empty(8, device="cuda"))


def test_meta_tensors_give_shapes():
    x = torch.empty(2, 8, 4, 4, device="meta").contiguous(memory_format=torch.channels_last)
    y = gnt.group_norm(x, 2)
    assert y.device.type == "meta" and y.shape == x.shape and is_channels_last(y)


# --------------------------------------------------------------------------- the NumPy-level API with DLPack


def test_numpy_api_takes_tensors_without_copy(request, monkeypatch):
    gen = torch.Generator().manual_seed(_seed(request))
    t = torch.randn(2, 8, 5, 5, generator=gen)
    a = groupnorm._checks.as_input(t)
    assert a.__array_interface__["data"][0] == t.data_ptr()
    y = groupnorm.group_norm(t, 4)
    assert isinstance(y, np.ndarray)
    ry, *_ = reference(t, 4, None, None, 1e-5)
    assert np.abs(y - ry.numpy()).max() < 3e-5
    tb = t.to(torch.bfloat16)
    ab = groupnorm._checks.as_input(tb)
    assert ab.dtype == groupnorm.bfloat16 and ab.__array_interface__["data"][0] == tb.data_ptr()
    yb = groupnorm.group_norm(tb, 4)
    ry, *_ = reference(tb, 4, None, None, 1e-5)
    assert np.abs(yb.astype(np.float64) - ry.numpy()).max() < 3e-2 * max(1, np.abs(ry.numpy()).max())
    # channels-last data through DLPack: strided view, normalized correctly
    tcl = t.contiguous(memory_format=torch.channels_last)
    ycl = groupnorm.group_norm(tcl.permute(0, 2, 3, 1), 4, channels_last=True)
    assert np.abs(np.moveaxis(ycl, -1, 1) - y).max() < 1e-5


def test_numpy_api_refuses_tensors_that_require_grad():
    with pytest.raises(TypeError, match="requires grad"):
        groupnorm.group_norm(torch.randn(2, 4, 3, requires_grad=True), 2)


def test_import_groupnorm_does_not_import_torch():
    code = "import sys, groupnorm; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_openmp_runtime_with_torch():
    """groupnorm and torch share one OpenMP runtime (one thread pool), in either import order."""
    for first, second in (("groupnorm.torch", "torch"), ("torch", "groupnorm.torch")):
        code = (f"import {first}, {second}, groupnorm.torch as g; r = g.openmp_runtimes(); "
                "assert len(r) == 1, r; print(r[0])")
        out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], check=True,
                             capture_output=True, text=True).stdout
        assert "gomp" in out


def test_calls_run_on_torchs_threads():
    """One pool of threads: the first parallel call (ours) starts it, torch's ops and ours reuse it."""
    code = """
import os, torch, torch.nn.functional as F, groupnorm.torch as gnt
torch.set_num_threads(3)
x = torch.randn(2, 64, 96, 96)
count = lambda: len(os.listdir('/proc/self/task'))
start = count()
gnt.group_norm(x, 8)
pool = count()
F.group_norm(x, 8)
torch.mm(torch.randn(512, 512), torch.randn(512, 512))
after_torch = count()
gnt.group_norm(x.contiguous(memory_format=torch.channels_last), 8)
after_ours = count()
print(start, pool, after_torch, after_ours)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    start, pool, after_torch, after_ours = map(int, out.split())
    assert pool >= start + 2  # our call started the pool (2 threads besides the caller): the count sees it
    assert after_torch == pool and after_ours == pool, (start, pool, after_torch, after_ours)


def test_layer_names_a_channel_mismatch():
    layer = gnt.GroupNorm(4, 8)
    with pytest.raises(ValueError, match=r"expects 8 channels .* with 16"):
        layer(torch.randn(2, 16, 4, 4))


def test_double_backward_says_it_is_not_supported():
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    y = gnt.group_norm(x, 4, w, None)
    (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(ValueError, match="double backward"):
        gx.sum().backward()
    # first-order gradients with create_graph=False are unaffected
    x2 = x.detach().requires_grad_()
    gnt.group_norm(x2, 4, w, None).sum().backward()
    ref = x.detach().requires_grad_()
    F.group_norm(ref, 4, w, None).sum().backward()
    torch.testing.assert_close(x2.grad, ref.grad)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last, "channels_last_3d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_takes_in_place_ops_in_training(fmt, dtype):
    """Models apply in-place ops to GroupNorm's output (ReLU(inplace=True) in MONAI's SegResNet):
    the output must not be a view, in any memory format, and the gradient through an in-place op
    is the one through the same op out of place (and, in float32, torch's)."""
    shape = (2, 8, 5, 6, 3) if fmt == "channels_last_3d" else (2, 8, 5, 6)
    memory_format = torch.channels_last_3d if fmt == "channels_last_3d" else fmt
    gen = torch.Generator().manual_seed(7)
    x0 = torch.randn(shape, generator=gen).to(dtype=dtype, memory_format=memory_format)
    gy = torch.randn(shape, generator=gen)
    grads = []
    for f, relu in ((gnt.group_norm, torch.relu_), (gnt.group_norm, torch.relu), (F.group_norm, torch.relu_)):
        x = x0.clone().requires_grad_()
        y = relu(f(x, 4))
        (y.float() * gy).sum().backward()
        grads.append(x.grad.float())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    if dtype == torch.float32:
        torch.testing.assert_close(grads[0], grads[2], rtol=1e-4, atol=1e-4)
