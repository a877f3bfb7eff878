"""Functional group normalization on NumPy arrays."""
from __future__ import annotations

from typing import Any, Literal, Optional, Tuple, Union, cast, overload

import numpy as np
from numpy.typing import NDArray

from . import _core
from . import _checks as C
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
        y = _core.forward_fast(x, num_groups, weight, bias, eps, channels_last, 0 if activation is None else 1,
                               out, num_threads or 0)
        if y is not None:
            return y
    # the scalar arguments, checked before anything is allocated or written
    groups = C.groups_of(num_groups)
    e = C.eps_value(eps)
    channels_last = C.flag(channels_last, "channels_last")
    return_stats = C.flag(return_stats, "return_stats")
    act = C.activation(activation)
    nthreads = C.threads(num_threads)
    if type(x) is not np.ndarray and _cuda.is_gpu_array(x):
        if stats is not None:
            raise TypeError("stats= is supported for CPU (NumPy) arrays only")
        return _cuda.group_norm(  # type: ignore[no-any-return]
            x, groups, weight, bias, e, channels_last, act, out, return_stats, skip, skip_bias, sum_out)
    x = C.as_input(x)
    channels = C.channels_of(x, channels_last)
    _core.check(channels, groups, e, None)  # the core's rules, before any allocation
    dcode = C.DTYPE_CODES[x.dtype]
    if skip is not None:
        skip = C.same_as_x(C.as_input(skip, "skip"), x, "skip")
        p, pcode = C.params(x.dtype, channels, weight=weight, bias=bias, skip_bias=skip_bias)
        weight, bias, skip_bias = p["weight"], p["bias"], p["skip_bias"]
        if sum_out is not None:
            sum_out = C.output(sum_out, x.shape, x.dtype, "sum_out")
    elif skip_bias is not None or sum_out is not None:
        raise ValueError("skip_bias and sum_out need skip")
    else:
        weight, bias, pcode = C.weight_bias(weight, bias, x.dtype, channels)
    y = C.output(out, x.shape, x.dtype)
    mean = rstd = None
    if return_stats:
        sd = C.stats_dtype(x.dtype)
        n = x.shape[0]
        mean = np.empty((n, groups), sd)
        rstd = np.empty((n, groups), sd)
    if stats is None:
        _core.forward(x, groups, weight, bias, e, channels_last, act, dcode, pcode, y, mean, rstd,
                      skip, skip_bias, sum_out, nthreads)
    else:
        given = split.given_stats(stats, x.shape[0], groups, x.dtype)
        count, gmean, gm2, smean, srstd = given
        _core.forward_given(x, groups, weight, bias, e, channels_last, act, dcode, pcode, y, mean, rstd,
                            skip, skip_bias, sum_out, count, gmean, gm2, smean, srstd, nthreads)
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
    groups = C.groups_of(num_groups)
    channels_last = C.flag(channels_last, "channels_last")
    act = C.activation(activation)
    nthreads = C.threads(num_threads)
    if type(x) is not np.ndarray and _cuda.is_gpu_array(x):
        if sums is not None:
            raise TypeError("sums= is supported for CPU (NumPy) arrays only")
        return _cuda.group_norm_backward(  # type: ignore[no-any-return]
            grad_y, x, mean, rstd, groups, weight, bias, channels_last, act, out)
    x = C.as_input(x)
    channels = C.channels_of(x, channels_last)
    _core.check(channels, groups, 0.0, None)
    grad_y = C.same_as_x(C.as_input(grad_y, "grad_y"), x, "grad_y")
    sd = C.stats_dtype(x.dtype)
    n = x.shape[0]
    stats = C.stats_arrays(mean, rstd, n, groups, sd)
    weight_in, bias_in = weight, bias
    weight, bias, pcode = C.weight_bias(weight, bias, x.dtype, channels)
    dcode = C.DTYPE_CODES[x.dtype]
    grad_x = C.output(out, x.shape, x.dtype)
    gw = None if weight is None else np.empty(channels, weight.dtype)
    gb = None if bias is None else np.empty(channels, bias.dtype)
    if sums is None:
        _core.backward(grad_y, x, stats[0], stats[1], groups, weight, bias, channels_last, act, dcode, pcode,
                       grad_x, gw, gb, nthreads)
    else:
        sums = split.given_sums(sums, n, channels, split._spatial(x, channels_last))
        _core.backward_given(grad_y, x, stats[0], stats[1], groups, weight, bias, channels_last, act, dcode, pcode,
                             grad_x, gw, gb, sums.sum_dz, sums.sum_dz_xc, sums.spatial, nthreads)
    # each gradient in its own parameter's dtype
    if gw is not None and gw.dtype != np.asarray(weight_in).dtype:
        gw = gw.astype(np.asarray(weight_in).dtype)
    if gb is not None and gb.dtype != np.asarray(bias_in).dtype:
        gb = gb.astype(np.asarray(bias_in).dtype)
    return grad_x, gw, gb
