"""groupnorm.torch on CUDA tensors: raw device pointers and the caller's stream handed to the
CUDA backend (built with -DGROUPNORM_CUDA=ON)."""
from typing import Any, Tuple

import torch

from . import _checks as checks
from . import _core
from ._torch_tensors import _EMPTY, _NP_DTYPES, _act

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
