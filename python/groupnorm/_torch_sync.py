"""groupnorm.torch.SyncGroupNorm: GroupNorm of a tensor split across the ranks of a
torch.distributed group, on groupnorm.distributed's exchange (header, gather, merge)."""
from typing import Any, Optional

import numpy as np
import torch

from . import _checks as checks
from . import distributed, functional, split
from ._torch_tensors import _NP_DTYPES, _act, _array, _canonical, _channels_last, _new_output, _param_array, _param_grad
from .torch import GroupNorm, _check

def _gather_over(group: Any) -> Any:
    """allgather for groupnorm.distributed's exchange: every rank's float64 array (of one shape), in rank order."""
    import torch.distributed as dist

    def allgather(a: Any) -> Any:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, t, group=group)
        return [p.numpy() for p in parts]
    return allgather


def _world(group: Any) -> Any:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _tile_spatial(x: Any) -> Any:
    return int(np.prod(x.shape[2:], dtype=np.int64))


def _sync_config(call: Any, x: Any, num_groups: Any, cl: Any, activation: Any, weight: Any, bias: Any, eps: Any,
                 stats_crc: Any = 0) -> Any:
    """What every rank of a SyncGroupNorm call must agree on (groupnorm.distributed compares it)."""
    shape = tuple(x.shape[:1]) + tuple(x.shape[2:]) + tuple(x.shape[1:2]) if cl else tuple(x.shape)
    return distributed._config(call, shape, num_groups, _NP_DTYPES[x.dtype], cl,
                               checks.activation(activation), weight is not None, bias is not None, eps,
                               stats_crc=stats_crc)


class _SyncGroupNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Any, weight: Any, bias: Any, num_groups: Any, eps: Any, activation: Any,
                group: Any) -> Any:
        cl = _channels_last(x)
        x = _canonical(x, cl)
        xa = _array(x, cl)
        threads = torch.get_num_threads()
        if _world(group):
            # every rank's count, mean, m2, merged in rank order: every rank
            # merges the same bytes in the same order, so all get the same bits
            def local() -> Any:
                m = split.moments(xa, num_groups, channels_last=cl, num_threads=threads)
                return _sync_config(4.0, x, num_groups, cl, activation, weight, bias, eps), m, _tile_spatial(x)

            m = distributed.sync_moments(_gather_over(group), 4.0, local)
        else:
            m = split.moments(xa, num_groups, channels_last=cl, num_threads=threads)
        y = _new_output(x)
        functional.group_norm(xa, num_groups, _param_array(weight), _param_array(bias), eps, channels_last=cl,
                              activation=activation, out=_array(y, cl), num_threads=threads, stats=m)
        mean, rstd = m.mean_rstd(eps)
        ctx.save_for_backward(x, weight, bias)
        ctx.stats = (mean, rstd)
        ctx.cfg = (num_groups, activation, group, cl)
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Any) -> Any:
        x, weight, bias = ctx.saved_tensors
        mean, rstd = ctx.stats
        num_groups, activation, group, cl = ctx.cfg
        grad_y = _canonical(grad_y, cl)
        xa, ga = _array(x, cl), _array(grad_y, cl)
        wa, ba = _param_array(weight), _param_array(bias)
        threads = torch.get_num_threads()

        def local() -> Any:
            return split.backward_sums(ga, xa, mean, rstd, num_groups, wa, ba, channels_last=cl, activation=activation,
                                       num_threads=threads)

        if _world(group):
            s = distributed.sync_sums(_gather_over(group), 5.0, lambda: (
                _sync_config(5.0, x, num_groups, cl, activation, weight, bias, 0.0, distributed._crc(mean, rstd)),
                local()))
        else:
            s = local()
        gx = _new_output(x)
        _, gw, gb = functional.group_norm_backward(ga, xa, mean, rstd, num_groups, wa, ba, channels_last=cl,
                                                   activation=activation, num_threads=threads, out=_array(gx, cl),
                                                   sums=s)
        gw = _param_grad(gw, weight, x) if weight is not None and ctx.needs_input_grad[1] else None
        gb = _param_grad(gb, bias, x) if bias is not None and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None, None, None


class SyncGroupNorm(GroupNorm):
    """GroupNorm of a tensor split spatially across the ranks of a torch.distributed group.

    Each rank holds a tile of the same samples: all N and C, part of the
    spatial extent (rows of an image for patch-parallel decoding, slabs of a
    volume). The forward all-gathers every rank's (N, G) moments (count, mean,
    M2: never sums of x and x^2) and merges them in rank order, so every rank
    normalizes with bitwise the same statistics, those of the whole tensor. The
    backward does the same with the (N, C) sums of the gradient; every rank
    gets its tile's grad_x and the whole tensor's grad_weight / grad_bias
    (bitwise the same on every rank: do not average them again across ranks).

    Runs on CPU tensors with any torch.distributed backend that all-gathers
    CPU tensors (gloo, MPI). Without an initialized process group (or with
    one rank) it is GroupNorm of the local tensor. The exchange is
    ``groupnorm.distributed``'s: a fixed-size header first, so ranks that
    disagree (N, C, G, dtype, layout, eps, affine, activation...) all raise
    the same ValueError naming the difference, and a rank whose own checks
    fail makes the others raise instead of waiting.

    Args:
        num_groups, num_channels, eps, affine, device, dtype, activation: as GroupNorm.
        process_group: the group to synchronize over (default: the world).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device: Any = None, dtype: Optional[torch.dtype] = None, *, activation: Optional[str] = None,
                 process_group: Any = None) -> None:
        super().__init__(num_groups, num_channels, eps, affine, device=device, dtype=dtype, activation=activation)
        self.process_group = process_group

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        try:
            self._check_channels(input)
            groups, eps, act = _check(input, self.num_groups, self.weight, self.bias, self.eps, self.activation,
                                      None)
            if input.device.type != "cpu":
                raise ValueError(f"input is on {input.device}: SyncGroupNorm runs on CPU tensors")
        except Exception as e:
            if _world(self.process_group):  # the other ranks raise too instead of waiting for this one
                distributed.raise_everywhere(_gather_over(self.process_group), 4.0, e)
            raise
        return _SyncGroupNormFn.apply(input, self.weight,  # type: ignore[no-untyped-call,no-any-return]
                                      self.bias, groups, eps, _act(act), self.process_group)
