"""ExecuTorch: programs lowered from PyTorch run their GroupNorm on groupnorm's kernels.

Needs the `executorch` package and the kernel library, built with the package
(``CMAKE_ARGS="-DGROUPNORM_EXECUTORCH=ON" pip install .``); without either these tests fail,
they never skip. References: eager PyTorch (the network, in both memory formats) and a
float64 NumPy GroupNorm (conftest.ref_forward) for the half-precision programs.
"""
import operator
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import groupnorm
import groupnorm.executorch as gne  # needs executorch: fails here when it is missing
import engines
from conftest import ref_forward

CUSTOM, NATIVE = gne.CUSTOM_OP, gne.NATIVE_OP


@pytest.fixture(scope="module", autouse=True)
def kernels():
    engines.ensure("GROUPNORM_EXECUTORCH_LIBRARY", gne.packaged_library_path(), gne.LIBRARY_NAME)
    return gne.load_kernels()  # fails (FileNotFoundError naming the build command) when not built


class Net(torch.nn.Module):
    """conv -> GroupNorm -> SiLU, twice, plus a residual."""

    def __init__(self, c=32, groups=8):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c, c, 3, padding=1)
        self.gn1 = torch.nn.GroupNorm(groups, c)
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1)
        self.gn2 = torch.nn.GroupNorm(groups, c, eps=1e-6)
        with torch.no_grad():  # affine parameters that are not the identity
            for gn in (self.gn1, self.gn2):
                gn.weight.uniform_(0.5, 1.5)
                gn.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        h = F.silu(self.gn1(self.conv1(x)))
        h = F.silu(self.gn2(self.conv2(h)))
        return x + h


class GN(torch.nn.Module):
    def __init__(self, groups, channels, affine=True, eps=1e-5):
        super().__init__()
        self.gn = torch.nn.GroupNorm(groups, channels, eps=eps, affine=affine)
        if affine:
            with torch.no_grad():
                self.gn.weight.uniform_(0.5, 1.5)
                self.gn.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.gn(x)


def _fmt(x, channels_last):
    if not channels_last:
        return x.contiguous()
    return x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)


def _run_counted(pte, inputs):
    gne.reset_calls()
    out = gne.run(pte, inputs)
    return out, gne.calls()


def test_kernels_are_in_the_runtime_registry():
    names = gne.registered_operators()
    assert CUSTOM in names and NATIVE in names
    # our specialized native_group_norm keys: 3 dtypes x ranks 3-5 x 2 dim orders x (affine or not),
    # plus the custom op's kernel
    assert gne.load_kernels().groupnorm_executorch_registered() == 3 * 3 * 2 * 2 + 1


@pytest.mark.parametrize("swap", [True, False], ids=["groupnorm_op", "stock_native_group_norm"])
def test_etdump_profile_names_our_kernel(tmp_path, swap):
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    x = torch.randn(1, 64, 8, 8)
    gne.lower(Net(64, 32).eval(), (x,), str(tmp_path / "net.pte"), swap_group_norm=swap)
    program = Runtime.get().load_program(str(tmp_path / "net.pte"), enable_etdump=True)
    program.load_method("forward").execute((x,))
    program.write_etdump_result_to_file(str(tmp_path / "run.etdp"), str(tmp_path / "debug.bin"))
    names = [e.name for b in Inspector(etdump_path=str(tmp_path / "run.etdp")).event_blocks for e in b.events]
    ours = "groupnorm::group_norm.out" if swap else "groupnorm::native_group_norm.out"
    assert names.count(ours) == 2
    assert "native_call_native_group_norm.out" not in names  # the portable kernel did not run


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("swap", [True, False], ids=["groupnorm_op", "stock_native_group_norm"])
def test_net_matches_eager(channels_last, swap):
    model = Net().eval()
    x = _fmt(torch.randn(2, 32, 12, 10), channels_last)
    with torch.no_grad():
        ref = model(x)
    pte = gne.lower(model, (x,), swap_group_norm=swap)
    (y,), served = _run_counted(pte, (x,))
    assert served == ({CUSTOM: 2, NATIVE: 0} if swap else {CUSTOM: 0, NATIVE: 2})
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_net_with_xnnpack_convolutions(channels_last):
    model = Net().eval()
    x = _fmt(torch.randn(1, 32, 9, 11), channels_last)
    with torch.no_grad():
        ref = model(x)
    (y,), served = _run_counted(gne.lower(model, (x,), xnnpack=True), (x,))
    assert served[CUSTOM] == 2
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)  # XNNPACK's convolutions round differently


def test_silu_is_fused_into_the_kernel():
    model = gne._swap(Net().eval())
    x = torch.randn(1, 32, 6, 6)
    ep = torch.export.export(model, (x,))
    silus = lambda: sum(n.target is torch.ops.aten.silu.default for n in ep.graph.nodes)  # noqa: E731
    assert silus() == 2
    assert gne.fuse_silu(ep) == 2
    assert silus() == 0
    acts = [n.args[5] for n in ep.graph.nodes if n.target is torch.ops.groupnorm.group_norm.default]
    assert acts == ["silu", "silu"]
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), Net.forward(model, x), rtol=1e-5, atol=2e-5)


class SkipNet(torch.nn.Module):
    """groupnorm.torch's fused forms: GroupNorm(h + skip) with SiLU, in one call."""

    def __init__(self, c=32, groups=8):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)
        self.weight = torch.nn.Parameter(torch.rand(c) + 0.5)
        self.bias = torch.nn.Parameter(torch.rand(c) - 0.5)
        self.groups = groups

    def forward(self, x):
        import groupnorm.torch as gnt
        return gnt.group_norm(self.conv(x), self.groups, self.weight, self.bias, eps=1e-6, activation="silu", skip=x)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_silu_and_skip_forms(channels_last):
    model = SkipNet().eval()
    x = _fmt(torch.randn(2, 32, 7, 9), channels_last)
    with torch.no_grad():
        ref = F.silu(F.group_norm(model.conv(x) + x, 8, model.weight, model.bias, eps=1e-6))
    (y,), served = _run_counted(gne.lower(model, (x,)), (x,))
    assert served[CUSTOM] == 1
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("shape,groups,channels_last,affine", [
    ((2, 12, 33), 3, False, True),
    ((2, 12, 33), 4, False, False),
    ((3, 64, 5, 7), 32, True, True),
    ((1, 16, 3, 4, 5), 4, False, True),
    ((2, 16, 3, 4, 5), 8, False, False),  # ExecuTorch 1.5 has no 5-d channels-last dim order
])
@pytest.mark.parametrize("swap", [True, False], ids=["groupnorm_op", "stock_native_group_norm"])
def test_shapes_and_layouts(shape, groups, channels_last, affine, swap):
    model = GN(groups, shape[1], affine=affine).eval()
    x = _fmt(torch.randn(*shape) * 3 + 2, channels_last)
    with torch.no_grad():
        ref = model(x)
    (y,), served = _run_counted(gne.lower(model, (x,), swap_group_norm=swap), (x,))
    assert served[CUSTOM if swap else NATIVE] == 1
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("swap", [True, False], ids=["groupnorm_op", "stock_native_group_norm"])
def test_half_precision(dtype, channels_last, swap):
    model = GN(8, 32).eval().to(dtype)
    x = _fmt((torch.randn(2, 32, 9, 7) * 4 + 10).to(dtype), channels_last)
    (y,), served = _run_counted(gne.lower(model, (x,), swap_group_norm=swap), (x,))
    assert served[CUSTOM if swap else NATIVE] == 1
    assert y.dtype == dtype
    w, b = model.gn.weight.detach().float().numpy(), model.gn.bias.detach().float().numpy()
    ref = ref_forward(x.float().numpy(), 8, w, b, eps=1e-5)[0]
    tol = 1e-2 if dtype == torch.float16 else 4e-2  # one rounding of the output
    np.testing.assert_allclose(y.float().numpy(), ref, rtol=tol, atol=tol)


def test_float64_program():
    model = GN(8, 32).eval().double()
    x = torch.randn(2, 32, 5, 6, dtype=torch.float64) * 2 + 1
    with torch.no_grad():
        ref = model(x)
    (y,), served = _run_counted(gne.lower(model, (x,)), (x,))
    assert served[CUSTOM] == 1 and y.dtype == torch.float64
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_bitwise_equal_to_numpy_api(threads):
    gne.set_num_threads(threads)
    try:
        assert gne.get_num_threads() == threads
        model = GN(32, 128).eval()
        x = torch.randn(2, 128, 24, 24) + 5
        pte = gne.lower(model, (x,))
        (y,), served = _run_counted(pte, (x,))
        assert served[CUSTOM] == 1
        want = groupnorm.group_norm(x.numpy(), 32, model.gn.weight.detach().numpy(),
                                    model.gn.bias.detach().numpy(), 1e-5, num_threads=threads)
        assert np.array_equal(y.numpy(), want)
        if threads > 1:
            _assert_pool_threads_take_part()
    finally:
        gne.set_num_threads(2)


def _assert_pool_threads_take_part():
    """The work runs on ExecuTorch's own pool threads, not only the caller's.

    ExecuTorch's pool lets the calling thread steal items, so on a busy machine one call may run all
    of them before a pool thread wakes. Items here are a few milliseconds each (a pool thread wakes in
    microseconds), and up to 50 calls are made: a pool that never runs an item fails; a slow wake-up
    does not.
    """
    model = GN(32, 128).eval()
    x = torch.randn(4, 128, 96, 96) + 5
    pte = gne.lower(model, (x,))
    before = gne.pool_items()
    for _ in range(50):
        gne.run(pte, (x,))
        if gne.pool_items() > before:
            return
    raise AssertionError("no item of 50 calls ran on an ExecuTorch pool thread")


# --------------------------------------------------------------------------- bad programs


def _edit_and_lower(model, x, edit):
    """Export, let `edit` change the graph (making the program invalid), lower to a .pte."""
    from executorch.exir import EdgeCompileConfig, to_edge
    ep = torch.export.export(gne._swap(model).eval(), (x,))
    edit(ep.graph_module.graph)
    ep.graph_module.recompile()
    return to_edge(ep, compile_config=EdgeCompileConfig(_check_ir_validity=False)).to_executorch().buffer


def _gn_nodes(graph):
    return [n for n in graph.nodes if n.target is torch.ops.groupnorm.group_norm.default]


def test_bad_groups_is_a_clear_error():
    def edit(graph):
        node = _gn_nodes(graph)[0]
        node.args = (node.args[0], 5) + tuple(node.args[2:])  # 32 channels, 5 groups

    x = torch.randn(1, 32, 4, 4)
    pte = _edit_and_lower(GN(8, 32), x, edit)
    gne.reset_calls()
    with pytest.raises(Exception):
        gne.run(pte, (x,))
    assert gne.failures()[CUSTOM] == 1
    assert "num_channels 32 is not divisible by num_groups 5" in gne.last_error()


def test_unsupported_dtype_is_a_clear_error():
    def edit(graph):
        node = _gn_nodes(graph)[0]
        with graph.inserting_before(node):
            xi = graph.call_function(torch.ops.aten._to_copy.default, (node.args[0],), {"dtype": torch.int32})
        node.args = (xi,) + tuple(node.args[1:2]) + (None, None) + tuple(node.args[4:])

    x = torch.randn(1, 16, 4, 4)
    pte = _edit_and_lower(GN(4, 16), x, edit)
    gne.reset_calls()
    with pytest.raises(Exception):
        gne.run(pte, (x,))
    assert gne.failures()[CUSTOM] == 1
    assert "x dtype int32 is not supported" in gne.last_error()


def test_wrong_input_shape_is_refused():
    x = torch.randn(1, 16, 4, 4)
    pte = gne.lower(GN(4, 16), (x,))
    gne.reset_calls()
    with pytest.raises(Exception):
        gne.run(pte, (torch.randn(1, 16, 5, 4),))
    assert gne.calls()[CUSTOM] == 0


def test_kernel_library_path_names_the_build_command(monkeypatch, tmp_path):
    monkeypatch.setenv("GROUPNORM_EXECUTORCH_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.raises(FileNotFoundError, match="GROUPNORM_EXECUTORCH=ON"):
        gne.kernel_library_path()
    monkeypatch.delenv("GROUPNORM_EXECUTORCH_LIBRARY")
    if os.path.isfile(gne.packaged_library_path()):  # built with the package: the default
        assert gne.kernel_library_path() == gne.packaged_library_path()
    else:
        with pytest.raises(FileNotFoundError, match="GROUPNORM_EXECUTORCH=ON"):
            gne.kernel_library_path()


def test_set_num_threads_checks_its_argument():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must be a positive int"):
            gne.set_num_threads(bad)


def test_lower_checks_its_model():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        gne.lower(lambda x: x, (torch.randn(1, 4, 2, 2),))


# --------------------------------------------------------------------------- the C++ runner


@pytest.fixture(scope="module")
def cpp_runner(tmp_path_factory):
    """examples/executorch built against the installed ExecuTorch (cmake; about 20 s)."""
    import os
    import shutil
    import subprocess

    import executorch

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    build = tmp_path_factory.mktemp("et-runner")
    et_dir = os.path.join(list(executorch.__path__)[0], "lib", "cmake", "executorch")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    for cmd in (["cmake", "-S", os.path.join(root, "examples", "executorch"), "-B", str(build), *gen,
                 "-DCMAKE_BUILD_TYPE=Release", f"-Dexecutorch_DIR={et_dir}"],
                ["cmake", "--build", str(build)]):
        p = subprocess.run(cmd, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return str(build / "groupnorm_et_runner")


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_cpp_runner_runs_stock_programs_on_our_kernels(cpp_runner, tmp_path, channels_last):
    import subprocess

    model = Net().eval()
    x = _fmt(torch.randn(1, 32, 8, 8), channels_last)
    pte = tmp_path / "net.pte"
    gne.lower(model, (x,), str(pte), swap_group_norm=False)
    p = subprocess.run([cpp_runner, str(pte), "--kernels", gne.kernel_library_path(), "--iters", "3"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "aten::native_group_norm.out 6 calls (0 failed)" in p.stdout  # 2 GroupNorms x 3 runs
    assert "registered: aten::native_group_norm.out [v1/6;0,2,3,1|6;0|6;0|6;0,2,3,1|6;0,1|6;0,1]" in p.stdout
    # without our library: the runtime's portable kernel, which takes contiguous tensors only
    p = subprocess.run([cpp_runner, str(pte), "--iters", "1"], capture_output=True, text=True)
    assert (p.returncode != 0) == channels_last, p.stdout + p.stderr
