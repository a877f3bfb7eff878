"""ExecuTorch integration: lower a model to a ``.pte`` whose GroupNorm runs on groupnorm's kernels.

Needs ``executorch`` (``pip install "groupnorm[executorch]"``) and the kernel library, built with
the package::

    CMAKE_ARGS="-DGROUPNORM_EXECUTORCH=ON" pip install .

The kernel library (``kernel_library_path()``, a shared library linked against the installed
ExecuTorch runtime) registers two kernels with ExecuTorch's operator registry when loaded:

- ``groupnorm::group_norm.out``, the out variant of ``torch.ops.groupnorm.group_norm`` (the
  operator of :mod:`groupnorm.torch`, with its fused SiLU and residual ``skip``), in every dtype
  and dim order; a program that calls it needs this library;
- ``aten::native_group_norm.out`` for float32, float16 and bfloat16 inputs of rank 3 to 5, in
  both dim orders (contiguous and channels-last), registered as *specialized* kernels (ExecuTorch's
  kernel keys), so that a program lowered from a stock ``torch.nn.GroupNorm`` runs its GroupNorm
  here once the library is loaded; any other key falls back to the runtime's own kernel.

Typical use::

    import torch, groupnorm.executorch as gne
    pte = gne.lower(model, (x,))                  # bytes of a .pte (swap_group_norm=True by default)
    gne.load_kernels()                            # registers the kernels in this process
    y, = gne.run(pte, (x,))                       # through executorch.runtime
    gne.calls()                                   # how many GroupNorm calls our kernels served

Loading the library into the Python process registers into the same registry the
``executorch.runtime`` module uses: the registry lives in ``libexecutorch.so``, which the Python
extension and this library both link, so one copy serves both. A C++ program links the library
(or ``dlopen``\\s it) the same way; ``examples/executorch`` is such a runner.
"""
import copy
import ctypes
import operator
import os
from typing import Dict, List, Optional, Sequence, Union

import torch

from . import torch as _gnt  # defines torch.ops.groupnorm.group_norm

__all__ = ["kernel_library_path", "packaged_library_path", "load_kernels", "lower", "run", "calls", "failures", "last_error", "reset_calls",
           "registered_operators", "fuse_silu", "set_num_threads", "get_num_threads", "pool_items", "LIBRARY_NAME"]

LIBRARY_NAME = "libgroupnorm_executorch.so"
CUSTOM_OP = "groupnorm::group_norm.out"
NATIVE_OP = "aten::native_group_norm.out"

# --------------------------------------------------------------------------- the out variant

# ExecuTorch runs out variants (the program plans every output's memory); to_executorch finds
# this overload by its schema: the functional one plus one out tensor per result.
_LIB = torch.library.Library("groupnorm", "FRAGMENT")
_LIB.define("group_norm.out(Tensor x, SymInt num_groups, Tensor? weight, Tensor? bias, float eps, str activation, "
            "Tensor? skip, *, Tensor(a!) y, Tensor(b!) mean, Tensor(c!) rstd, Tensor(d!) sum_out) "
            "-> (Tensor(a!), Tensor(b!), Tensor(c!), Tensor(d!))")


def _group_norm_out(x, num_groups, weight, bias, eps, activation, skip, *, y, mean, rstd, sum_out):
    res = torch.ops.groupnorm.group_norm.default(x, num_groups, weight, bias, eps, activation, skip)
    for out, r in zip((y, mean, rstd, sum_out), res):
        if out.shape != r.shape:
            out.resize_(r.shape)
        out.copy_(r)
    return y, mean, rstd, sum_out


_LIB.impl("group_norm.out", _group_norm_out, "CompositeExplicitAutograd")

# --------------------------------------------------------------------------- the kernel library

_HANDLE = None
_ENV = "GROUPNORM_EXECUTORCH_LIBRARY"
_HOW_TO_BUILD = ('build it with the package: CMAKE_ARGS="-DGROUPNORM_EXECUTORCH=ON" pip install . '
                 '(needs: pip install executorch), or with CMake: cmake -S . -B build -DGROUPNORM_EXECUTORCH=ON '
                 '&& cmake --build build --target groupnorm_executorch, and point the environment variable '
                 f'{_ENV} at build/cpp/integrations/executorch/{LIBRARY_NAME}')


def packaged_library_path() -> str:
    """Where a package built with the kernel library holds it (the file may not exist)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


def kernel_library_path() -> str:
    """Path of the ExecuTorch kernel library (``libgroupnorm_executorch.so``).

    The environment variable ``GROUPNORM_EXECUTORCH_LIBRARY`` overrides the default, the copy
    installed inside this package by ``CMAKE_ARGS="-DGROUPNORM_EXECUTORCH=ON" pip install .``.
    Raises ``FileNotFoundError`` (saying how to build it) when there is none.
    """
    env = os.environ.get(_ENV)
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"{_ENV}={env!r} is not a file; {_HOW_TO_BUILD}")
        return os.path.abspath(env)
    path = packaged_library_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the groupnorm ExecuTorch kernel library is not built ({path} does not exist); "
                                f"{_HOW_TO_BUILD}")
    return path


def load_kernels(path: Optional[str] = None) -> ctypes.CDLL:
    """Load the kernel library into this process, registering its kernels with ExecuTorch.

    Loads ``executorch.runtime`` first (so that the runtime library, and with it the operator
    registry, is the one the Python runtime uses), then the library (``path``, default
    ``kernel_library_path()``). Loading again is a no-op. Returns the ``ctypes`` handle.
    """
    global _HANDLE
    if _HANDLE is not None:
        return _HANDLE
    import executorch.runtime  # noqa: F401  (maps libexecutorch.so: the registry)
    lib = ctypes.CDLL(path or kernel_library_path(), mode=ctypes.RTLD_GLOBAL)
    for name, res in (("calls", ctypes.c_int64), ("failures", ctypes.c_int64), ("registered", ctypes.c_int),
                      ("pool_items", ctypes.c_int64),
                      ("threads", ctypes.c_int), ("uses_threadpool", ctypes.c_int),
                      ("last_error", ctypes.c_char_p)):
        getattr(lib, "groupnorm_executorch_" + name).restype = res
    lib.groupnorm_executorch_calls.argtypes = [ctypes.c_int]
    lib.groupnorm_executorch_failures.argtypes = [ctypes.c_int]
    if lib.groupnorm_executorch_registered() <= 0:
        raise RuntimeError(f"{path or kernel_library_path()} registered no kernels with ExecuTorch (another copy "
                           "of the library, loaded from another path, may have registered them first)")
    _HANDLE = lib
    return lib


def calls() -> Dict[str, int]:
    """Successful calls served by our kernels since loading (or ``reset_calls()``), per operator."""
    lib = load_kernels()
    return {CUSTOM_OP: lib.groupnorm_executorch_calls(0), NATIVE_OP: lib.groupnorm_executorch_calls(1)}


def failures() -> Dict[str, int]:
    """Calls of our kernels that failed with an argument error, per operator."""
    lib = load_kernels()
    return {CUSTOM_OP: lib.groupnorm_executorch_failures(0), NATIVE_OP: lib.groupnorm_executorch_failures(1)}


def last_error() -> str:
    """The message of the last failed call of our kernels on this thread ('' if none)."""
    return load_kernels().groupnorm_executorch_last_error().decode()


def reset_calls() -> None:
    load_kernels().groupnorm_executorch_reset_calls()


def registered_operators() -> List[str]:
    """Names of the operators in ExecuTorch's registry (as the Python runtime sees it)."""
    from executorch.extension.pybindings import _C
    return sorted(_C._get_operator_names())


def set_num_threads(n: int) -> None:
    """Resize ExecuTorch's thread pool (which our kernels and the runtime's own kernels use)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    from executorch.extension.pybindings import _C
    _C._unsafe_reset_threadpool(n)


def pool_items() -> int:
    """Parallel-for items our kernels ran on ExecuTorch's pool threads (not the calling thread) since loading."""
    return int(load_kernels().groupnorm_executorch_pool_items())


def get_num_threads() -> int:
    """Threads of ExecuTorch's thread pool (the threads our kernels run on)."""
    return int(load_kernels().groupnorm_executorch_threads())


# --------------------------------------------------------------------------- lowering


def _swap(model):
    model = copy.deepcopy(model)
    _gnt.replace_group_norm(model)
    return model


def fuse_silu(exported: "torch.export.ExportedProgram") -> int:
    """Fold ``silu(group_norm(...)[0])`` into one ``groupnorm::group_norm`` call with ``activation="silu"``.

    Works in place on an exported program whose GroupNorm calls are ``torch.ops.groupnorm.group_norm``
    (a model swapped with :func:`groupnorm.torch.replace_group_norm`); returns how many were fused.
    """
    gm = exported.graph_module
    op = torch.ops.groupnorm.group_norm.default
    silus = (torch.ops.aten.silu.default, torch.ops.aten.silu_.default)
    fused = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not op:
            continue
        args = list(node.args)
        if len(args) < 6 or args[5] != "none":
            continue
        ys = [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]
        if len(ys) != 1 or len(ys[0].users) != 1:
            continue
        act = next(iter(ys[0].users))
        if act.op != "call_function" or act.target not in silus:
            continue
        args[5] = "silu"
        node.args = tuple(args)
        act.replace_all_uses_with(ys[0])
        gm.graph.erase_node(act)
        fused += 1
    if fused:
        gm.graph.lint()
        gm.recompile()
    return fused


def lower(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], path: Optional[str] = None, *,
          swap_group_norm: bool = True, fuse_activation: bool = True, xnnpack: bool = False,
          dynamic_shapes=None) -> bytes:
    """Export ``model``, lower it to an ExecuTorch program, and return the ``.pte`` bytes.

    Args:
        model: a ``torch.nn.Module`` (not modified).
        example_inputs: a tuple of example tensors; their memory format (contiguous or
            ``channels_last``) is the program's.
        path: when given, the ``.pte`` is also written there.
        swap_group_norm: replace every ``torch.nn.GroupNorm`` by :class:`groupnorm.torch.GroupNorm`
            (on a copy of the model) so the program calls ``groupnorm::group_norm.out``; it then
            needs our kernel library to run. False keeps stock GroupNorm as
            ``aten::native_group_norm.out``, which runs anywhere and on our kernels where the
            library is loaded.
        fuse_activation: with ``swap_group_norm``, fold a SiLU that follows a GroupNorm into the
            kernel (:func:`fuse_silu`).
        xnnpack: delegate what XNNPACK supports (convolutions, linear layers, ...) to the XNNPACK
            backend, as an edge deployment would; GroupNorm stays on the CPU kernels.
        dynamic_shapes: passed to ``torch.export.export``.
    """
    from executorch.exir import EdgeCompileConfig, to_edge

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    example_inputs = tuple(example_inputs)
    if swap_group_norm:
        model = _swap(model)
    model = model.eval()
    exported = torch.export.export(model, example_inputs, dynamic_shapes=dynamic_shapes)
    if swap_group_norm and fuse_activation:
        fuse_silu(exported)
    config = EdgeCompileConfig(_check_ir_validity=False)
    if xnnpack:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()], compile_config=config)
    else:
        edge = to_edge(exported, compile_config=config)
    program = edge.to_executorch()
    data = program.buffer
    if path is not None:
        with open(path, "wb") as f:
            f.write(data)
    return data


def run(program: Union[bytes, str, os.PathLike], inputs: Sequence[torch.Tensor], method: str = "forward") -> list:
    """Run a ``.pte`` (bytes or a path) through ``executorch.runtime`` with our kernels loaded.

    Returns the method's outputs (a list of tensors). A program that fails (bad input shapes,
    an unsupported dtype, ...) raises the runtime's error; our kernels' message is in
    :func:`last_error` and in the runtime's log.
    """
    from executorch.runtime import Runtime

    load_kernels()
    rt = Runtime.get()
    if isinstance(program, (bytes, bytearray)):
        prog = rt.load_program(bytes(program))
    else:
        prog = rt.load_program(os.fspath(program))
    return prog.load_method(method).execute(tuple(inputs))
