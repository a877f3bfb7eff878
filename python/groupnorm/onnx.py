"""The ONNX GroupNorm specs as mappings onto the one groupnorm kernel.

Four operators, one kernel (:func:`groupnorm.group_norm`):

- ``GroupNormalization`` opset 18: ``scale`` and ``bias`` of shape (num_groups,),
  one value per *group* (each is repeated over the group's channels);
- ``GroupNormalization`` opset 21: ``scale`` and ``bias`` of shape (C,), and
  ``stash_type``, the precision of stage one (the statistics and the
  normalized values): a TensorProto dtype, 1 (float32, the default),
  10 (float16), 11 (float64) or 16 (bfloat16). The ONNX function body accepts
  no other value (0 included), and neither does this module;
- ``com.microsoft.GroupNorm`` (ONNX Runtime's contrib op): attributes
  ``groups``, ``activation`` (0 none, 1 SiLU), ``channels_last`` (default 1:
  X is (N, H, W, C)) and ``epsilon``; gamma/beta of shape (C,) in X's dtype or
  float32;
- ``com.microsoft.SkipGroupNorm``: the same on ``s = X + skip (+ bias)``, with
  an optional second output S = s. ``skip`` is shaped like X, or (N, C), or
  X's rank with every spatial dim 1 ((N, 1, 1, C) channels-last, (N, C, 1, 1)
  channels-first), broadcast over the spatial dims.

stash_type, as the ONNX reference implementation runs it: stage one casts X to
the stash type, normalizes there and casts the normalized values back to X's
type; stage two (``scale * normalized + bias``) runs in X's type. Where the
stash type is at least as precise as X's (float32 statistics for float16 data,
the default), the kernel's own float accumulation is that precision already
and one call does both stages. Where it is narrower (float64 data with the
default float32 stash, float32 data with a float16 or bfloat16 stash), X is
cast to the stash type, normalized there by the kernel without the affine,
cast back, and the affine is applied in X's type: the result carries the stash
type's rounding, as the spec asks. The kernel's statistics are more exact than
the reference's ``E[x^2] - E[x]^2`` (which loses everything when the mean is
large against the spread), so results agree with ``onnx.reference`` to the
rounding of the types involved on well-conditioned data and are right where
the reference is not.

    >>> import numpy as np, groupnorm.onnx as gno
    >>> x = np.random.randn(2, 8, 4, 4).astype(np.float32)
    >>> y = gno.group_normalization(x, np.ones(8, np.float32), np.zeros(8, np.float32), num_groups=4)
    >>> y18 = gno.group_normalization(x, np.ones(4, np.float32), np.zeros(4, np.float32), num_groups=4, opset=18)

:func:`run_node` runs an ``onnx.NodeProto`` of any of the four (it needs the
``onnx`` package only for reading the node's attributes).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union, cast

import numpy as np

from . import _checks as checks
from .functional import group_norm as _group_norm


def group_norm(*args: Any, **kwargs: Any) -> np.ndarray:
    """groupnorm.group_norm without return_stats: always one array."""
    return cast(np.ndarray, _group_norm(*args, **kwargs))

__all__ = ["group_normalization", "microsoft_group_norm", "microsoft_skip_group_norm", "run_node",
           "STASH_DTYPES", "OPSETS"]

# TensorProto data type codes the ONNX function body accepts for stash_type
STASH_DTYPES = {1: np.dtype(np.float32), 10: np.dtype(np.float16), 11: np.dtype(np.float64), 16: checks.bfloat16}
# GroupNormalization versions: 18 (per-group scale/bias), 21 (per-channel, stash_type)
OPSETS = (18, 21)
# significand bits: how precise each type is (bfloat16 and float16 are both "narrower than float32")
_PRECISION = {np.dtype(np.float64): 53, np.dtype(np.float32): 24, np.dtype(np.float16): 11, checks.bfloat16: 8}


def _array(a: Any, name: str) -> np.ndarray:
    arr: np.ndarray = checks.as_input(a, name)
    return arr


def _int_attr(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def _flag_attr(value: Any, name: str) -> bool:
    v = _int_attr(value, name)
    if v not in (0, 1):
        raise ValueError(f"{name} must be 0 or 1, got {v}")
    return bool(v)


def _epsilon(epsilon: Any) -> float:
    """The epsilon attribute's value: ONNX stores a float32."""
    if isinstance(epsilon, (bool, np.bool_)) or not isinstance(epsilon, (int, float, np.integer, np.floating)):
        raise TypeError(f"epsilon must be a real number, got {type(epsilon).__name__} {epsilon!r}")
    return float(np.float32(epsilon))


def _params(a: Any, name: str, x_dtype: np.dtype, length: int, what: str) -> np.ndarray:
    arr = _array(a, name)
    if arr.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},) ({what}), got {arr.shape}")
    return arr


def group_normalization(x: Any, scale: Any, bias: Any, num_groups: int, epsilon: float = 1e-5, *,
                        opset: int = 21, stash_type: int = 1, num_threads: Optional[int] = None) -> np.ndarray:
    """ONNX ``GroupNormalization`` (opset 18 or 21) on the groupnorm kernel.

    Args:
        x: (N, C, *spatial), float16, bfloat16, float32 or float64.
        scale, bias: x's dtype; shape (num_groups,) for ``opset=18``, (C,) for
            ``opset=21``.
        num_groups: a divisor of C.
        epsilon: added to the variance; rounded to float32 first, as the ONNX
            attribute is a float32 (the reference casts that value).
        opset: 18 or 21 (the ONNX version of the operator).
        stash_type: opset 21 only: the precision of stage one, a TensorProto
            dtype code in ``STASH_DTYPES`` (1 float32, 10 float16, 11 float64,
            16 bfloat16).
        num_threads: threads for this call.

    Returns:
        y, x's shape and dtype.
    """
    opset = _int_attr(opset, "opset")
    if opset not in OPSETS:
        raise ValueError(f"opset must be one of {OPSETS} (GroupNormalization's versions), got {opset}")
    stash_type = _int_attr(stash_type, "stash_type")
    if stash_type not in STASH_DTYPES:
        raise ValueError(f"stash_type must be one of {sorted(STASH_DTYPES)} (float32, float16, float64, bfloat16 as "
                         f"TensorProto codes; the ONNX function body rejects any other), got {stash_type}")
    if opset == 18 and stash_type != 1:
        raise ValueError(f"stash_type is an attribute of GroupNormalization-21 only, got stash_type={stash_type} "
                         f"with opset 18")
    x = _array(x, "x")
    groups = checks.groups_of(num_groups)
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dims (N, C, *spatial), got shape {x.shape}")
    channels = x.shape[1]
    if channels % groups:
        raise ValueError(f"num_channels {channels} is not divisible by num_groups {groups}")
    if opset == 18:
        scale = _params(scale, "scale", x.dtype, groups, "opset 18: one value per group")
        bias = _params(bias, "bias", x.dtype, groups, "opset 18: one value per group")
        scale = np.repeat(scale, channels // groups)
        bias = np.repeat(bias, channels // groups)
    else:
        scale = _params(scale, "scale", x.dtype, channels, "opset 21: one value per channel")
        bias = _params(bias, "bias", x.dtype, channels, "opset 21: one value per channel")
    for name, a in (("scale", scale), ("bias", bias)):
        if a.dtype != x.dtype:
            raise TypeError(f"{name} must have x's dtype {x.dtype} (type T of the spec), got {a.dtype}")
    stash = STASH_DTYPES[stash_type] if opset == 21 else x.dtype
    eps = _epsilon(epsilon)
    if _PRECISION[stash] >= _PRECISION[x.dtype]:
        # stage one at least as precise as x's type: the kernel's float accumulation is that
        return group_norm(x, groups, scale, bias, eps, num_threads=num_threads)
    # a narrower stash: normalize in the stash type, then the affine in x's type (the spec's two stages)
    normalized = group_norm(x.astype(stash), groups, None, None, eps, num_threads=num_threads)
    dims = (1, channels) + (1,) * (x.ndim - 2)
    y = normalized.astype(x.dtype)
    y *= scale.reshape(dims)
    y += bias.reshape(dims)
    return y


def _skip_like(skip: np.ndarray, x: np.ndarray, channels_last: bool) -> np.ndarray:
    """skip as an array of x's shape: as is, or broadcast from (N, C) / (N, 1.., C) / (N, C, 1..)."""
    if skip.shape == x.shape:
        return skip
    n = x.shape[0]
    channels = x.shape[-1] if channels_last else x.shape[1]
    if channels_last:
        per_sample = (n,) + (1,) * (x.ndim - 2) + (channels,)
    else:
        per_sample = (n, channels) + (1,) * (x.ndim - 2)
    if skip.shape == (n, channels) or skip.shape == per_sample:
        return np.ascontiguousarray(np.broadcast_to(skip.reshape(per_sample), x.shape))
    raise ValueError(f"skip must have x's shape {x.shape}, or {(n, channels)} or {per_sample} (one value per "
                     f"sample and channel), got {skip.shape}")


def _contrib_args(x: Any, gamma: Any, beta: Any, groups: Any, activation: Any, channels_last: Any) -> Any:
    x = _array(x, "X")
    if x.dtype not in (np.float16, np.float32):
        raise TypeError(f"X must be float16 or float32 (type T of the contrib op), got {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"X must have at least 2 dims, got shape {x.shape}")
    groups = _int_attr(groups, "groups")
    act = _int_attr(activation, "activation")
    if act not in (0, 1):
        raise ValueError(f"activation must be 0 (none) or 1 (SiLU), got {act}")
    channels_last = _flag_attr(channels_last, "channels_last")
    channels = x.shape[-1] if channels_last else x.shape[1]
    gamma = _params(gamma, "gamma", x.dtype, channels, "one value per channel")
    beta = _params(beta, "beta", x.dtype, channels, "one value per channel")
    for name, a in (("gamma", gamma), ("beta", beta)):
        if a.dtype not in (np.float16, np.float32):
            raise TypeError(f"{name} must be float16 or float32 (type M of the contrib op), got {a.dtype}")
    if gamma.dtype != beta.dtype:
        raise TypeError(f"gamma and beta must share one dtype (type M), got {gamma.dtype} and {beta.dtype}")
    if gamma.dtype != x.dtype and gamma.dtype != np.float32:
        gamma, beta = gamma.astype(np.float32), beta.astype(np.float32)  # exact: float16 -> float32
    return x, gamma, beta, groups, "silu" if act else None, channels_last


def microsoft_group_norm(x: Any, gamma: Any, beta: Any, groups: int, activation: int, epsilon: float = 1e-5, *,
                         channels_last: int = 1, num_threads: Optional[int] = None) -> np.ndarray:
    """ONNX Runtime's ``com.microsoft.GroupNorm`` on the groupnorm kernel.

    Args:
        x: (N, H, W, C) when ``channels_last`` is 1 (the default), else
            (N, C, H, W); any number of spatial dims; float16 or float32.
        gamma, beta: (C,), float16 or float32 (one dtype for both).
        groups: a divisor of C.
        activation: 0 (none) or 1 (SiLU after the affine).
        epsilon: added to the variance (rounded to float32, the attribute's type).
        channels_last: 1 or 0, as the attribute.
        num_threads: threads for this call.

    Returns:
        Y, x's shape and dtype.
    """
    x, gamma, beta, groups, act, cl = _contrib_args(x, gamma, beta, groups, activation, channels_last)
    return group_norm(x, groups, gamma, beta, _epsilon(epsilon), channels_last=cl, activation=act,
                      num_threads=num_threads)


def microsoft_skip_group_norm(x: Any, gamma: Any, beta: Any, skip: Any, bias: Optional[Any] = None, *,
                              groups: int, activation: int, epsilon: float = 1e-5, channels_last: int = 1,
                              return_sum: bool = False, num_threads: Optional[int] = None,
                              ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """ONNX Runtime's ``com.microsoft.SkipGroupNorm`` on the groupnorm kernel.

    Normalizes ``s = x + skip (+ bias)`` (the sum in float32, rounded to x's
    dtype, as the op's output S stores it) like :func:`microsoft_group_norm`.

    Args:
        x, gamma, beta, groups, activation, epsilon, channels_last: as
            :func:`microsoft_group_norm`.
        skip: x's dtype; x's shape, or (N, C), or x's rank with the spatial
            dims 1 (broadcast over them).
        bias: optional (C,), x's dtype.
        return_sum: also return S = s (the op's optional second output).

    Returns:
        Y, or (Y, S).
    """
    x, gamma, beta, groups, act, cl = _contrib_args(x, gamma, beta, groups, activation, channels_last)
    skip = _array(skip, "skip")
    if skip.dtype != x.dtype:
        raise TypeError(f"skip must have X's dtype {x.dtype} (type T), got {skip.dtype}")
    skip = _skip_like(skip, x, cl)
    if bias is not None:
        channels = x.shape[-1] if cl else x.shape[1]
        bias = _params(bias, "bias", x.dtype, channels, "one value per channel")
        if bias.dtype != x.dtype:
            raise TypeError(f"bias must have X's dtype {x.dtype} (type T), got {bias.dtype}")
    if type(return_sum) is not bool:
        raise TypeError(f"return_sum must be a bool, got {type(return_sum).__name__}")
    s = np.empty_like(x) if return_sum else None
    y = group_norm(x, groups, gamma, beta, _epsilon(epsilon), channels_last=cl, activation=act, skip=skip,
                   skip_bias=bias, sum_out=s, num_threads=num_threads)
    return (y, s) if s is not None else y


def _attrs(node: Any) -> Dict[str, Any]:
    import onnx  # the onnx package, for reading attributes

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def run_node(node: Any, inputs: Sequence[Optional[np.ndarray]], opset: Optional[int] = None,
             num_threads: Optional[int] = None) -> List[np.ndarray]:
    """Run one ``onnx.NodeProto`` of GroupNormalization (18/21), com.microsoft.GroupNorm or
    com.microsoft.SkipGroupNorm on ``inputs`` (in the node's input order; None for an absent
    optional input) and return its outputs as a list.

    ``opset`` is the model's default-domain opset (GroupNormalization's version is the
    newest of 18 and 21 not above it). Without it the version is read from scale's shape:
    (num_groups,) is 18, (C,) is 21; where num_groups == C the two differ only in stage
    one's precision (18: x's type, 21: stash_type) and 21 is assumed.
    """
    attrs = _attrs(node)
    domain = node.domain or ""
    if domain in ("", "ai.onnx") and node.op_type == "GroupNormalization":
        unknown = set(attrs) - {"epsilon", "num_groups", "stash_type"}
        if unknown:
            raise ValueError(f"GroupNormalization has no attribute(s) {sorted(unknown)}")
        if "num_groups" not in attrs:
            raise ValueError("GroupNormalization needs the attribute num_groups")
        x, scale, bias = inputs[0], inputs[1], inputs[2]
        if opset is None:
            version = 18 if np.shape(cast(Any, scale)) != np.shape(cast(Any, x))[1:2] else 21
        else:
            opset = _int_attr(opset, "opset")
            if opset < 18:
                raise ValueError(f"GroupNormalization needs opset 18 or later, got {opset}")
            version = 21 if opset >= 21 else 18
        return [group_normalization(x, scale, bias, attrs["num_groups"], attrs.get("epsilon", 1e-5), opset=version,
                                    stash_type=attrs.get("stash_type", 1), num_threads=num_threads)]
    if domain == "com.microsoft" and node.op_type in ("GroupNorm", "SkipGroupNorm"):
        for required in ("groups", "activation"):
            if required not in attrs:
                raise ValueError(f"com.microsoft.{node.op_type} needs the attribute {required}")
        kw = dict(groups=attrs["groups"], activation=attrs["activation"], epsilon=attrs.get("epsilon", 1e-5),
                  channels_last=attrs.get("channels_last", 1), num_threads=num_threads)
        if node.op_type == "GroupNorm":
            return [microsoft_group_norm(inputs[0], inputs[1], inputs[2], **kw)]
        bias = inputs[4] if len(inputs) > 4 else None
        want_sum = len(node.output) > 1 and node.output[1] != ""
        out = microsoft_skip_group_norm(inputs[0], inputs[1], inputs[2], inputs[3], bias, return_sum=want_sum, **kw)
        return list(out) if isinstance(out, tuple) else [out]
    raise ValueError(f"run_node runs GroupNormalization, com.microsoft.GroupNorm and com.microsoft.SkipGroupNorm, "
                     f"got {domain or 'ai.onnx'}.{node.op_type}")
