"""Group normalization of a tensor spread over processes (patch- or slab-parallel).

Each process holds a tile of the tensor: whole channels of whole samples over
part of the spatial extent (every process the same N and C). A call computes
the local moments, all-gathers the (N, G) moments, merges them in rank order
and applies: every rank gets bitwise the same statistics, the ones
``groupnorm.merge_moments`` gives for the ranks' tiles in rank order. Only
(N, G) moments (and, in the backward, (N, C) sums) travel; never sums of x and
x^2.

The collective is an existing engine's: mpi4py's ``comm.allgather`` by default
(``COMM_WORLD`` unless ``comm=``), or any ``allgather=`` callable for
torch.distributed, Dask, Ray...: it takes this rank's NumPy array and returns
the list of every rank's array, in rank order, the same list on every rank.
With torch.distributed::

    import torch.distributed as dist

    def allgather(a):
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, a)
        return out

    y = groupnorm.distributed.group_norm(x_local, 32, w, b, allgather=allgather)
"""
from typing import Any, Callable, List, Literal, Optional, Tuple, Union, overload

import numpy as np
from numpy.typing import NDArray

from . import functional
from . import split

__all__ = ["group_norm", "group_norm_backward", "merged_moments", "AllGather"]

# allgather(this rank's array) -> every rank's array, in rank order
AllGather = Callable[[NDArray[Any]], List[NDArray[Any]]]


def _mpi_allgather(comm: Any) -> Any:
    if comm is None:
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise ImportError("groupnorm.distributed needs mpi4py for its default collective "
                              "(pip install mpi4py mpich), or pass allgather= with your own collective") from e
        comm = MPI.COMM_WORLD
    if not hasattr(comm, "allgather"):
        raise TypeError(f"comm must be an mpi4py communicator, got {type(comm).__name__}")
    return comm.allgather


def _collective(comm: Any, allgather: Any) -> Any:
    if allgather is not None:
        if comm is not None:
            raise ValueError("pass comm= or allgather=, not both")
        if not callable(allgather):
            raise TypeError(f"allgather must be callable, got {type(allgather).__name__}")
        return allgather
    return _mpi_allgather(comm)


def _gather(gather: Any, a: Any, what: Any) -> Any:
    parts = gather(a)
    try:
        parts = [np.asarray(p) for p in parts]
    except TypeError:
        raise TypeError(f"allgather must return a list of arrays (one per rank), got {type(parts).__name__}") \
            from None
    if not parts:
        raise ValueError("allgather returned no arrays")
    for r, p in enumerate(parts):
        if p.shape != a.shape:
            raise ValueError(f"rank {r} sent {p.size} values of {what}, this rank {a.size}: "
                             "every rank must hold the same samples and channels")
    return parts


def merged_moments(x_local: Any, num_groups: int, *, comm: Any = None, allgather: Optional[AllGather] = None,
                   channels_last: bool = False, skip: Optional[Any] = None, skip_bias: Optional[Any] = None,
                   num_threads: Optional[int] = None) -> split.Moments:
    """The moments of the whole distributed tensor (a ``groupnorm.Moments``), same on every rank."""
    gather = _collective(comm, allgather)
    m = split.moments(x_local, num_groups, channels_last=channels_last, skip=skip, skip_bias=skip_bias,
                      num_threads=num_threads)
    # one float64 array (counts are exact below 2**53): count, mean, m2
    packed = np.stack([m.count.astype(np.float64), m.mean, m.m2])
    parts = _gather(gather, packed, "moments")
    return split.merge_moments([split.Moments(p[0].astype(np.int64), p[1], p[2], m.stats_dtype) for p in parts])


@overload
def group_norm(x_local: Any, num_groups: int, weight: Optional[Any] = None, bias: Optional[Any] = None, eps: float = 1e-5,
               *, comm: Any = None, allgather: Optional[AllGather] = None, channels_last: bool = False,
               activation: Optional[str] = None, out: Optional[Any] = None, return_stats: Literal[False] = False,
               num_threads: Optional[int] = None, skip: Optional[Any] = None, skip_bias: Optional[Any] = None,
               sum_out: Optional[Any] = None) -> NDArray[Any]: ...


@overload
def group_norm(x_local: Any, num_groups: int, weight: Optional[Any] = None, bias: Optional[Any] = None, eps: float = 1e-5,
               *, comm: Any = None, allgather: Optional[AllGather] = None, channels_last: bool = False,
               activation: Optional[str] = None, out: Optional[Any] = None, return_stats: Literal[True],
               num_threads: Optional[int] = None, skip: Optional[Any] = None, skip_bias: Optional[Any] = None,
               sum_out: Optional[Any] = None) -> Tuple[NDArray[Any], NDArray[Any], NDArray[Any]]: ...


@overload
def group_norm(x_local: Any, num_groups: int, weight: Optional[Any] = None, bias: Optional[Any] = None, eps: float = 1e-5,
               *, comm: Any = None, allgather: Optional[AllGather] = None, channels_last: bool = False,
               activation: Optional[str] = None, out: Optional[Any] = None, return_stats: bool = False,
               num_threads: Optional[int] = None, skip: Optional[Any] = None, skip_bias: Optional[Any] = None,
               sum_out: Optional[Any] = None) -> Union[NDArray[Any], Tuple[NDArray[Any], NDArray[Any], NDArray[Any]]]: ...


def group_norm(x_local: Any, num_groups: int, weight: Optional[Any] = None, bias: Optional[Any] = None, eps: float = 1e-5,
               *, comm: Any = None, allgather: Optional[AllGather] = None, channels_last: bool = False,
               activation: Optional[str] = None, out: Optional[Any] = None, return_stats: bool = False,
               num_threads: Optional[int] = None, skip: Optional[Any] = None, skip_bias: Optional[Any] = None,
               sum_out: Optional[Any] = None) -> Union[NDArray[Any], Tuple[NDArray[Any], NDArray[Any], NDArray[Any]]]:
    """``groupnorm.group_norm`` of the tensor whose tiles the ranks hold; returns this rank's y.

    Args:
        x_local: this rank's tile, (N, C, *spatial) or (N, *spatial, C) when
            ``channels_last``; every rank the same N and C, any spatial part.
        comm: an mpi4py communicator (default ``MPI.COMM_WORLD``).
        allgather: instead of comm, a callable ``allgather(array) -> list of
            arrays`` in rank order (see the module docstring).
        Other arguments: as ``groupnorm.group_norm``.

    Returns:
        this rank's y; with return_stats, (y, mean, rstd) with the global
        (N, G) statistics, bitwise the same on every rank.
    """
    m = merged_moments(x_local, num_groups, comm=comm, allgather=allgather, channels_last=channels_last,
                       skip=skip, skip_bias=skip_bias, num_threads=num_threads)
    return functional.group_norm(x_local, num_groups, weight, bias, eps, channels_last=channels_last,
                                 activation=activation, out=out, return_stats=return_stats,
                                 num_threads=num_threads, skip=skip, skip_bias=skip_bias, sum_out=sum_out,
                                 stats=m)


def group_norm_backward(grad_y_local: Any, x_local: Any, mean: Any, rstd: Any, num_groups: int,
                        weight: Optional[Any] = None, bias: Optional[Any] = None, *, comm: Any = None,
                        allgather: Optional[AllGather] = None, channels_last: bool = False,
                        activation: Optional[str] = None, num_threads: Optional[int] = None, out: Optional[Any] = None,
                        ) -> Tuple[NDArray[Any], Optional[NDArray[Any]], Optional[NDArray[Any]]]:
    """The backward of :func:`group_norm`: this rank's grad_x, the global grad_weight/grad_bias.

    mean and rstd are the global statistics (``return_stats=True`` of the
    distributed forward). grad_weight and grad_bias are bitwise the same on
    every rank.
    """
    gather = _collective(comm, allgather)
    s = split.backward_sums(grad_y_local, x_local, mean, rstd, num_groups, weight, bias,
                            channels_last=channels_last, activation=activation, num_threads=num_threads)
    nc = s.sum_dz.size
    # one float64 array: sum_dz, sum_dz_xc, then the spatial size (exact below 2**53)
    packed = np.concatenate([s.sum_dz.ravel(), s.sum_dz_xc.ravel(), [float(s.spatial)]])
    parts = _gather(gather, packed, "backward sums")
    sums = split.merge_backward_sums([split.BackwardSums(p[:nc].reshape(s.shape), p[nc:2 * nc].reshape(s.shape),
                                                         int(p[2 * nc])) for p in parts])
    return functional.group_norm_backward(grad_y_local, x_local, mean, rstd, num_groups, weight, bias,
                                          channels_last=channels_last, activation=activation,
                                          num_threads=num_threads, out=out, sums=sums)
