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
the list of every rank's array, in rank order, the same list on every rank,
each array unchanged (same dtype, shape and values). It is called twice per
call: a fixed-size header (so ranks that disagree all raise the same
ValueError, and a rank whose own checks fail makes the others raise instead of
waiting), then the moments or sums, checked against the headers before use.
With torch.distributed::

    import torch.distributed as dist

    def allgather(a):
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, a)
        return out

    y = groupnorm.distributed.group_norm(x_local, 32, w, b, allgather=allgather)
"""
import math
import zlib

from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Union, overload

import numpy as np
from numpy.typing import NDArray

from . import _checks as checks
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


# --------------------------------------------------------------------------- the exchange
#
# Every collective call (here and in groupnorm.torch.SyncGroupNorm) is two all-gathers:
#   1. a header, float64 of one fixed shape on every rank, whatever the ranks hold: what the
#      call is (N, C, G, dtype, layout, ...), whether the rank's own checks passed, its tile's
#      spatial size (exact) and a checksum of its payload. Every rank compares every header
#      and raises the same ValueError on any disagreement, so no rank enters the second
#      all-gather with a payload of another size (gloo aborts the process on that).
#   2. the payload (moments or backward sums), float64, the same shape on every rank once
#      the headers agree; each part is checked (dtype, shape, counts against the header,
#      finiteness, checksum) before anything is merged or written.

_HEADER_SHAPE = (3, 2, 8)  # float64 like the payloads, so a transport written for them carries it
_MAGIC, _VERSION = 1735289202.0, 1.0
_EXACT = 2 ** 53  # integers up to here travel exactly as float64
_I64_MAX = 2 ** 63 - 1
_CALLS = {1.0: "group_norm", 2.0: "group_norm_backward", 3.0: "merged_moments", 4.0: "SyncGroupNorm.forward",
          5.0: "SyncGroupNorm.backward"}
_DTYPE_NAMES = {float(code): str(d) for d, code in checks.DTYPE_CODES.items()}
_ACTIVATIONS = {float(checks.activation(None)): "None", float(checks.activation("silu")): "'silu'"}


def _yes_no(v: Any) -> Any:
    return "given" if v else "None"


# compared fields: slot, name in messages, how a value reads
_FIELDS = (
    (2, "call", lambda v: _CALLS.get(v, repr(v))),
    (3, "batch size (N)", int),
    (4, "num_channels", int),
    (5, "num_groups", int),
    (6, "dtype", lambda v: _DTYPE_NAMES.get(v, repr(v))),
    (7, "layout", lambda v: "channels_last" if v else "channels-first"),
    (8, "number of spatial dims", int),
    (9, "activation", lambda v: _ACTIVATIONS.get(v, repr(v))),
    (10, "weight", _yes_no),
    (11, "bias", _yes_no),
    (12, "eps", float),
    (13, "skip", _yes_no),
    (14, "skip_bias", _yes_no),
    (15, "mean/rstd (checksum)", lambda v: f"{int(v):08x}"),
)
_ERROR, _SPATIAL, _CRC, _NONFINITE = 16, 17, 18, 19
_SLOTS = int(np.prod(_HEADER_SHAPE))


def _crc(*arrays: Any) -> Any:
    """CRC-32 of float arrays' float64 bytes, NaNs canonical (a transport may change NaN payloads)."""
    c = 0
    for a in arrays:
        a = np.ascontiguousarray(a, dtype=np.float64)
        if not np.isfinite(a).all():
            a = np.ascontiguousarray(np.where(np.isnan(a), np.nan, a))
        c = zlib.crc32(a.tobytes(), c)
    return c


def _config(call: Any, x_shape: Any, num_groups: Any, dtype: Any, channels_last: Any, activation_code: Any,
            weight: Any = False, bias: Any = False, eps: Any = 0.0,
            skip: Any = False, skip_bias: Any = False, stats_crc: Any = 0) -> Any:
    """The compared part of a header, from arguments that passed this rank's checks."""
    return {2: call, 3: x_shape[0], 4: x_shape[-1] if channels_last else x_shape[1], 5: num_groups,
            6: checks.DTYPE_CODES[np.dtype(dtype)], 7: bool(channels_last), 8: len(x_shape) - 2, 9: activation_code,
            10: bool(weight), 11: bool(bias), 12: eps, 13: bool(skip), 14: bool(skip_bias), 15: stats_crc}


def _header(call: Any, cfg: Any = None, spatial: Any = 0, payload: Any = None) -> Any:
    h = np.zeros(_SLOTS, np.float64)
    h[0], h[1], h[2] = _MAGIC, _VERSION, call
    if cfg is None:  # this rank's own checks failed
        h[_ERROR] = 1.0
    else:
        for slot, v in cfg.items():
            h[slot] = float(v)
        h[_SPATIAL] = float(spatial)
        h[_CRC] = float(_crc(payload))
        h[_NONFINITE] = float(not np.isfinite(payload).all())
    return h.reshape(_HEADER_SHAPE)


def _ranks(rs: Any) -> Any:
    rs = list(rs)
    shown = ", ".join(str(r) for r in rs[:8]) + (", ..." if len(rs) > 8 else "")
    return f"rank {shown}" if len(rs) == 1 else f"ranks {shown}"


def _as_parts(parts: Any, what: Any) -> Any:
    if isinstance(parts, np.ndarray) or not hasattr(parts, "__iter__"):
        raise TypeError(f"allgather must return a list of arrays (one per rank), got {type(parts).__name__} "
                        f"for the {what}")
    out = []
    for r, p in enumerate(parts):
        try:
            out.append(np.asarray(p))
        except Exception as e:
            raise TypeError(f"allgather returned for rank {r}'s {what} a {type(p).__name__} that is not an "
                            f"array: {e}") from None
    if not out:
        raise ValueError(f"allgather returned no arrays for the {what}")
    return out


def _check_part(r: Any, p: Any, sent: Any, what: Any) -> Any:
    if p.dtype != sent.dtype:
        raise ValueError(f"allgather returned rank {r}'s {what} as {p.dtype}, sent as {sent.dtype}: it must "
                         "return every rank's array unchanged")
    if p.shape != sent.shape:
        raise ValueError(f"allgather returned rank {r}'s {what} with shape {p.shape}, this rank's have shape "
                         f"{sent.shape}: it must return every rank's array unchanged")


def _header_problem(f: Any) -> Any:
    """What is wrong with a gathered header (a list of floats), or None. Plain Python: headers are short."""
    if f[0] != _MAGIC or f[1] != _VERSION:
        return "it does not start with groupnorm's mark and version"
    if f[2] not in _CALLS or f[_ERROR] not in (0.0, 1.0):
        return "its call or error flag is not one groupnorm writes"
    if f[_ERROR] == 1.0:
        return None
    if not all(0 <= f[i] <= _EXACT and f[i] == int(f[i]) for i in (3, 4, 5, 8, _SPATIAL, _CRC)):
        return "its sizes are not non-negative integers"
    if f[_SPATIAL] * max(f[4] // max(f[5], 1), 1) > _EXACT:
        return f"its tile's count of {f[_SPATIAL]:.17g} spatial elements per channel is out of range"
    if (not math.isfinite(f[12]) or f[6] not in _DTYPE_NAMES or f[9] not in _ACTIVATIONS
            or not all(f[i] in (0.0, 1.0) for i in (7, 10, 11, 13, 14, _NONFINITE))):
        return "its dtype, eps, activation or flags are not values groupnorm writes"
    return None


def _exchange_headers(gather: Any, h: Any, err: Any) -> Any:
    """All-gathers h; returns every rank's header (lists of floats), or raises the same error on every rank."""
    heads = _as_parts(gather(h), "header")
    for r, p in enumerate(heads):
        _check_part(r, p, h, "header")
    heads = [p.reshape(-1).tolist() for p in heads]
    for r, f in enumerate(heads):
        bad = _header_problem(f)
        if bad:
            raise ValueError(f"allgather returned for rank {r} a header that groupnorm did not write ({bad}): "
                             "it must return every rank's array unchanged, in rank order")
    if h.reshape(-1).tolist() not in heads:
        raise ValueError(f"allgather returned {len(heads)} headers and none is this rank's own: it must return "
                         "every rank's array unchanged, this rank's included")
    failed = [r for r, f in enumerate(heads) if f[_ERROR]]
    if failed:
        if err is not None:
            raise err
        raise ValueError(f"{_ranks(failed)} of {len(heads)} failed {'its' if len(failed) == 1 else 'their'} "
                         f"own argument checks in {_CALLS[heads[failed[0]][2]]} (see that rank's error); every "
                         "rank raises so that none waits in a collective")
    if all(f[2:16] == heads[0][2:16] for f in heads):
        return heads
    problems = []
    same_call = all(f[2] == heads[0][2] for f in heads)
    for slot, name, fmt in _FIELDS if same_call else _FIELDS[:1]:  # different calls: the rest does not compare
        vals = [f[slot] for f in heads]
        if len(set(vals)) == 1:
            continue
        groups: Dict[Any, List[int]] = {}
        for r, v in enumerate(vals):
            groups.setdefault(v, []).append(r)
        problems.append(f"{name} differs between ranks: " + ", ".join(
            f"{_ranks(rs)} {'has' if len(rs) == 1 else 'have'} {fmt(v)}" for v, rs in groups.items()))
    raise ValueError("; ".join(problems) + " (every rank must call with the same samples, channels, "
                     "groups, dtype, layout and arguments; only the spatial extent of the tiles may differ)")


def _exchange(gather: Any, call: Any, local: Any) -> Any:
    """The two all-gathers of one collective call.

    local() runs this rank's checks and computation and returns (cfg, spatial,
    payload, extra); an exception there is raised here after the header
    exchange, and every other rank raises too. Returns (heads, parts, extra),
    parts checked for dtype, shape, checksum and finiteness against the
    headers.
    """
    try:
        cfg, spatial, payload, extra = local()
    except Exception as e:
        _exchange_headers(gather, _header(call), e)
        raise  # (not reached: _exchange_headers raises e)
    h = _header(call, cfg, spatial, payload)
    heads = _exchange_headers(gather, h, None)
    what = "moments" if call in (1.0, 3.0, 4.0) else "backward sums"
    parts = _as_parts(gather(payload), what)
    if len(parts) != len(heads):
        raise ValueError(f"allgather returned {len(parts)} arrays of {what} but {len(heads)} headers: it must "
                         "return one array per rank, every time")
    return heads, parts, extra


def _check_finite(r: Any, head: Any, p: Any, what: Any, names: Any) -> Any:
    """Parts of a rank whose own payload was finite must arrive finite (else: a corrupt transport)."""
    if head[_NONFINITE]:
        return
    for name, a in names:
        bad = np.argwhere(~np.isfinite(a))
        if bad.size:
            raise ValueError(f"allgather returned rank {r}'s {what} with {name} {float(a[tuple(bad[0])])!r} at "
                             f"{tuple(int(i) for i in bad[0])}, but that rank's were all finite: it must return "
                             "every rank's array unchanged")


def _check_crc(r: Any, head: Any, p: Any, what: Any) -> Any:
    if _crc(p) != int(head[_CRC]):
        raise ValueError(f"allgather returned rank {r}'s {what} with values other than those the rank sent "
                         "(checksum differs): it must return every rank's array unchanged")


def _parts_clean(heads: Any, A: Any, counts: Any, nonneg: Any) -> Any:
    """Every part's counts, finiteness, sign of M2 and checksum as its header says (vectorized)."""
    R = len(A)
    with np.errstate(invalid="ignore"):
        if counts is not None and not (A[:, 0] == counts.reshape((R,) + (1,) * (A.ndim - 2))).all():
            return False
        vals = A[:, 1:] if counts is not None else A
        finite = np.isfinite(vals.reshape(R, -1)).all(axis=1)
        if not all(ok or h[_NONFINITE] for ok, h in zip(finite.tolist(), heads)):
            return False
        if nonneg is not None and (A[:, nonneg] < 0).any():
            return False
    return all(_crc(a) == int(h[_CRC]) for a, h in zip(A, heads))


def _merge_moments(heads: Any, parts: Any, m: Any) -> Any:
    """The Moments of every rank merged in rank order, after checking each part against its header."""
    n, g = m.shape
    cpg = int(heads[0][4]) // g
    for r, p in enumerate(parts):
        _check_part(r, p, np.empty((3, n, g)), "moments")
    counts = [int(h[_SPATIAL]) * cpg for h in heads]
    if sum(counts) > _I64_MAX:
        raise ValueError(f"the ranks' tiles hold {sum(counts)} elements per group in all, more than an int64 count "
                         "holds")
    A = np.stack(parts)
    if not _parts_clean(heads, A, np.array(counts, np.float64), 2):
        for r, (head, p, count) in enumerate(zip(heads, parts, counts)):
            wrong = np.argwhere(p[0] != count)
            if wrong.size:
                i = tuple(int(k) for k in wrong[0])
                raise ValueError(f"allgather returned rank {r}'s moments with count {float(p[0][i])!r} for (sample, "
                                 f"group) {i}, but its tile holds {count} elements per group: it must return every "
                                 "rank's array unchanged")
            _check_finite(r, head, p, "moments", (("mean", p[1]), ("M2", p[2])))
            neg = np.argwhere(p[2] < 0)
            if neg.size:
                raise ValueError(f"allgather returned rank {r}'s moments with a negative M2 "
                                 f"{float(p[2][tuple(neg[0])])!r} at {tuple(int(k) for k in neg[0])}: it must "
                                 "return every rank's array unchanged")
            _check_crc(r, head, p, "moments")
    return split.merge_moments([split.Moments(np.full((n, g), count, np.int64), p[1], p[2], m.stats_dtype)
                                for p, count in zip(parts, counts)])


def _merge_sums(heads: Any, parts: Any, s: Any) -> Any:
    """The BackwardSums of every rank added in rank order, after checking each part against its header."""
    for r, p in enumerate(parts):
        _check_part(r, p, np.empty((2,) + s.shape), "backward sums")
    spatial = [int(h[_SPATIAL]) for h in heads]
    if sum(spatial) > _I64_MAX:
        raise ValueError(f"the ranks' tiles hold {sum(spatial)} spatial elements in all, more than int64 holds")
    if not _parts_clean(heads, np.stack(parts), None, None):
        for r, (head, p) in enumerate(zip(heads, parts)):
            _check_finite(r, head, p, "backward sums", (("sum_dz", p[0]), ("sum_dz_xc", p[1])))
            _check_crc(r, head, p, "backward sums")
    return split.merge_backward_sums([split.BackwardSums(p[0], p[1], sp) for p, sp in zip(parts, spatial)])


def sync_moments(gather: Any, call: Any, local: Any) -> Any:
    """Moments merged over the ranks: local() -> (cfg, Moments, spatial) for this rank."""
    def run() -> Any:
        cfg, m, spatial = local()
        return cfg, spatial, np.stack([m.count.astype(np.float64), m.mean, m.m2]), m
    heads, parts, m = _exchange(gather, call, run)
    return _merge_moments(heads, parts, m)


def sync_sums(gather: Any, call: Any, local: Any) -> Any:
    """BackwardSums added over the ranks: local() -> (cfg, BackwardSums) for this rank."""
    def run() -> Any:
        cfg, s = local()
        return cfg, s.spatial, np.stack([s.sum_dz, s.sum_dz_xc]), s
    heads, parts, s = _exchange(gather, call, run)
    return _merge_sums(heads, parts, s)


def raise_everywhere(gather: Any, call: Any, err: Any) -> Any:
    """This rank failed before its collective call: tell the others (so they raise too), raise err."""
    _exchange_headers(gather, _header(call), err)
    raise err


def _spatial_of(x: Any, channels_last: Any) -> Any:
    sp = x.shape[1:-1] if channels_last else x.shape[2:]
    return int(np.prod(sp, dtype=np.int64))


def _moments_call(call: Any, gather: Any, x_local: Any, num_groups: Any, channels_last: Any, skip: Any,
                  skip_bias: Any, num_threads: Any, weight: Any = None,
                  bias: Any = None, eps: Any = 0.0, activation: Any = None) -> Any:
    def local() -> Any:
        x = checks.as_input(x_local, "x_local")
        m = split.moments(x, num_groups, channels_last=channels_last, skip=skip, skip_bias=skip_bias,
                          num_threads=num_threads)
        cfg = _config(call, x.shape, m.shape[1], x.dtype, channels_last, checks.activation(activation),
                      weight is not None, bias is not None, checks.eps_value(eps), skip is not None,
                      skip_bias is not None)
        return cfg, m, _spatial_of(x, channels_last)
    return sync_moments(gather, call, local)


def merged_moments(x_local: Any, num_groups: int, *, comm: Any = None, allgather: Optional[AllGather] = None,
                   channels_last: bool = False, skip: Optional[Any] = None, skip_bias: Optional[Any] = None,
                   num_threads: Optional[int] = None) -> split.Moments:
    """The moments of the whole distributed tensor (a ``groupnorm.Moments``), same on every rank."""
    gather = _collective(comm, allgather)
    m: split.Moments = _moments_call(3.0, gather, x_local, num_groups, channels_last, skip, skip_bias, num_threads)
    return m


@overload
def group_norm(x_local: Any, num_groups: int, weight: Optional[Any] = None, bias: Optional[Any] = None,
               eps: float = 1e-5,
               *, comm: Any = None, allgather: Optional[AllGather] = None, channels_last: bool = False,
               activation: Optional[str] = None, out: Optional[Any] = None, return_stats: Literal[False] = False,
               num_threads: Optional[int] = None, skip: Optional[Any] = None, skip_bias: Optional[Any] = None,
               sum_out: Optional[Any] = None) -> NDArray[Any]: ...


@overload
def group_norm(x_local: Any, num_groups: int, weight: Optional[Any] = None, bias: Optional[Any] = None,
               eps: float = 1e-5,
               *, comm: Any = None, allgather: Optional[AllGather] = None, channels_last: bool = False,
               activation: Optional[str] = None, out: Optional[Any] = None, return_stats: Literal[True],
               num_threads: Optional[int] = None, skip: Optional[Any] = None, skip_bias: Optional[Any] = None,
               sum_out: Optional[Any] = None) -> Tuple[NDArray[Any], NDArray[Any], NDArray[Any]]: ...


@overload
def group_norm(x_local: Any, num_groups: int, weight: Optional[Any] = None, bias: Optional[Any] = None,
               eps: float = 1e-5,
               *, comm: Any = None, allgather: Optional[AllGather] = None, channels_last: bool = False,
               activation: Optional[str] = None, out: Optional[Any] = None, return_stats: bool = False,
               num_threads: Optional[int] = None, skip: Optional[Any] = None, skip_bias: Optional[Any] = None,
               sum_out: Optional[Any] = None,
               ) -> Union[NDArray[Any], Tuple[NDArray[Any], NDArray[Any], NDArray[Any]]]: ...


def group_norm(x_local: Any, num_groups: int, weight: Optional[Any] = None, bias: Optional[Any] = None,
               eps: float = 1e-5,
               *, comm: Any = None, allgather: Optional[AllGather] = None, channels_last: bool = False,
               activation: Optional[str] = None, out: Optional[Any] = None, return_stats: bool = False,
               num_threads: Optional[int] = None, skip: Optional[Any] = None, skip_bias: Optional[Any] = None,
               sum_out: Optional[Any] = None,
               ) -> Union[NDArray[Any], Tuple[NDArray[Any], NDArray[Any], NDArray[Any]]]:
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
    gather = _collective(comm, allgather)
    m = _moments_call(1.0, gather, x_local, num_groups, channels_last, skip, skip_bias, num_threads, weight, bias,
                      eps, activation)
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

    def local() -> Any:
        x = checks.as_input(x_local, "x_local")
        s = split.backward_sums(grad_y_local, x, mean, rstd, num_groups, weight, bias, channels_last=channels_last,
                                activation=activation, num_threads=num_threads)
        cfg = _config(2.0, x.shape, checks.groups_of(num_groups), x.dtype, channels_last, checks.activation(activation),
                      weight is not None, bias is not None, stats_crc=_crc(mean, rstd))
        return cfg, s

    sums = sync_sums(gather, 2.0, local)
    return functional.group_norm_backward(grad_y_local, x_local, mean, rstd, num_groups, weight, bias,
                                          channels_last=channels_last, activation=activation,
                                          num_threads=num_threads, out=out, sums=sums)
