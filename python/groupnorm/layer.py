"""GroupNorm layer: parameters, forward, backward with gradient accumulation."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
from numpy.typing import NDArray

from . import _core
from . import _checks as checks
from .functional import group_norm, group_norm_backward


class GroupNorm:
    """Group normalization layer, like ``torch.nn.GroupNorm`` on NumPy arrays.

    Args:
        num_groups: G, a positive divisor of num_channels.
        num_channels: C.
        eps: added to the variance (default 1e-5).
        affine: learnable per-channel ``weight`` (ones) and ``bias`` (zeros) of
            shape (C,); None when False.
        channels_last: inputs are (N, *spatial, C) instead of (N, C, *spatial).
        activation: None or "silu", fused after the affine transform.
        dtype: dtype of weight, bias and their gradients (default float32;
            float64, float16 or bfloat16 too). The kernels take them in x's
            dtype or float32 (a float64 weight with float32 x is rounded).

    Calling the layer on x returns y and remembers x, mean and rstd;
    ``backward(grad_y)`` returns grad_x and adds the parameter gradients into
    ``weight_grad`` and ``bias_grad`` (``zero_grad()`` resets them).
    """

    weight: Optional[np.ndarray]
    bias: Optional[np.ndarray]
    weight_grad: Optional[np.ndarray]
    bias_grad: Optional[np.ndarray]

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *,
                 channels_last: bool = False, activation: Optional[str] = None, dtype: Any = np.float32) -> None:
        num_groups = checks.groups_of(num_groups)
        num_channels = checks.integer(num_channels, "num_channels")
        eps = checks.eps_value(eps)
        checks.activation(activation)
        _core.check(channels=num_channels, groups=num_groups, eps=eps)
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = checks.flag(affine, "affine")
        self.channels_last = checks.flag(channels_last, "channels_last")
        self.activation = activation
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float64, float32, float16 or bfloat16, got {dtype!r}") from None
        if dtype not in checks.DTYPE_CODES:
            raise TypeError(f"dtype must be float64, float32, float16 or bfloat16, got {dtype}")
        self.dtype = dtype
        if self.affine:
            self.weight = np.ones(num_channels, dtype)
            self.bias = np.zeros(num_channels, dtype)
        else:
            self.weight = self.bias = None
        self.zero_grad()
        self._saved: Optional[Tuple[Any, NDArray[Any], NDArray[Any]]] = None

    def zero_grad(self) -> None:
        """Reset the accumulated parameter gradients to zeros."""
        if self.affine:
            self.weight_grad = np.zeros_like(self.weight)
            self.bias_grad = np.zeros_like(self.bias)
        else:
            self.weight_grad = self.bias_grad = None

    def __call__(self, x: Any, *, num_threads: Optional[int] = None) -> np.ndarray:
        """y = group_norm(x); x of shape (N, C, *spatial) or (N, *spatial, C)."""
        x = checks.as_input(x)
        if x.ndim >= 2:
            dim = x.ndim - 1 if self.channels_last else 1
            if x.shape[dim] != self.num_channels:
                raise ValueError(f"{self!r} expects {self.num_channels} channels in dim {dim} of x, "
                                 f"got {x.shape[dim]} (x shape {x.shape})")
        y, mean, rstd = group_norm(x, self.num_groups, self.weight, self.bias, self.eps,
                                   channels_last=self.channels_last, activation=self.activation,
                                   return_stats=True, num_threads=num_threads)
        self._saved = (x, mean, rstd)
        return y

    forward = __call__

    def backward(self, grad_y: Any, *, num_threads: Optional[int] = None) -> np.ndarray:
        """grad_x for the last call; accumulates weight_grad and bias_grad."""
        if self._saved is None:
            raise RuntimeError("backward() called before the layer was called on an input")
        x, mean, rstd = self._saved
        gx, gw, gb = group_norm_backward(grad_y, x, mean, rstd, self.num_groups, self.weight, self.bias,
                                         channels_last=self.channels_last, activation=self.activation,
                                         num_threads=num_threads)
        if self.affine:
            assert gw is not None and gb is not None and self.weight_grad is not None and self.bias_grad is not None
            self.weight_grad += gw.astype(self.weight_grad.dtype)
            self.bias_grad += gb.astype(self.bias_grad.dtype)
        return gx

    def state_dict(self) -> Dict[str, np.ndarray]:
        """{"weight": ..., "bias": ...} copies (empty when affine=False)."""
        if not self.affine:
            return {}
        assert self.weight is not None and self.bias is not None
        return {"weight": self.weight.copy(), "bias": self.bias.copy()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Copy weight and bias from a dict like state_dict() (shapes must match)."""
        if not self.affine:
            if state:
                raise ValueError(f"layer has no parameters (affine=False), got keys {sorted(state)}")
            return
        missing = {"weight", "bias"} - set(state)
        if missing:
            raise KeyError(f"state_dict is missing {sorted(missing)}")
        extra = set(state) - {"weight", "bias"}
        if extra:
            raise KeyError(f"unexpected keys in state_dict: {sorted(extra)}")
        for name in ("weight", "bias"):
            v = np.asarray(state[name])
            if v.shape != (self.num_channels,):
                raise ValueError(f"{name} must have shape ({self.num_channels},), got {v.shape}")
            getattr(self, name)[...] = v

    def __repr__(self) -> str:
        return (f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"channels_last={self.channels_last}, activation={self.activation!r}, dtype={self.dtype.name})")
