"""GPU arrays: anything exposing ``__cuda_array_interface__`` (CuPy, PyTorch CUDA
tensors, Numba), normalized by the CUDA backend on the array's stream.

Available when groupnorm was built with ``-C cmake.define.GROUPNORM_CUDA=ON``;
a CPU-only build raises a TypeError naming the fix. Outputs are CuPy arrays
(CuPy must be installed) unless ``out=`` arrays are given.
"""
import numpy as np

from . import _core
from ._checks import DTYPE_CODES, bfloat16

_TYPESTRS = {"<f4": np.dtype(np.float32), "<f8": np.dtype(np.float64), "<f2": np.dtype(np.float16)}


def is_gpu_array(a):
    return not isinstance(a, np.ndarray) and hasattr(a, "__cuda_array_interface__")


def _require_cuda(name):
    if not _core.HAS_CUDA:
        raise TypeError(f"{name} is a GPU array; this groupnorm build runs on the CPU only "
                        "(rebuild with: pip install . -C cmake.define.GROUPNORM_CUDA=ON)")


class _Dev:
    """What the core needs of one device array: pointer, shape, dtype, stream."""

    def __init__(self, a, name):
        iface = a.__cuda_array_interface__
        self.obj = a
        self.shape = tuple(iface["shape"])
        typestr = iface["typestr"]
        if typestr not in _TYPESTRS:
            raise TypeError(f"{name} must be float64, float32 or float16 on the GPU, got typestr {typestr!r}")
        self.dtype = _TYPESTRS[typestr]
        strides = iface.get("strides")
        if strides is not None:
            expect, acc = [], self.dtype.itemsize
            for d in reversed(self.shape):
                expect.append(acc)
                acc *= d
            if tuple(reversed(expect)) != tuple(strides) and int(np.prod(self.shape)) > 1:
                raise ValueError(f"{name} must be C-contiguous on the GPU (got strides {strides})")
        self.ptr = int(iface["data"][0])
        stream = iface.get("stream")
        self.stream = 0 if stream in (None, 1) else int(stream)


def _empty_like(shape, dtype):
    try:
        import cupy
    except ImportError:  # pragma: no cover - depends on the machine
        raise TypeError("GPU outputs are CuPy arrays: install cupy, or pass out= arrays") from None
    return cupy.empty(shape, dtype=dtype)


def _param(p, name, channels):
    if p is None:
        return None, None
    if not is_gpu_array(p):
        raise TypeError(f"{name} must be on the GPU like x")
    d = _Dev(p, name)
    if d.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},), got {d.shape}")
    return d, d.dtype


def group_norm(x, num_groups, weight, bias, eps, channels_last, act, out, return_stats, skip, skip_bias,
               sum_out):
    _require_cuda("x")
    xd = _Dev(x, "x")
    if len(xd.shape) < 2:
        raise ValueError(f"x must have at least 2 dims (N, C, *spatial), got shape {xd.shape}")
    n = xd.shape[0]
    c = xd.shape[-1] if channels_last else xd.shape[1]
    s = int(np.prod(xd.shape[1:])) // c if c else 0
    params = [_param(p, nm, c) for p, nm in ((weight, "weight"), (bias, "bias"), (skip_bias, "skip_bias"))]
    pdtypes = {d for _, d in params if d is not None}
    if len(pdtypes) > 1:
        raise TypeError(f"weight, bias and skip_bias must share one dtype on the GPU, got {sorted(map(str, pdtypes))}")
    pdtype = pdtypes.pop() if pdtypes else (np.dtype(np.float64) if xd.dtype == np.float64 else np.dtype(np.float32))
    y = out if out is not None else _empty_like(xd.shape, xd.dtype)
    yd = _Dev(y, "out")
    if yd.shape != xd.shape or yd.dtype != xd.dtype:
        raise ValueError(f"out must have x's shape {xd.shape} and dtype {xd.dtype}")
    skd = _Dev(skip, "skip") if skip is not None else None
    if skd is not None and (skd.shape != xd.shape or skd.dtype != xd.dtype):
        raise ValueError("skip must have x's shape and dtype")
    if skip is None and (skip_bias is not None or sum_out is not None):
        raise ValueError("skip_bias and sum_out need skip")
    sod = _Dev(sum_out, "sum_out") if sum_out is not None else None
    mean = rstd = None
    if return_stats:
        sd = np.float64 if xd.dtype == np.float64 else np.float32
        mean, rstd = _empty_like((n, num_groups), sd), _empty_like((n, num_groups), sd)
    ptr = lambda d: 0 if d is None else d.ptr  # noqa: E731
    _core.forward_cuda(xd.ptr, n, c, s, num_groups, ptr(params[0][0]), ptr(params[1][0]), eps, channels_last, act,
                       DTYPE_CODES[xd.dtype], DTYPE_CODES[pdtype], yd.ptr,
                       0 if mean is None else _Dev(mean, "mean").ptr, 0 if rstd is None else _Dev(rstd, "rstd").ptr,
                       ptr(skd), ptr(params[2][0]), ptr(sod), xd.stream)
    return (y, mean, rstd) if return_stats else y


def group_norm_backward(grad_y, x, mean, rstd, num_groups, weight, bias, channels_last, act, out):
    _require_cuda("x")
    xd, gd = _Dev(x, "x"), _Dev(grad_y, "grad_y")
    if gd.shape != xd.shape or gd.dtype != xd.dtype:
        raise ValueError("grad_y must have x's shape and dtype")
    n = xd.shape[0]
    c = xd.shape[-1] if channels_last else xd.shape[1]
    s = int(np.prod(xd.shape[1:])) // c if c else 0
    md, rd = _Dev(mean, "mean"), _Dev(rstd, "rstd")
    (wd, wdt), (bd, bdt) = _param(weight, "weight", c), _param(bias, "bias", c)
    if wdt is not None and bdt is not None and wdt != bdt:
        raise TypeError("weight and bias must share one dtype on the GPU")
    pdtype = wdt or bdt or (np.dtype(np.float64) if xd.dtype == np.float64 else np.dtype(np.float32))
    gx = out if out is not None else _empty_like(xd.shape, xd.dtype)
    gw = None if weight is None else _empty_like((c,), pdtype)
    gb = None if bias is None else _empty_like((c,), pdtype)
    ptr = lambda d: 0 if d is None else d.ptr  # noqa: E731
    _core.backward_cuda(gd.ptr, xd.ptr, md.ptr, rd.ptr, n, c, s, num_groups, ptr(wd), ptr(bd), channels_last, act,
                        DTYPE_CODES[xd.dtype], DTYPE_CODES[pdtype], _Dev(gx, "out").ptr,
                        0 if gw is None else _Dev(gw, "grad_weight").ptr,
                        0 if gb is None else _Dev(gb, "grad_bias").ptr, xd.stream)
    return gx, gw, gb
