"""Argument checks and dtype dispatch for the Python API (one place).

Rules about the problem itself (groups, eps, activation) live in the C++ core
and reach Python through its messages; this module checks the arrays: their
types, shapes, dtypes, contiguity and writability.
"""
from typing import Any, Iterable, Sequence, Tuple
import numbers
import warnings
import operator

import numpy as np
import ml_dtypes

from . import _core

bfloat16 = np.dtype(ml_dtypes.bfloat16)
_core.set_bfloat16_num(bfloat16.num)

# storage dtype -> core dtype code
DTYPE_CODES = {
    np.dtype(np.float32): _core.FLOAT32,
    np.dtype(np.float64): _core.FLOAT64,
    np.dtype(np.float16): _core.FLOAT16,
    bfloat16: _core.BFLOAT16,
}
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


_CODE_DTYPES = {code: d for d, code in DTYPE_CODES.items()}
# the core's rule (groupnorm::stats_dtype), looked up once per dtype
_STATS_DTYPES = {d: _CODE_DTYPES[_core.stats_dtype(code)] for d, code in DTYPE_CODES.items()}


def stats_dtype(dtype: Any) -> Any:
    """mean/rstd dtype for data of `dtype` (the core's rule: float64 for float64, else float32)."""
    return _STATS_DTYPES[np.dtype(dtype)]


def param_code(x_dtype: Any, param_dtypes: Iterable[Any]) -> int:
    """The core's dtype code for the per-channel parameters, given x's dtype and those the caller's
    parameters have (groupnorm::param_dtype_for; stats_dtype's when there are none)."""
    return _core.param_dtype(dtype=DTYPE_CODES[np.dtype(x_dtype)],
                             present=[DTYPE_CODES[np.dtype(d)] for d in param_dtypes])


def as_input(x: Any, name: Any = "x") -> Any:
    """x as an ndarray of a supported float dtype, C-contiguous (copied only if needed)."""
    if not isinstance(x, np.ndarray):
        if hasattr(x, "__cuda_array_interface__"):
            raise TypeError(f"{name} is a GPU array and x is not: put both on the same device")
        x = from_dlpack(x, name) if hasattr(x, "__dlpack__") else np.asarray(x)
    if x.dtype not in DTYPE_CODES:
        raise TypeError(f"{name} must be float64, float32, float16 or bfloat16, got {x.dtype}")
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return x


def from_dlpack(x: Any, name: Any = "x") -> Any:
    """A NumPy view (no copy) of a CPU DLPack producer (PyTorch, JAX, CuPy host arrays...).

    bfloat16 (which NumPy's DLPack import does not know) is taken from torch
    tensors through an int16 view. A tensor that requires grad is refused:
    this API has no autograd (groupnorm.torch has).
    """
    if getattr(x, "requires_grad", False):
        raise TypeError(f"{name} is a tensor that requires grad; the NumPy-level API has no autograd: use "
                        f"groupnorm.torch.group_norm, or pass {name}.detach()")
    try:
        return np.from_dlpack(x)
    except (BufferError, TypeError, RuntimeError, ValueError) as e:
        if type(x).__module__.startswith("torch") and str(getattr(x, "dtype", "")) == "torch.bfloat16":
            import torch  # only reached with a torch tensor in hand
            if x.device.type == "cpu":
                return x.view(torch.int16).numpy().view(bfloat16)
        raise TypeError(f"{name} could not be read through DLPack: {e}") from None


def _channel_axis(shape: Sequence[int], channels_last: Any, name: str) -> int:
    if len(shape) < 2:
        raise ValueError(f"{name} must have at least 2 dims (N, C, *spatial), got shape {tuple(shape)}")
    return len(shape) - 1 if channels_last else 1


def geometry(shape: Sequence[int], channels_last: Any, name: str = "x") -> Tuple[int, int, int]:
    """(N, C, S) of a shape (N, C, *spatial), or (N, *spatial, C) when channels_last: the
    one rule in Python (the binding's geometry() is the same for NumPy arrays)."""
    shape = tuple(shape)
    cdim = _channel_axis(shape, channels_last, name)
    s = 1
    for i in range(1, len(shape)):
        if i != cdim:
            s *= shape[i]
    return shape[0], shape[cdim], s


def channels_of(x: Any, channels_last: Any) -> Any:
    """C of an array x (its geometry's, without the spatial product)."""
    return x.shape[_channel_axis(x.shape, channels_last, "x")]


# the core's sizes are int64; a larger Python int names the argument here
# instead of reaching pybind11's conversion error
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1


def short(value: Any) -> Any:
    """repr(value), cut to a readable length for an error message."""
    r = repr(value)
    return r if len(r) <= 40 else r[:30] + f"...({len(r)} chars)"


def integer(value: Any, name: Any) -> Any:
    """value as a Python int; bool and non-integral types are TypeErrors."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None


def groups_of(num_groups: Any) -> Any:
    g = integer(num_groups, "num_groups")
    if g <= 0:
        raise ValueError(f"num_groups must be positive, got {short(g)}")
    if g > INT64_MAX:
        raise ValueError(f"num_groups {short(g)} is too large")
    return g


def flag(value: Any, name: Any) -> Any:
    """A bool argument: True/False (or NumPy's bool); anything else is a TypeError."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {type(value).__name__} {short(value)}")


def params(x_dtype: Any, channels: Any, **arrays: Any) -> Any:
    """Per-channel parameters (weight, bias, skip_bias) as contiguous (C,) arrays of one dtype.

    The core takes them in one dtype: x's dtype when they all have it, else the
    wider of float32 and x's dtype that holds them exactly (float32 for
    float32/half data, float64 for float64 data with any float64 parameter).
    Returns (dict of arrays or None, core dtype code).
    """
    out: Any = {}
    for name, p in arrays.items():
        if p is None:
            out[name] = None
            continue
        if not isinstance(p, np.ndarray):
            p = np.asarray(p)
        if p.dtype not in DTYPE_CODES:
            raise TypeError(f"{name} must be a float array, got dtype {p.dtype}")
        if p.shape != (channels,):
            raise ValueError(f"{name} must have shape ({channels},), got {p.shape}")
        out[name] = p
    pdtype = _CODE_DTYPES[param_code(x_dtype, [p.dtype for p in out.values() if p is not None])]
    for name, p in out.items():
        if p is not None and (p.dtype != pdtype or not p.flags.c_contiguous):
            out[name] = np.ascontiguousarray(p, dtype=pdtype)
    return out, DTYPE_CODES[pdtype]


def weight_bias(weight: Any, bias: Any, x_dtype: Any, channels: Any) -> Any:
    """params() for weight and bias alone, with a copy-free path for the common case."""
    if (type(weight) is np.ndarray and type(bias) is np.ndarray and weight.dtype == bias.dtype
            and (weight.dtype == x_dtype or weight.dtype == _F32) and weight.shape == (channels,)
            and bias.shape == (channels,) and weight.flags.c_contiguous and bias.flags.c_contiguous):
        return weight, bias, DTYPE_CODES[weight.dtype]
    p, code = params(x_dtype, channels, weight=weight, bias=bias)
    return p["weight"], p["bias"], code


def stats_arrays(mean: Any, rstd: Any, n: Any, groups: Any, sd: Any) -> Any:
    """mean and rstd as contiguous (n, groups) arrays of the stats dtype sd."""
    out = []
    for a, name in ((mean, "mean"), (rstd, "rstd")):
        a = np.asarray(a)
        if a.shape != (n, groups):
            raise ValueError(f"{name} must have shape {(n, groups)}, got {a.shape}")
        if a.dtype.kind != "f":
            raise TypeError(f"{name} must be a float array, got {a.dtype}")
        out.append(np.ascontiguousarray(a, dtype=sd))
    return out


def same_as_x(a: Any, x: Any, name: Any) -> Any:
    a = np.asarray(a)
    if a.dtype != x.dtype:
        raise TypeError(f"{name} must have dtype {x.dtype} like x, got {a.dtype}")
    if a.shape != x.shape:
        raise ValueError(f"{name} must have shape {x.shape} like x, got {a.shape}")
    return np.ascontiguousarray(a)


def empty_aligned(shape: Any, dtype: Any) -> Any:
    """A new C-contiguous array whose data starts on a 64-byte boundary (see the
    binding's empty_aligned: NumPy aligns to 16 bytes, and misaligned outputs
    are slower to write)."""
    return _core.empty_aligned(tuple(shape), np.dtype(dtype))


def output(out: Any, shape: Any, dtype: Any, name: Any = "out") -> Any:
    """A caller's output array, checked; or a new one (64-byte aligned)."""
    if out is None:
        return empty_aligned(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return out


def threads(num_threads: Any) -> Any:
    """num_threads as the core's int (0: the default). The one rule, as in C and
    C++: a positive count, capped at the core's max_threads() (4x the hardware
    threads; a request above it warns here), or the default (None in Python, 0
    in C/C++). A count of 0 or less is a ValueError in Python."""
    if num_threads is None:
        return 0
    n = integer(num_threads, "num_threads")
    if n <= 0:
        raise ValueError(f"num_threads must be positive (None for the default), got {short(n)}")
    cap = _core.max_threads()
    if n > cap:
        warnings.warn(f"num_threads {short(n)} is above groupnorm's cap of {cap} (4x the hardware threads); "
                      f"using {cap}", RuntimeWarning, stacklevel=3)
        return cap
    return n


def eps_value(eps: Any) -> Any:
    """eps as a float: a real number (Python, NumPy); str, bool and None are TypeErrors."""
    if type(eps) is float:
        return eps
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__} {short(eps)}")
    try:
        return float(eps)
    except OverflowError:  # an int beyond the float range
        raise ValueError(f"eps must be finite, got {short(eps)}") from None


def activation(act: Any) -> Any:
    if act is None:
        return 0
    if not isinstance(act, str):
        raise TypeError(f"activation must be None or 'silu', got {type(act).__name__} {short(act)}")
    if "\0" in act or len(act) > 32:  # (the core's message quotes the name)
        raise ValueError(f"activation must be None or 'silu', got {short(act)}")
    return _core.activation_code(act)
