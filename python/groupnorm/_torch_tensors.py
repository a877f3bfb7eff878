"""groupnorm.torch's tensors <-> NumPy arrays: dtypes, layouts, zero-copy views and new outputs
from the buffer cache (one home for how a tensor reaches the kernels)."""
from typing import Any

import numpy as np
import torch

from . import _checks as checks

_NP_DTYPES = {
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.float16: np.dtype(np.float16),
    torch.bfloat16: checks.bfloat16,
}
_TORCH_DTYPES = {d: t for t, d in _NP_DTYPES.items()}
_EMPTY = (0,)



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
        a = a.view(np.int16)
    # channels-last: the (N, C, *spatial) strides are made on the NumPy side, so the tensor is
    # not an autograd view of another (a view output of the operator would refuse the in-place
    # ops models apply to it, e.g. ReLU(inplace=True) after GroupNorm)
    t = torch.from_numpy(np.moveaxis(a, -1, 1) if cl else a)
    return t.view(torch.bfloat16) if x.dtype == torch.bfloat16 else t


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


def _param_grad(g: Any, p: Any, x: Any) -> Any:
    if p is None:
        return x.new_empty(_EMPTY)
    if p.dtype == torch.bfloat16:
        return torch.from_numpy(np.ascontiguousarray(g).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(g)
