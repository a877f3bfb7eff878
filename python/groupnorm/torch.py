"""PyTorch integration: a custom operator, autograd, a drop-in ``nn.GroupNorm``.

Importing this module needs torch (``pip install "groupnorm[torch]"``);
``import groupnorm`` alone never does.

    >>> import torch, groupnorm.torch as gnt
    >>> x = torch.randn(2, 64, 32, 32).to(memory_format=torch.channels_last)
    >>> y = gnt.group_norm(x, 32)                  # channels-last in, channels-last out
    >>> model = ...; gnt.replace_group_norm(model) # swaps every torch.nn.GroupNorm

The operators ``torch.ops.groupnorm.group_norm`` and
``torch.ops.groupnorm.group_norm_backward`` are registered with
``torch.library`` (with fake implementations, so ``torch.compile(fullgraph=True)``
and ``torch.export`` trace through them, and with autograd). Tensors reach the
C++ kernels without copies when they are contiguous in either memory format;
outputs are tensors in the input's memory format.

Threads: each call runs on ``torch.get_num_threads()`` threads, and on PyTorch's
own intra-op threads: PyTorch's wheel bundles its libgomp under the soname
``libgomp.so.1``, the one groupnorm's extension links, so the process maps a
single OpenMP runtime whichever of the two is imported first, and both
libraries' parallel regions use one pool of threads (no second pool spinning
on the same cores). Importing this module therefore turns groupnorm's own
worker pool off (``groupnorm.set_worker_pool(False)``) for the process, so
that every call, NumPy-level ones too, runs in those shared OpenMP regions.
``openmp_runtimes()`` lists the runtimes mapped; if a build ever brings a
second one, importing this module warns.
"""
import os
import re
import warnings
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

from . import _core
from . import _checks as checks
from . import distributed, functional, split

__all__ = ["group_norm", "GroupNorm", "replace_group_norm", "SyncGroupNorm", "openmp_runtimes"]


def openmp_runtimes() -> List[str]:
    """Paths of the OpenMP runtime libraries mapped in this process (Linux; [] elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if len(line.split()) >= 6}
    except OSError:
        return []
    libs = {os.path.realpath(p) for p in paths if re.search(r"/lib(gomp|iomp5|omp)[-.][^/]*so", p)}
    return sorted(libs)


# one set of threads for torch and groupnorm: our parallel work in the OpenMP
# regions of the runtime we share with torch, not on a worker pool of our own
_core.set_worker_pool(False)

if len(openmp_runtimes()) > 1:  # pragma: no cover - depends on how torch was built
    warnings.warn(f"two OpenMP runtimes are loaded ({openmp_runtimes()}): groupnorm's and PyTorch's threads "
                  "may compete for the cores; OMP_WAIT_POLICY=passive limits the loss", RuntimeWarning)

_NP_DTYPES = {
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.float16: np.dtype(np.float16),
    torch.bfloat16: checks.bfloat16,
}
_TORCH_DTYPES = {d: t for t, d in _NP_DTYPES.items()}
_EMPTY = (0,)


# --------------------------------------------------------------------------- tensors <-> arrays


def _channels_last(x: Any) -> Any:
    """True when x is laid out channels-last: (N, C, *spatial) with C the fastest dim.

    A tensor contiguous in both senses (C == 1 or no spatial extent) counts as
    channels-first.
    """
    if x.dim() < 3 or x.is_contiguous():
        return False
    if x.movedim(1, -1).is_contiguous():
        return True
    # other strides: the layout whose channel stride is the smallest, as torch's
    # suggest_memory_format does for 4-d and 5-d tensors
    st = x.stride()
    return all(st[1] < st[i] for i in range(2, x.dim()) if x.shape[i] > 1) and x.shape[1] > 1


def _canonical(x: Any, channels_last: Any) -> Any:
    """x contiguous in the given layout (a copy only when it is not already)."""
    if channels_last:
        return x if x.movedim(1, -1).is_contiguous() else x.movedim(1, -1).contiguous().movedim(-1, 1)
    return x.contiguous()


def _array(t: Any, channels_last: Any = False) -> Any:
    """A NumPy view of tensor t ((N, *spatial, C) when channels_last), no copy."""
    if channels_last:
        t = t.movedim(1, -1)
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(checks.bfloat16)
    return t.numpy()


def _empty_like_layout(x: Any) -> Any:
    """A new tensor like x in x's layout (strides preserved when x is dense)."""
    return torch.empty_like(x, memory_format=torch.preserve_format)


def _new_output(x: Any) -> Any:
    """A new tensor like canonical x (contiguous in its layout) that a kernel will write.

    CPU outputs come from groupnorm's output-buffer cache (see
    ``groupnorm.set_buffer_cache_limit``) and are handed to torch without a
    copy: when torch frees the tensor the memory goes back to the cache, and
    the next call of a similar size writes into pages already mapped instead
    of faulting in fresh ones (on a (1, 128, 256, 256) float32 call the fresh
    pages cost as much as the normalization itself).
    """
    if x.device.type != "cpu":
        return _empty_like_layout(x)
    cl = _channels_last(x)
    shape = tuple(x.movedim(1, -1).shape) if cl else tuple(x.shape)
    a = checks.empty_aligned(shape, _NP_DTYPES[x.dtype])
    if x.dtype == torch.bfloat16:
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a)
    return t.movedim(-1, 1) if cl else t


def _stats_dtype(x: Any) -> torch.dtype:
    """The torch dtype of mean/rstd for x (the core's rule, through checks.stats_dtype); float32 for
    a dtype the kernels do not take (a traced graph's fake tensors may have one: the rule's 'otherwise')."""
    return _TORCH_DTYPES[checks.stats_dtype(_NP_DTYPES.get(x.dtype, np.dtype(np.float32)))]


def _param_array(p: Any) -> Any:
    if p is None:
        return None
    return _array(p.contiguous())


def _act(activation: Any) -> Any:
    return None if activation == "none" else activation


# --------------------------------------------------------------------------- the operators


@torch.library.custom_op("groupnorm::group_norm", mutates_args=(), device_types=("cpu", "cuda"))
def _group_norm_op(x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                   eps: float, activation: str, skip: Optional[torch.Tensor]
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd, s): s = x + skip when skip is given (else an empty tensor)."""
    cl = _channels_last(x)
    x = _canonical(x, cl)
    y = _new_output(x)
    sd = _stats_dtype(x)
    mean = x.new_empty((x.shape[0], num_groups), dtype=sd)
    rstd = x.new_empty((x.shape[0], num_groups), dtype=sd)
    s = _new_output(x) if skip is not None else x.new_empty(_EMPTY)
    if skip is not None:
        skip = _canonical(skip, cl)
    if x.is_cuda:
        _forward_cuda(x, num_groups, weight, bias, eps, activation, skip, cl, y, mean, rstd, s)
        return y, mean, rstd, s
    # the scalars were checked by group_norm (_check); the core checks the problem again when it runs
    _, m, r = functional.forward_checked(_array(x, cl), num_groups, _param_array(weight), _param_array(bias), eps,
                                         cl, checks.activation(_act(activation)), checks.threads(torch.get_num_threads()),
                                         out=_array(y, cl), return_stats=True,
                                         skip=None if skip is None else _array(skip, cl),
                                         sum_out=None if skip is None else _array(s, cl))
    mean.numpy()[...] = m
    rstd.numpy()[...] = r
    return y, mean, rstd, s


@_group_norm_op.register_fake
def _(x: Any, num_groups: Any, weight: Any, bias: Any, eps: Any, activation: Any, skip: Any) -> Any:
    y = _empty_like_layout(_canonical(x, _channels_last(x)))
    sd = _stats_dtype(x)
    mean = x.new_empty((x.shape[0], num_groups), dtype=sd)
    rstd = x.new_empty((x.shape[0], num_groups), dtype=sd)
    s = torch.empty_like(y) if skip is not None else x.new_empty(_EMPTY)
    return y, mean, rstd, s


@torch.library.custom_op("groupnorm::group_norm_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _group_norm_backward_op(grad_y: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                            num_groups: int, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                            activation: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight, grad_bias); a gradient is an empty tensor when its parameter is None."""
    cl = _channels_last(x)
    x = _canonical(x, cl)
    grad_y = _canonical(grad_y, cl)
    gx = _new_output(x)
    if x.is_cuda:
        gw, gb = _backward_cuda(grad_y, x, mean, rstd, num_groups, weight, bias, activation, cl, gx)
        return gx, gw, gb
    _, gw, gb = functional.backward_checked(_array(grad_y, cl), _array(x, cl), _array(mean.contiguous()),
                                            _array(rstd.contiguous()), num_groups, _param_array(weight),
                                            _param_array(bias), cl, checks.activation(_act(activation)),
                                            checks.threads(torch.get_num_threads()), out=_array(gx, cl))
    return gx, _param_grad(gw, weight, x), _param_grad(gb, bias, x)


def _param_grad(g: Any, p: Any, x: Any) -> Any:
    if p is None:
        return x.new_empty(_EMPTY)
    if p.dtype == torch.bfloat16:
        return torch.from_numpy(np.ascontiguousarray(g).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(g)


@_group_norm_backward_op.register_fake
def _(grad_y: Any, x: Any, mean: Any, rstd: Any, num_groups: Any, weight: Any, bias: Any, activation: Any) -> Any:
    gx = _empty_like_layout(_canonical(x, _channels_last(x)))
    gw = torch.empty_like(weight) if weight is not None else x.new_empty(_EMPTY)
    gb = torch.empty_like(bias) if bias is not None else x.new_empty(_EMPTY)
    return gx, gw, gb


def _setup_context(ctx: Any, inputs: Any, output: Any) -> Any:
    x, num_groups, weight, bias, eps, activation, skip = inputs
    y, mean, rstd, s = output
    ctx.save_for_backward(s if skip is not None else x, mean, rstd, weight, bias)
    ctx.num_groups = num_groups
    ctx.activation = activation
    ctx.has_skip = skip is not None


def _backward(ctx: Any, grad_y: Any, grad_mean: Any, grad_rstd: Any, grad_s: Any) -> Any:
    x, mean, rstd, weight, bias = ctx.saved_tensors
    gx, gw, gb = _group_norm_backward_op(grad_y, x, mean, rstd, ctx.num_groups, weight, bias, ctx.activation)
    if ctx.has_skip and grad_s is not None:
        gx = gx + grad_s
    gw = gw if weight is not None and ctx.needs_input_grad[2] else None
    gb = gb if bias is not None and ctx.needs_input_grad[3] else None
    return gx, None, gw, gb, None, None, (gx if ctx.has_skip else None)


_group_norm_op.register_autograd(_backward, setup_context=_setup_context)


class DoubleBackwardError(NotImplementedError, ValueError):
    """Gradients of groupnorm's gradients (double backward) are not supported."""


def _no_double_backward(ctx: Any, *grads: Any) -> Any:
    raise DoubleBackwardError(
        "groupnorm does not support double backward (a gradient of its gradient, e.g. "
        "torch.autograd.grad(..., create_graph=True) followed by another backward); use "
        "torch.nn.functional.group_norm where second-order gradients are needed")


_group_norm_backward_op.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


# --------------------------------------------------------------------------- CUDA


def _require_cuda_build() -> Any:
    if not _core.HAS_CUDA:
        raise ValueError("x is on a CUDA device, but this groupnorm build runs on the CPU only "
                         "(rebuild with: pip install . -C cmake.define.GROUPNORM_CUDA=ON)")


def _codes(x: Any, *params: Any) -> Tuple[int, int]:
    """The core's dtype codes of x and of the parameters (checks.param_code: the core's rule)."""
    dtype = _NP_DTYPES[x.dtype]
    return checks.DTYPE_CODES[dtype], checks.param_code(dtype, [_NP_DTYPES[p.dtype] for p in params if p is not None])


def _ptr(t: Any) -> Any:
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def _forward_cuda(x: Any, num_groups: Any, weight: Any, bias: Any, eps: Any, activation: Any, skip: Any, cl: Any,
                  y: Any, mean: Any, rstd: Any, s: Any) -> Any:
    _require_cuda_build()
    n, c, sp = checks.geometry(x.shape, False)  # x's logical shape (N, C, *spatial) in either layout
    dtype_code, param_code = _codes(x, weight, bias)
    weight = None if weight is None else weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    stream = torch.cuda.current_stream(x.device).cuda_stream
    with torch.cuda.device(x.device):
        _core.forward_cuda(x=x.data_ptr(), n=n, c=c, s=sp, groups=num_groups, weight=_ptr(weight), bias=_ptr(bias),
                           eps=eps, channels_last=cl, activation=checks.activation(_act(activation)), dtype=dtype_code,
                           param_dtype=param_code, y=y.data_ptr(), mean=mean.data_ptr(), rstd=rstd.data_ptr(),
                           skip=_ptr(skip), skip_bias=0, sum_out=_ptr(s) if skip is not None else 0, stream=stream)


def _backward_cuda(grad_y: Any, x: Any, mean: Any, rstd: Any, num_groups: Any, weight: Any, bias: Any,
                   activation: Any, cl: Any, gx: Any) -> Any:
    _require_cuda_build()
    n, c, sp = checks.geometry(x.shape, False)  # x's logical shape (N, C, *spatial) in either layout
    dtype_code, param_code = _codes(x, weight, bias)
    weight = None if weight is None else weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    mean, rstd = mean.contiguous(), rstd.contiguous()
    gw = torch.empty_like(weight) if weight is not None else x.new_empty(_EMPTY)
    gb = torch.empty_like(bias) if bias is not None else x.new_empty(_EMPTY)
    stream = torch.cuda.current_stream(x.device).cuda_stream
    with torch.cuda.device(x.device):
        _core.backward_cuda(grad_y=grad_y.data_ptr(), x=x.data_ptr(), mean=mean.data_ptr(), rstd=rstd.data_ptr(),
                            n=n, c=c, s=sp, groups=num_groups, weight=_ptr(weight), bias=_ptr(bias), channels_last=cl,
                            activation=checks.activation(_act(activation)), dtype=dtype_code, param_dtype=param_code,
                            grad_x=gx.data_ptr(), grad_weight=_ptr(gw), grad_bias=_ptr(gb), stream=stream)
    return gw, gb


# --------------------------------------------------------------------------- the public functions


def _check(x: Any, num_groups: Any, weight: Any, bias: Any, eps: Any, activation: Any, skip: Any) -> Any:
    """Argument rules, before any work (the NumPy layer's rules, for tensors)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _NP_DTYPES:
        raise TypeError(f"x must be float64, float32, float16 or bfloat16, got {x.dtype}")
    if x.device.type == "cuda":
        _require_cuda_build()
    elif x.device.type not in ("cpu", "meta"):
        raise ValueError(f"x is on device {x.device}; groupnorm runs on cpu"
                         + (" and cuda" if _core.HAS_CUDA else ""))
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dims (N, C, *spatial), got shape {tuple(x.shape)}")
    groups = checks.groups_of(num_groups)
    eps = checks.eps_value(eps)
    channels = x.shape[1]
    if not torch.compiler.is_compiling():
        # the core's rules and messages; under torch.compile the operator itself
        # checks them when it runs (dynamo cannot trace into the extension)
        checks.activation(activation)
        _core.check(channels=channels, groups=groups, eps=eps)
    elif activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    for p, name in ((weight, "weight"), (bias, "bias")):
        if p is None:
            continue
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(p).__name__}")
        if p.dtype not in _NP_DTYPES:
            raise TypeError(f"{name} must be a float tensor, got dtype {p.dtype}")
        if tuple(p.shape) != (channels,):
            raise ValueError(f"{name} must have shape ({channels},), got {tuple(p.shape)}")
        if p.device != x.device:
            raise ValueError(f"{name} is on {p.device} and x on {x.device}: put them on the same device")
    if weight is not None and bias is not None and weight.dtype != bias.dtype:
        raise TypeError(f"weight and bias must have one dtype, got {weight.dtype} and {bias.dtype}")
    if weight is not None and x.is_cuda and weight.dtype not in (x.dtype, torch.float32):
        raise TypeError(f"weight must be float32 or x's dtype {x.dtype} on the GPU, got {weight.dtype}")
    if skip is not None:
        if not isinstance(skip, torch.Tensor):
            raise TypeError(f"skip must be a torch.Tensor or None, got {type(skip).__name__}")
        if skip.dtype != x.dtype:
            raise TypeError(f"skip must have dtype {x.dtype} like x, got {skip.dtype}")
        if skip.shape != x.shape:
            raise ValueError(f"skip must have shape {tuple(x.shape)} like x, got {tuple(skip.shape)}")
        if skip.device != x.device:
            raise ValueError(f"skip is on {skip.device} and x on {x.device}: put them on the same device")
    return groups, eps, "none" if activation is None else activation


def group_norm(x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, eps: float = 1e-5, *, activation: Optional[str] = None,
               skip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Group normalization of a tensor, with autograd (like ``torch.nn.functional.group_norm``).

    Args:
        x: tensor (N, C, *spatial), float32, float64, float16 or bfloat16, on
            the CPU (or CUDA when groupnorm was built with it). A
            ``channels_last`` / ``channels_last_3d`` tensor (C the fastest dim)
            is normalized in that layout and the result keeps it; other
            strides are copied to the nearest contiguous layout first.
        num_groups: G, a positive divisor of C.
        weight, bias: optional (C,) tensors (x's dtype or float32).
        eps: added to the variance.
        activation: None or ``"silu"`` (fused after the affine transform).
        skip: optional tensor like x: normalizes x + skip (a residual add,
            fused; the sum is rounded to x's dtype as if stored).

    Returns:
        y, like x (shape, dtype, device, memory format).
    """
    groups, eps, act = _check(x, num_groups, weight, bias, eps, activation, skip)
    y: torch.Tensor = _group_norm_op(x, groups, weight, bias, eps, act, skip)[0]
    return y


class GroupNorm(torch.nn.GroupNorm):
    """``torch.nn.GroupNorm`` running groupnorm's kernels (same parameters and state_dict keys).

    Args:
        num_groups, num_channels, eps, affine, device, dtype: as in torch.nn.GroupNorm.
        activation: None or ``"silu"``: applied after the normalization, fused.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device: Any = None, dtype: Optional[torch.dtype] = None, *, activation: Optional[str] = None) -> None:
        checks.activation(activation)
        super().__init__(num_groups, num_channels, eps, affine, device=device, dtype=dtype)
        self.activation = activation

    def _check_channels(self, input: Any) -> Any:
        """The layer's own rule, named as such: input's dim 1 must be num_channels."""
        if isinstance(input, torch.Tensor) and input.dim() >= 2 and input.shape[1] != self.num_channels:
            raise ValueError(f"{type(self).__name__}({self.num_groups}, {self.num_channels}) expects "
                             f"{self.num_channels} channels (dim 1), got input of shape {tuple(input.shape)} "
                             f"with {input.shape[1]}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_channels(input)
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps,
                          activation=getattr(self, "activation", None))

    def extra_repr(self) -> str:
        s = super().extra_repr()
        act = getattr(self, "activation", None)
        return s if act is None else f"{s}, activation={act!r}"


def replace_group_norm(model: torch.nn.Module) -> int:
    """Swap every ``torch.nn.GroupNorm`` in ``model`` (itself included) for :class:`GroupNorm`, in place.

    The modules keep their parameters, buffers and hooks (their class changes),
    so a swapped model's state_dict is the same as before. Subclasses of
    torch.nn.GroupNorm with their own forward are left alone.

    Returns:
        the number of modules swapped.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    count = 0
    for m in model.modules():
        if type(m) is torch.nn.GroupNorm:
            m.__class__ = GroupNorm
            m.activation = None  # type: ignore[assignment]
            count += 1
    return count


# --------------------------------------------------------------------------- SyncGroupNorm


def _gather_over(group: Any) -> Any:
    """allgather for groupnorm.distributed's exchange: every rank's float64 array (of one shape), in rank order."""
    import torch.distributed as dist

    def allgather(a: Any) -> Any:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, t, group=group)
        return [p.numpy() for p in parts]
    return allgather


def _world(group: Any) -> Any:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _tile_spatial(x: Any) -> Any:
    return int(np.prod(x.shape[2:], dtype=np.int64))


def _sync_config(call: Any, x: Any, num_groups: Any, cl: Any, activation: Any, weight: Any, bias: Any, eps: Any,
                 stats_crc: Any = 0) -> Any:
    """What every rank of a SyncGroupNorm call must agree on (groupnorm.distributed compares it)."""
    shape = tuple(x.shape[:1]) + tuple(x.shape[2:]) + tuple(x.shape[1:2]) if cl else tuple(x.shape)
    return distributed._config(call, shape, num_groups, _NP_DTYPES[x.dtype], cl,
                               checks.activation(activation), weight is not None, bias is not None, eps,
                               stats_crc=stats_crc)


class _SyncGroupNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Any, weight: Any, bias: Any, num_groups: Any, eps: Any, activation: Any,
                group: Any) -> Any:
        cl = _channels_last(x)
        x = _canonical(x, cl)
        xa = _array(x, cl)
        threads = torch.get_num_threads()
        if _world(group):
            # every rank's count, mean, m2, merged in rank order: every rank
            # merges the same bytes in the same order, so all get the same bits
            def local() -> Any:
                m = split.moments(xa, num_groups, channels_last=cl, num_threads=threads)
                return _sync_config(4.0, x, num_groups, cl, activation, weight, bias, eps), m, _tile_spatial(x)

            m = distributed.sync_moments(_gather_over(group), 4.0, local)
        else:
            m = split.moments(xa, num_groups, channels_last=cl, num_threads=threads)
        y = _new_output(x)
        functional.group_norm(xa, num_groups, _param_array(weight), _param_array(bias), eps, channels_last=cl,
                              activation=activation, out=_array(y, cl), num_threads=threads, stats=m)
        mean, rstd = m.mean_rstd(eps)
        ctx.save_for_backward(x, weight, bias)
        ctx.stats = (mean, rstd)
        ctx.cfg = (num_groups, activation, group, cl)
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Any) -> Any:
        x, weight, bias = ctx.saved_tensors
        mean, rstd = ctx.stats
        num_groups, activation, group, cl = ctx.cfg
        grad_y = _canonical(grad_y, cl)
        xa, ga = _array(x, cl), _array(grad_y, cl)
        wa, ba = _param_array(weight), _param_array(bias)
        threads = torch.get_num_threads()

        def local() -> Any:
            return split.backward_sums(ga, xa, mean, rstd, num_groups, wa, ba, channels_last=cl, activation=activation,
                                       num_threads=threads)

        if _world(group):
            s = distributed.sync_sums(_gather_over(group), 5.0, lambda: (
                _sync_config(5.0, x, num_groups, cl, activation, weight, bias, 0.0, distributed._crc(mean, rstd)),
                local()))
        else:
            s = local()
        gx = _new_output(x)
        _, gw, gb = functional.group_norm_backward(ga, xa, mean, rstd, num_groups, wa, ba, channels_last=cl,
                                                   activation=activation, num_threads=threads, out=_array(gx, cl),
                                                   sums=s)
        gw = _param_grad(gw, weight, x) if weight is not None and ctx.needs_input_grad[1] else None
        gb = _param_grad(gb, bias, x) if bias is not None and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None, None, None


class SyncGroupNorm(GroupNorm):
    """GroupNorm of a tensor split spatially across the ranks of a torch.distributed group.

    Each rank holds a tile of the same samples: all N and C, part of the
    spatial extent (rows of an image for patch-parallel decoding, slabs of a
    volume). The forward all-gathers every rank's (N, G) moments (count, mean,
    M2: never sums of x and x^2) and merges them in rank order, so every rank
    normalizes with bitwise the same statistics, those of the whole tensor. The
    backward does the same with the (N, C) sums of the gradient; every rank
    gets its tile's grad_x and the whole tensor's grad_weight / grad_bias
    (bitwise the same on every rank: do not average them again across ranks).

    Runs on CPU tensors with any torch.distributed backend that all-gathers
    CPU tensors (gloo, MPI). Without an initialized process group (or with
    one rank) it is GroupNorm of the local tensor. The exchange is
    ``groupnorm.distributed``'s: a fixed-size header first, so ranks that
    disagree (N, C, G, dtype, layout, eps, affine, activation...) all raise
    the same ValueError naming the difference, and a rank whose own checks
    fail makes the others raise instead of waiting.

    Args:
        num_groups, num_channels, eps, affine, device, dtype, activation: as GroupNorm.
        process_group: the group to synchronize over (default: the world).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device: Any = None, dtype: Optional[torch.dtype] = None, *, activation: Optional[str] = None,
                 process_group: Any = None) -> None:
        super().__init__(num_groups, num_channels, eps, affine, device=device, dtype=dtype, activation=activation)
        self.process_group = process_group

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        try:
            self._check_channels(input)
            groups, eps, act = _check(input, self.num_groups, self.weight, self.bias, self.eps, self.activation,
                                      None)
            if input.device.type != "cpu":
                raise ValueError(f"input is on {input.device}: SyncGroupNorm runs on CPU tensors")
        except Exception as e:
            if _world(self.process_group):  # the other ranks raise too instead of waiting for this one
                distributed.raise_everywhere(_gather_over(self.process_group), 4.0, e)
            raise
        return _SyncGroupNormFn.apply(input, self.weight,  # type: ignore[no-untyped-call,no-any-return]
                                      self.bias, groups, eps, _act(act), self.process_group)
