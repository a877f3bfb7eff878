"""GPU arrays: anything exposing ``__cuda_array_interface__`` (CuPy, PyTorch CUDA
tensors, Numba), normalized by the CUDA backend on the array's stream.

Available when groupnorm was built with ``-C cmake.define.GROUPNORM_CUDA=ON``;
a CPU-only build raises a TypeError naming the fix. Outputs are CuPy arrays
(CuPy must be installed) unless ``out=`` arrays are given; they are allocated
on x's device and stream, the stream the kernels run on.

Every array is checked here (GPU or not, shape, dtype, C-contiguity,
writability of outputs, one device for all) before any CUDA call; the core
then checks the problem again and runs on the device that holds the arrays.
"""
from typing import Any, Dict
import numpy as np

from . import _core
from . import _checks as checks
from ._checks import DTYPE_CODES, stats_dtype

_F16, _F32, _F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
_CODE_DTYPES = {code: d for d, code in DTYPE_CODES.items()}
_TYPESTRS: Dict[str, np.dtype[Any]] = {"<f4": _F32, "<f8": _F64, "<f2": _F16}


def is_gpu_array(a: Any) -> Any:
    return not isinstance(a, np.ndarray) and hasattr(a, "__cuda_array_interface__")


def _require_cuda(name: Any) -> Any:
    if not _core.HAS_CUDA:
        raise TypeError(f"{name} is a GPU array; this groupnorm build runs on the CPU only "
                        "(rebuild with: pip install . -C cmake.define.GROUPNORM_CUDA=ON)")


def _device_of(a: Any) -> Any:
    """The CUDA device ordinal the array object reports (CuPy: .device.id,
    PyTorch: .device.index), or None when it reports none."""
    d = getattr(a, "device", None)
    for attr in ("id", "index"):
        v = getattr(d, attr, None)
        if type(v) is int:
            return v
    return None


class _Dev:
    """One device array as the core needs it: pointer, shape, dtype, stream, device."""

    def __init__(self, a: Any, name: Any, writable: Any = False) -> None:
        if not is_gpu_array(a):
            raise TypeError(f"{name} must be a GPU array like x (__cuda_array_interface__), got {type(a).__name__}")
        iface = a.__cuda_array_interface__
        if not isinstance(iface, dict):
            raise TypeError(f"{name}.__cuda_array_interface__ must be a dict, got {type(iface).__name__}")
        try:
            shape = tuple(iface["shape"])
            typestr = iface["typestr"]
            ptr, readonly = iface["data"]
        except (KeyError, TypeError, ValueError):
            raise TypeError(f"{name}.__cuda_array_interface__ lacks shape, typestr or data") from None
        if not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"{name} has an invalid shape {checks.short(shape)}")
        self.shape = shape
        self.name = name
        if typestr not in _TYPESTRS:
            raise TypeError(f"{name} must be float64, float32 or float16 on the GPU, got typestr {checks.short(typestr)}")
        self.dtype = _TYPESTRS[typestr]
        self.size = int(np.prod(shape, dtype=object))
        strides = iface.get("strides")
        if strides is not None:
            strides = tuple(strides)
            acc = self.dtype.itemsize
            for d, st in zip(reversed(shape), reversed(strides)):
                if d > 1 and st != acc:
                    raise ValueError(f"{name} must be C-contiguous on the GPU (shape {shape}, strides {strides})")
                acc *= d
        if iface.get("mask") is not None:
            raise ValueError(f"{name}: masked GPU arrays are not supported")
        if type(ptr) is not int or not 0 <= ptr < 2**64 or (ptr == 0 and self.size > 0):
            raise ValueError(f"{name} has no valid data pointer ({checks.short(ptr)})")
        if writable and readonly:
            raise ValueError(f"{name} is read-only")
        self.ptr = ptr
        stream = iface.get("stream")
        if stream is not None and (type(stream) is not int or not 0 < stream < 2**64):
            raise ValueError(f"{name}'s stream must be None or a positive int, got {checks.short(stream)}")
        # CUDA array interface v3: None / 1 = the legacy default stream, 2 = per-thread default
        self.stream = 0 if stream in (None, 1) else stream
        self.device = _device_of(a)

    def like(self, x: Any, what: Any = "x's") -> Any:
        if self.shape != x.shape:
            raise ValueError(f"{self.name} must have {what} shape {x.shape}, got {self.shape}")
        if self.dtype != x.dtype:
            raise TypeError(f"{self.name} must have {what} dtype {x.dtype}, got {self.dtype}")
        return self


def _one_device(arrays: Any) -> Any:
    """All arrays that report a device report the same one."""
    first = None
    for d in arrays:
        if d is None or d.device is None:
            continue
        if first is None:
            first = d
        elif d.device != first.device:
            raise ValueError(f"{d.name} is on GPU {d.device} and {first.name} on GPU {first.device}: "
                             "put them on one device")


def _params(x: Any, channels: Any, **arrays: Any) -> Any:
    """Per-channel GPU parameters: shape (C,), one dtype, float32 or x's."""
    out: Any = {}
    for name, p in arrays.items():
        if p is None:
            out[name] = None
            continue
        d = _Dev(p, name)
        if d.shape != (channels,):
            raise ValueError(f"{name} must have shape ({channels},), got {d.shape}")
        out[name] = d
    dtypes = {d.dtype for d in out.values() if d is not None}
    if len(dtypes) > 1:
        raise TypeError(f"{', '.join(out)} must share one dtype on the GPU, got {sorted(map(str, dtypes))}")
    # the core's rule; nothing is converted on the GPU, so the parameters must already be in that dtype
    pdtype = _CODE_DTYPES[checks.param_code(x.dtype, dtypes)]
    if dtypes and dtypes != {pdtype}:
        raise TypeError(f"{', '.join(out)} must be float32 or x's dtype {x.dtype} on the GPU, got {dtypes.pop()}")
    return out, pdtype


def _empty(shape: Any, dtype: Any, like: Any) -> Any:
    """A new CuPy array on `like`'s device, allocated on its stream (the kernels')."""
    try:
        import cupy  # type: ignore[import-not-found]
    except ImportError:  # depends on the machine
        raise TypeError("GPU outputs are CuPy arrays: install cupy, or pass out= arrays") from None
    dev = like.device if like.device is not None else cupy.cuda.runtime.getDevice()
    with cupy.cuda.Device(dev):
        if like.stream == 0:
            stream = cupy.cuda.Stream.null
        elif like.stream == 2:
            stream = cupy.cuda.Stream.ptds
        else:
            stream = cupy.cuda.ExternalStream(like.stream)
        with stream:
            return cupy.empty(shape, dtype=dtype)


def _ptr(d: Any) -> Any:
    return 0 if d is None else d.ptr


def group_norm(x: Any, num_groups: Any, weight: Any, bias: Any, eps: Any, channels_last: Any, act: Any, out: Any,
               return_stats: Any, skip: Any, skip_bias: Any,
               sum_out: Any) -> Any:
    _require_cuda("x")
    xd = _Dev(x, "x")
    n, c, s = checks.geometry(xd.shape, channels_last)
    _core.check(channels=c, groups=num_groups, eps=eps)
    p, pdtype = _params(xd, c, weight=weight, bias=bias, skip_bias=skip_bias)
    if skip is None and (skip_bias is not None or sum_out is not None):
        raise ValueError("skip_bias and sum_out need skip")
    skd = None if skip is None else _Dev(skip, "skip").like(xd)
    sod = None if sum_out is None else _Dev(sum_out, "sum_out", writable=True).like(xd)
    yd = None if out is None else _Dev(out, "out", writable=True).like(xd)
    _one_device([xd, skd, sod, yd] + list(p.values()))
    # every argument checked: now allocate on x's device and stream, and run
    if yd is None:
        out = _empty(xd.shape, xd.dtype, xd)
        yd = _Dev(out, "out")
    mean = rstd = None
    if return_stats:
        sd = stats_dtype(xd.dtype)
        mean, rstd = _empty((n, num_groups), sd, xd), _empty((n, num_groups), sd, xd)
    _core.forward_cuda(x=xd.ptr, n=n, c=c, s=s, groups=num_groups, weight=_ptr(p["weight"]), bias=_ptr(p["bias"]),
                       eps=eps, channels_last=channels_last, activation=act, dtype=DTYPE_CODES[xd.dtype],
                       param_dtype=DTYPE_CODES[pdtype], y=yd.ptr,
                       mean=0 if mean is None else _Dev(mean, "mean").ptr,
                       rstd=0 if rstd is None else _Dev(rstd, "rstd").ptr,
                       skip=_ptr(skd), skip_bias=_ptr(p["skip_bias"]), sum_out=_ptr(sod), stream=xd.stream)
    return (out, mean, rstd) if return_stats else out


def group_norm_backward(grad_y: Any, x: Any, mean: Any, rstd: Any, num_groups: Any, weight: Any, bias: Any,
                        channels_last: Any, act: Any, out: Any) -> Any:
    _require_cuda("x")
    xd = _Dev(x, "x")
    n, c, s = checks.geometry(xd.shape, channels_last)
    _core.check(channels=c, groups=num_groups, eps=0.0)
    gd = _Dev(grad_y, "grad_y").like(xd)
    sd = stats_dtype(xd.dtype)
    stats = []
    for a, name in ((mean, "mean"), (rstd, "rstd")):
        d = _Dev(a, name)
        if d.shape != (n, num_groups):
            raise ValueError(f"{name} must have shape {(n, num_groups)}, got {d.shape}")
        if d.dtype != sd:
            raise TypeError(f"{name} must have dtype {sd} (the forward's statistics for {xd.dtype} x), got {d.dtype}")
        stats.append(d)
    p, pdtype = _params(xd, c, weight=weight, bias=bias)
    gxd = None if out is None else _Dev(out, "out", writable=True).like(xd)
    _one_device([xd, gd, gxd] + stats + list(p.values()))
    # every argument checked: now allocate on x's device and stream, and run
    if gxd is None:
        out = _empty(xd.shape, xd.dtype, xd)
        gxd = _Dev(out, "out")
    gw = None if weight is None else _empty((c,), pdtype, xd)
    gb = None if bias is None else _empty((c,), pdtype, xd)
    _core.backward_cuda(grad_y=gd.ptr, x=xd.ptr, mean=stats[0].ptr, rstd=stats[1].ptr, n=n, c=c, s=s,
                        groups=num_groups, weight=_ptr(p["weight"]), bias=_ptr(p["bias"]), channels_last=channels_last,
                        activation=act, dtype=DTYPE_CODES[xd.dtype], param_dtype=DTYPE_CODES[pdtype], grad_x=gxd.ptr,
                        grad_weight=0 if gw is None else _Dev(gw, "grad_weight").ptr,
                        grad_bias=0 if gb is None else _Dev(gb, "grad_bias").ptr, stream=xd.stream)
    return out, gw, gb
