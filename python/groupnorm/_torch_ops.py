"""groupnorm.torch's operators: ``torch.ops.groupnorm.group_norm`` and ``group_norm_backward``
registered with torch.library (the CPU kernels through groupnorm.functional, the CUDA ones through
_torch_cuda), their fake implementations for torch.compile/torch.export, and autograd."""
from typing import Any, Optional, Tuple

import torch

from . import _checks as checks
from . import functional
from ._torch_cuda import _backward_cuda, _forward_cuda
from ._torch_tensors import (_EMPTY, _act, _array, _canonical, _channels_last, _empty_like_layout, _new_output,
                             _param_array, _param_grad, _stats_dtype)

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
