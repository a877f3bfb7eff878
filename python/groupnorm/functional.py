"""Functional group normalization on NumPy arrays."""
from __future__ import annotations

from typing import Any, Literal, Optional, Tuple, Union, cast, overload

import numpy as np
from numpy.typing import NDArray

from . import _core
from . import _checks as checks
from . import _cuda
from . import split

_INT62 = 2**62
_MAX_THREADS = _core.max_threads()  # the core's cap (fixed per process); above it the checked path warns


@overload
def group_norm(x: Any, num_groups: int, weight: Optional[Any] = None, bias: Optional[Any] = None,
               eps: float = 1e-5, *, channels_last: bool = False, activation: Optional[str] = None,
               out: Optional[Any] = None, return_stats: Literal[False] = False, num_threads: Optional[int] = None,
               skip: Optional[Any] = None, skip_bias: Optional[Any] = None, sum_out: Optional[Any] = None,
               stats: Optional[Any] = None) -> NDArray[Any]: ...


@overload
def group_norm(x: Any, num_groups: int, weight: Optional[Any] = None, bias: Optional[Any] = None,
               eps: float = 1e-5, *, channels_last: bool = False, activation: Optional[str] = None,
               out: Optional[Any] = None, return_stats: Literal[True], num_threads: Optional[int] = None,
               skip: Optional[Any] = None, skip_bias: Optional[Any] = None, sum_out: Optional[Any] = None,
               stats: Optional[Any] = None,
               ) -> Tuple[NDArray[Any], NDArray[Any], NDArray[Any]]: ...


@overload
def group_norm(x: Any, num_groups: int, weight: Optional[Any] = None, bias: Optional[Any] = None,
               eps: float = 1e-5, *, channels_last: bool = False, activation: Optional[str] = None,
               out: Optional[Any] = None, return_stats: bool = False, num_threads: Optional[int] = None,
               skip: Optional[Any] = None, skip_bias: Optional[Any] = None, sum_out: Optional[Any] = None,
               stats: Optional[Any] = None,
               ) -> Union[NDArray[Any], Tuple[NDArray[Any], NDArray[Any], NDArray[Any]]]: ...


def group_norm(x: Any, num_groups: int, weight: Optional[Any] = None, bias: Optional[Any] = None,
               eps: float = 1e-5, *, channels_last: bool = False, activation: Optional[str] = None,
               out: Optional[Any] = None, return_stats: bool = False, num_threads: Optional[int] = None,
               skip: Optional[Any] = None, skip_bias: Optional[Any] = None, sum_out: Optional[Any] = None,
               stats: Optional[Any] = None,
               ) -> Union[NDArray[Any], Tuple[NDArray[Any], NDArray[Any], NDArray[Any]]]:
    """Group normalization.

    Splits the C channels into ``num_groups`` groups and normalizes each group of
    each sample by its own mean and biased variance, then applies the per-channel
    affine transform and the optional activation::

        y = act(weight[c] * (x - mean[n, g]) / sqrt(var[n, g] + eps) + bias[c])

    Args:
        x: array of shape (N, C, *spatial), or (N, *spatial, C) when
            ``channels_last``; any number of spatial dims (including none).
            A GPU array (``__cuda_array_interface__``: CuPy, PyTorch CUDA
            tensors) runs on the CUDA backend, on its stream, when groupnorm
            was built with it; outputs are then CuPy arrays unless ``out=``.
            dtype float64, float32, float16 or bfloat16 (``groupnorm.bfloat16``).
            Any strides; C-contiguous input is used without a copy.
        num_groups: G, a positive divisor of C.
        weight, bias: optional arrays of shape (C,), float32 or x's dtype.
        eps: added to the variance; any finite float (default 1e-5).
        channels_last: layout of x (see above).
        activation: None or ``"silu"`` (y = z * sigmoid(z), fused).
        out: optional output array (x's shape and dtype, C-contiguous, writable);
            may be x itself (in place).
        return_stats: also return mean and rstd = 1/sqrt(var + eps).
        num_threads: threads for this call (default: ``get_num_threads()``).
        skip: optional array like x: normalizes s = x + skip (+ skip_bias), the sum
            computed in float32 (float64 for float64) and rounded to x's dtype, as
            if it had been stored; it is stored only if ``sum_out`` is given.
        skip_bias: optional (C,) array added with skip (float32 or x's dtype).
        sum_out: optional array like x that receives s.
        stats: normalize with given statistics instead of x's own (x is then a
            tile of a bigger tensor, see ``groupnorm.split``): a
            ``groupnorm.Moments`` of shape (N, num_groups) (rstd from ``eps``;
            the moments of x itself give y bitwise equal to the plain call), or
            a ``(mean, rstd)`` pair of (N, num_groups) arrays. CPU arrays only.

    Returns:
        y (x's shape and dtype), or (y, mean, rstd) with mean and rstd of shape
        (N, num_groups), float32 (float64 when x is float64).
    """
    # the common call, with arrays in canonical form, skips the Python checks
    # (the core declines anything else, and the checked path below explains it)
    # (ints in range of the core's int64/int32, so pybind11 never sees a value it cannot convert)
    if (type(x) is np.ndarray and stats is None and skip is None and skip_bias is None and sum_out is None
            and return_stats is False
            and type(num_groups) is int and 0 < num_groups < _INT62 and type(eps) is float
            and type(channels_last) is bool and (activation is None or activation == "silu")
            and (num_threads is None or (type(num_threads) is int and 0 < num_threads <= _MAX_THREADS))):
        # positional on purpose: pybind11's keyword matching costs ~1.5 us here, a third of a small call
        # (order: x, groups, weight, bias, eps, channels_last, activation, out, num_threads)
        y = _core.forward_fast(x, num_groups, weight, bias, eps, channels_last, 0 if activation is None else 1,
                               out, num_threads or 0)
        if y is not None:
            return y
    # the scalar arguments, checked before anything is allocated or written
    groups = checks.groups_of(num_groups)
    e = checks.eps_value(eps)
    channels_last = checks.flag(channels_last, "channels_last")
    return_stats = checks.flag(return_stats, "return_stats")
    act = checks.activation(activation)
    nthreads = checks.threads(num_threads)
    if type(x) is not np.ndarray and _cuda.is_gpu_array(x):
        if stats is not None:
            raise TypeError("stats= is supported for CPU (NumPy) arrays only")
        return _cuda.group_norm(  # type: ignore[no-any-return]
            x, groups, weight, bias, e, channels_last, act, out, return_stats, skip, skip_bias, sum_out)
    x = checks.as_input(x)
    _core.check(checks.channels_of(x, channels_last), groups, e)  # (channels, groups, eps), before any allocation
    return forward_checked(x, groups, weight, bias, e, channels_last, act, nthreads, out=out, return_stats=return_stats,
                           skip=skip, skip_bias=skip_bias, sum_out=sum_out, stats=stats)


def forward_checked(x: Any, groups: int, weight: Optional[Any], bias: Optional[Any], eps: float, channels_last: bool,
                    act: int, num_threads: int, *, out: Optional[Any] = None, return_stats: bool = False,
                    skip: Optional[Any] = None, skip_bias: Optional[Any] = None, sum_out: Optional[Any] = None,
                    stats: Optional[Any] = None) -> Union[NDArray[Any], Tuple[NDArray[Any], NDArray[Any], NDArray[Any]]]:
    """group_norm of an ndarray x (as_input's) whose scalar arguments are already checked (groups_of,
    eps_value, flag, the activation's code, threads): checks and converts the arrays and runs the core,
    whose validate() has the last word on the problem's rules. groupnorm.torch's operator calls this."""
    channels = checks.channels_of(x, channels_last)
    dtype_code = checks.DTYPE_CODES[x.dtype]
    if skip is not None:
        skip = checks.same_as_x(checks.as_input(skip, "skip"), x, "skip")
        p, param_code = checks.params(x.dtype, channels, weight=weight, bias=bias, skip_bias=skip_bias)
        weight, bias, skip_bias = p["weight"], p["bias"], p["skip_bias"]
        if sum_out is not None:
            sum_out = checks.output(sum_out, x.shape, x.dtype, "sum_out")
    elif skip_bias is not None or sum_out is not None:
        raise ValueError("skip_bias and sum_out need skip")
    else:
        weight, bias, param_code = checks.weight_bias(weight, bias, x.dtype, channels)
    y = checks.output(out, x.shape, x.dtype)
    mean = rstd = None
    if return_stats:
        sd = checks.stats_dtype(x.dtype)
        n = x.shape[0]
        mean = np.empty((n, groups), sd)
        rstd = np.empty((n, groups), sd)
    if stats is None:
        # positional on purpose, in the binding's order (_core.pyi names it): pybind11's keyword
        # matching costs ~1.5 us a call, a third of a small checked call
        _core.forward(x, groups, weight, bias, eps, channels_last, act, dtype_code, param_code, y, mean, rstd, skip,
                      skip_bias, sum_out, num_threads)
    else:
        _core.forward_given(x=x, groups=groups, weight=weight, bias=bias, eps=eps, channels_last=channels_last,
                            activation=act, dtype=dtype_code, param_dtype=param_code, y=y, mean=mean, rstd=rstd,
                            skip=skip, skip_bias=skip_bias, sum_out=sum_out, num_threads=num_threads,
                            **split.given_stats(stats, x.shape[0], groups, x.dtype))
    if return_stats:
        return cast(NDArray[Any], y), cast(NDArray[Any], mean), cast(NDArray[Any], rstd)
    return cast(NDArray[Any], y)


def group_norm_backward(grad_y: Any, x: Any, mean: Any, rstd: Any, num_groups: int, weight: Optional[Any] = None,
                        bias: Optional[Any] = None, *, channels_last: bool = False,
                        activation: Optional[str] = None, num_threads: Optional[int] = None,
                        out: Optional[Any] = None, sums: Optional[Any] = None,
                        ) -> Tuple[NDArray[Any], Optional[NDArray[Any]], Optional[NDArray[Any]]]:
    """Gradients of :func:`group_norm`.

    Args:
        grad_y: gradient of the loss with respect to y; x's shape and dtype.
        x: the forward's input (x + skip (+ skip_bias) when skip was used: pass
            the ``sum_out`` of the forward).
        mean, rstd: (N, num_groups) statistics from ``group_norm(...,
            return_stats=True)`` (float32, float64 for float64 x).
        num_groups, weight, bias, channels_last, activation: as in the forward.
            bias is needed for the silu backward (z is recomputed from x).
        num_threads: threads for this call.
        out: optional array for grad_x (x's shape and dtype, C-contiguous,
            writable); may be grad_y itself.
        sums: x is a tile of a bigger tensor (see ``groupnorm.split``): the
            ``groupnorm.BackwardSums`` merged over every tile. grad_x is then
            this tile's, grad_weight/grad_bias the whole tensor's; mean/rstd
            must be the whole tensor's. CPU arrays only.

    Returns:
        (grad_x, grad_weight, grad_bias): grad_x like x; grad_weight/grad_bias of
        shape (C,) in weight's/bias's dtype, or None when weight/bias is None.
    """
    groups = checks.groups_of(num_groups)
    channels_last = checks.flag(channels_last, "channels_last")
    act = checks.activation(activation)
    nthreads = checks.threads(num_threads)
    if type(x) is not np.ndarray and _cuda.is_gpu_array(x):
        if sums is not None:
            raise TypeError("sums= is supported for CPU (NumPy) arrays only")
        return _cuda.group_norm_backward(  # type: ignore[no-any-return]
            grad_y, x, mean, rstd, groups, weight, bias, channels_last, act, out)
    x = checks.as_input(x)
    _core.check(checks.channels_of(x, channels_last), groups, 0.0)  # (channels, groups, eps)
    return backward_checked(grad_y, x, mean, rstd, groups, weight, bias, channels_last, act, nthreads, out=out,
                            sums=sums)


def backward_checked(grad_y: Any, x: Any, mean: Any, rstd: Any, groups: int, weight: Optional[Any],
                     bias: Optional[Any], channels_last: bool, act: int, num_threads: int, *, out: Optional[Any] = None,
                     sums: Optional[Any] = None) -> Tuple[NDArray[Any], Optional[NDArray[Any]], Optional[NDArray[Any]]]:
    """group_norm_backward of an ndarray x (as_input's) whose scalar arguments are already checked (see
    forward_checked). groupnorm.torch's operator calls this."""
    channels = checks.channels_of(x, channels_last)
    grad_y = checks.same_as_x(checks.as_input(grad_y, "grad_y"), x, "grad_y")
    sd = checks.stats_dtype(x.dtype)
    n = x.shape[0]
    stats = checks.stats_arrays(mean, rstd, n, groups, sd)
    weight_in, bias_in = weight, bias
    weight, bias, param_code = checks.weight_bias(weight, bias, x.dtype, channels)
    dtype_code = checks.DTYPE_CODES[x.dtype]
    grad_x = checks.output(out, x.shape, x.dtype)
    gw = None if weight is None else np.empty(channels, weight.dtype)
    gb = None if bias is None else np.empty(channels, bias.dtype)
    if sums is None:
        # positional on purpose, as _core.forward above
        _core.backward(grad_y, x, stats[0], stats[1], groups, weight, bias, channels_last, act, dtype_code, param_code,
                       grad_x, gw, gb, num_threads)
    else:
        sums = split.given_sums(sums, n, channels, checks.geometry(x.shape, channels_last)[2])
        _core.backward_given(grad_y=grad_y, x=x, mean=stats[0], rstd=stats[1], groups=groups, weight=weight,
                             bias=bias, channels_last=channels_last, activation=act, dtype=dtype_code,
                             param_dtype=param_code, grad_x=grad_x, grad_weight=gw, grad_bias=gb,
                             sum_dz=sums.sum_dz, sum_dz_xc=sums.sum_dz_xc, total_spatial=sums.spatial,
                             num_threads=num_threads)
    # each gradient in its own parameter's dtype
    if gw is not None and gw.dtype != np.asarray(weight_in).dtype:
        gw = gw.astype(np.asarray(weight_in).dtype)
    if gb is not None and gb.dtype != np.asarray(bias_in).dtype:
        gb = gb.astype(np.asarray(bias_in).dtype)
    return grad_x, gw, gb
