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
from typing import Any, List, Optional

import torch

from . import _core
from . import _checks as checks

__all__ = ["group_norm", "GroupNorm", "replace_group_norm", "SyncGroupNorm", "DoubleBackwardError", "openmp_runtimes"]


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

from ._torch_cuda import _require_cuda_build
from ._torch_ops import DoubleBackwardError, _group_norm_op
from ._torch_tensors import _NP_DTYPES

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


from ._torch_sync import SyncGroupNorm  # noqa: E402 (it derives from GroupNorm, defined above)
