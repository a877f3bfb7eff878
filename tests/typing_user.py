"""A user's script for `mypy --strict` (CI runs it, tests/test_typing.py too): the
public API's types as a user meets them. Not a pytest module; also runs."""
from typing import List, Tuple

import numpy as np
from numpy.typing import NDArray

import torch

import groupnorm
import groupnorm.distributed
import groupnorm.torch as gnt


def normalize(x: NDArray[np.float32]) -> float:
    y = groupnorm.group_norm(x, 8)
    return float(y.mean())  # an ndarray, not a union, without return_stats


def with_stats(x: NDArray[np.float32]) -> Tuple[NDArray[np.float32], ...]:
    y, mean, rstd = groupnorm.group_norm(x, 8, return_stats=True)
    gx, gw, gb = groupnorm.group_norm_backward(np.ones_like(y), x, mean, rstd, 8)
    assert gw is None and gb is None
    return y, mean, rstd, gx


def tiled(x: NDArray[np.float32]) -> NDArray[np.float32]:
    parts: List[groupnorm.Moments] = [groupnorm.moments(x[:, :, :4], 8), groupnorm.moments(x[:, :, 4:], 8)]
    stats = groupnorm.merge_moments(parts)
    mean, rstd = stats.mean_rstd(1e-5)
    shape: Tuple[int, ...] = stats.shape
    assert shape == mean.shape == rstd.shape
    return groupnorm.group_norm(x, 8, stats=stats)


def layer(x: NDArray[np.float32]) -> NDArray[np.float32]:
    norm = groupnorm.GroupNorm(8, x.shape[1])
    y = norm(x)
    norm.backward(np.ones_like(y))
    return y


def settings() -> str:
    groupnorm.set_num_threads(2)
    n: int = groupnorm.get_num_threads()
    isas: List[str] = groupnorm.available_isas()
    info = groupnorm.buffer_cache_info()
    return f"{groupnorm.__version__} {n} {isas} {groupnorm.active_isa()} {info['limit_bytes']}"


def distributed(x: NDArray[np.float32]) -> NDArray[np.float32]:
    def allgather(a: NDArray[np.float32]) -> List[NDArray[np.float32]]:
        return [a]
    return groupnorm.distributed.group_norm(x, 8, allgather=allgather)


def with_torch(x: torch.Tensor) -> Tuple[torch.Tensor, int, List[str]]:
    y: torch.Tensor = gnt.group_norm(x, 8, activation="silu")
    model = torch.nn.Sequential(torch.nn.GroupNorm(8, x.shape[1]))
    n: int = gnt.replace_group_norm(model)
    layer = gnt.GroupNorm(8, x.shape[1], activation="silu")
    return layer(y) + model(x), n, gnt.openmp_runtimes()


def variable_flag(x: NDArray[np.float32], want_stats: bool) -> int:
    out = groupnorm.group_norm(x, 8, return_stats=want_stats)  # a union when the flag is not a literal
    return len(out) if isinstance(out, tuple) else out.ndim


if __name__ == "__main__":
    x = np.random.default_rng(0).standard_normal((2, 16, 8, 8)).astype(np.float32)
    print(normalize(x), len(with_stats(x)), tiled(x).shape, layer(x).shape, settings(), distributed(x).shape,
          with_torch(torch.from_numpy(x))[1], variable_flag(x, True), variable_flag(x, False))
