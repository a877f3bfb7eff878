"""Split-phase group normalization: moments of tiles, a deterministic merge, apply.

For tensors that are never whole in one place: tiles of an image decoded one at
a time, slabs of a volume on disk, pieces held by the ranks of a job. A *tile*
holds whole channels of whole samples over part of the spatial extent (a slab
of rows, a box of a volume, a strided view), in either layout::

    parts = [moments(t, G) for t in tiles]          # any order of computation
    m = merge_moments(parts)                        # fixed order: the list's
    y_t = group_norm(t, G, weight, bias, eps, stats=m)   # per tile

Every statistic is merged with Chan's formula in list order, so the same tiles
in the same order give bitwise the same result for any thread count or
instruction set. The one-call ``group_norm`` is this composition: the moments
of a single tile equal to the whole tensor, applied with ``stats=``, give y
bitwise equal to ``group_norm(x, ...)``. (With ``stats=(mean, rstd)`` instead
of a ``Moments``, the mean is rounded to the stats dtype first, so y can differ
in the last bit for float32.)

The backward splits the same way: ``backward_sums`` per tile,
``merge_backward_sums`` in list order, then ``group_norm_backward(...,
sums=merged)`` gives each tile's grad_x and the whole tensor's grad_weight and
grad_bias.
"""
import numbers

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _core
from . import _checks as checks
from . import _cuda

__all__ = ["Moments", "BackwardSums", "moments", "merge_moments", "backward_sums", "merge_backward_sums"]

_I64 = np.dtype(np.int64)
_F64 = np.dtype(np.float64)
_I64_MAX = np.iinfo(np.int64).max


def _counts(count: Any) -> Any:
    """count as an int64 array of element counts: integers (or integral floats)
    in [0, 2**63); anything else (negative, fractional, NaN, too large, bool)
    is a ValueError/TypeError naming the first bad entry."""
    a = np.asarray(count)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"count must be an integer array, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float64)
        bad = ~np.isfinite(f) | (f != np.floor(f)) | (f < 0) | (f >= 2.0**63)
    elif np.issubdtype(a.dtype, np.unsignedinteger):
        bad = a > _I64_MAX
    else:
        bad = a < 0
    if bad.any():
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        raise ValueError(f"count{list(i)} is {a[i].item()!r}: a count must be a whole number in [0, 2**63)")
    return np.ascontiguousarray(a, dtype=_I64)


def _spatial_count(spatial: Any) -> Any:
    """BackwardSums.spatial as an int in [0, 2**63): an int, or an integral float."""
    if isinstance(spatial, (bool, np.bool_)) or not isinstance(spatial, numbers.Real):
        raise TypeError(f"spatial must be an int, got {type(spatial).__name__}")
    if not isinstance(spatial, numbers.Integral):
        f = float(spatial)
        if not (np.isfinite(f) and f == np.floor(f)):
            raise ValueError(f"spatial must be a whole number of elements, got {spatial!r}")
    if not 0 <= spatial <= _I64_MAX:  # type: ignore[operator]
        raise ValueError(f"spatial must be in [0, 2**63), got {spatial!r}")
    if isinstance(spatial, numbers.Integral):
        return int(spatial)
    return int(float(spatial))  # a whole float (checked above)


class Moments:
    """Per (sample, group) moments of a tile.

    Attributes:
        count: int64 array (N, G), elements of each group in the tile.
        mean: float64 array (N, G).
        m2: float64 array (N, G), sum of squared deviations from ``mean``.
        stats_dtype: dtype of the statistics ``group_norm`` uses for this data
            (float32, float64 for float64 data).
    """

    __slots__ = ("count", "mean", "m2", "stats_dtype")

    count: NDArray[np.int64]
    mean: NDArray[np.float64]
    m2: NDArray[np.float64]
    stats_dtype: np.dtype[Any]

    def __init__(self, count: ArrayLike, mean: ArrayLike, m2: ArrayLike, stats_dtype: DTypeLike = np.float32) -> None:
        count_a = _counts(count)
        mean_a = np.ascontiguousarray(mean, dtype=_F64)
        m2_a = np.ascontiguousarray(m2, dtype=_F64)
        if count_a.ndim != 2 or mean_a.shape != count_a.shape or m2_a.shape != count_a.shape:
            raise ValueError(f"count, mean and m2 must have one (N, G) shape, got {count_a.shape}, "
                             f"{mean_a.shape} and {m2_a.shape}")
        if (m2_a < 0).any():
            i = tuple(int(k) for k in np.argwhere(m2_a < 0)[0])
            raise ValueError(f"m2{list(i)} is {m2_a[i].item()!r}: a sum of squared deviations is never negative")
        self.count, self.mean, self.m2 = count_a, mean_a, m2_a
        self.stats_dtype = np.dtype(stats_dtype)
        if self.stats_dtype not in (np.dtype(np.float32), _F64):
            raise TypeError(f"stats_dtype must be float32 or float64, got {self.stats_dtype}")

    @property
    def shape(self) -> Tuple[int, ...]:
        """(N, G)."""
        return self.count.shape

    def merge(self, other: "Moments") -> "Moments":
        """The moments of this tile and ``other`` (in that order)."""
        return merge_moments([self, other])

    def mean_rstd(self, eps: float = 1e-5) -> Tuple[NDArray[Any], NDArray[Any]]:
        """(mean, rstd), each (N, G) in ``stats_dtype``, rstd = 1/sqrt(m2/count + eps).

        Computed as ``group_norm`` computes them; groups with count 0 get NaN.
        """
        mean = np.empty(self.shape, self.stats_dtype)
        rstd = np.empty(self.shape, self.stats_dtype)
        _core.mean_rstd(count=self.count, mean=self.mean, m2=self.m2, eps=checks.eps_value(eps),
                        dtype=checks.DTYPE_CODES[self.stats_dtype], mean_out=mean, rstd_out=rstd)
        return mean, rstd

    def __repr__(self) -> str:
        return f"Moments(shape={self.shape}, stats_dtype={self.stats_dtype})"


class BackwardSums:
    """Per (sample, channel) sums of a tile that the backward needs.

    Attributes:
        sum_dz: float64 array (N, C), sum of dz over the tile's elements, where
            dz is grad_y (through the SiLU when the forward had one).
        sum_dz_xc: float64 array (N, C), sum of dz * (x - mean).
        spatial: spatial elements the sums cover (the sum over merged tiles).
    """

    __slots__ = ("sum_dz", "sum_dz_xc", "spatial")

    sum_dz: NDArray[np.float64]
    sum_dz_xc: NDArray[np.float64]
    spatial: int

    def __init__(self, sum_dz: ArrayLike, sum_dz_xc: ArrayLike, spatial: int) -> None:
        sum_dz = np.ascontiguousarray(sum_dz, dtype=_F64)
        sum_dz_xc = np.ascontiguousarray(sum_dz_xc, dtype=_F64)
        if sum_dz.ndim != 2 or sum_dz_xc.shape != sum_dz.shape:
            raise ValueError(f"sum_dz and sum_dz_xc must have one (N, C) shape, got {sum_dz.shape} "
                             f"and {sum_dz_xc.shape}")
        self.sum_dz, self.sum_dz_xc, self.spatial = sum_dz, sum_dz_xc, _spatial_count(spatial)

    @property
    def shape(self) -> Tuple[int, ...]:
        """(N, C)."""
        return self.sum_dz.shape

    def merge(self, other: "BackwardSums") -> "BackwardSums":
        """The sums of this tile and ``other`` (in that order)."""
        return merge_backward_sums([self, other])

    def __repr__(self) -> str:
        return f"BackwardSums(shape={self.shape}, spatial={self.spatial})"


def _cpu_input(x: Any, name: Any) -> Any:
    if type(x) is not np.ndarray and _cuda.is_gpu_array(x):
        raise TypeError(f"{name} is a GPU array: the split-phase API runs on CPU (NumPy) arrays")
    return checks.as_input(x, name)


def moments(x_tile: Any, num_groups: int, *, channels_last: bool = False, skip: Optional[Any] = None,
            skip_bias: Optional[Any] = None, num_threads: Optional[int] = None) -> Moments:
    """Per (sample, group) moments of a tile.

    Args:
        x_tile: array (N, C, *spatial), or (N, *spatial, C) when
            ``channels_last``: whole channels of whole samples over part of
            the spatial extent. float64, float32, float16 or bfloat16; any
            strides (non-contiguous tiles are copied first).
        num_groups: G, a positive divisor of C.
        skip, skip_bias: as in ``group_norm``: the moments of x + skip (+ skip_bias),
            rounded to x's dtype as ``group_norm`` normalizes it.
        num_threads: threads for this call.

    Returns:
        a :class:`Moments` with count, mean, m2 of shape (N, G).
    """
    channels_last = checks.flag(channels_last, "channels_last")
    x = _cpu_input(x_tile, "x_tile")
    channels = checks.channels_of(x, channels_last)
    groups = checks.groups_of(num_groups)
    _core.check(channels=channels, groups=groups, eps=0.0)
    if skip is not None:
        skip = checks.same_as_x(_cpu_input(skip, "skip"), x, "skip")
    elif skip_bias is not None:
        raise ValueError("skip_bias needs skip")
    p, param_code = checks.params(x.dtype, channels, skip_bias=skip_bias)
    skip_bias = p["skip_bias"]
    n = x.shape[0]
    count = np.empty((n, groups), _I64)
    mean = np.empty((n, groups), _F64)
    m2 = np.empty((n, groups), _F64)
    _core.moments(x=x, groups=groups, channels_last=channels_last, dtype=checks.DTYPE_CODES[x.dtype], param_dtype=param_code,
                  skip=skip, skip_bias=skip_bias, count=count, mean=mean, m2=m2, num_threads=checks.threads(num_threads))
    return Moments(count, mean, m2, checks.stats_dtype(x.dtype))


def _check_parts(parts: Any, kind: Any, what: Any) -> Any:
    if isinstance(parts, kind):
        raise TypeError(f"{what} takes a list of {kind.__name__}, got one {kind.__name__}: wrap it in a list")
    parts = list(parts)
    if not parts:
        raise ValueError(f"{what} needs at least one {kind.__name__}")
    for i, p in enumerate(parts):
        if not isinstance(p, kind):
            raise TypeError(f"{what}: item {i} is a {type(p).__name__}, not a {kind.__name__}")
        if p.shape != parts[0].shape:
            raise ValueError(f"{what}: item {i} has shape {p.shape}, item 0 has {parts[0].shape} "
                             "(every tile must hold the same samples and groups)")
    return parts


def merge_moments(parts: Sequence[Moments]) -> Moments:
    """Merges a list of :class:`Moments` of the same (N, G), in list order.

    Chan's formula, applied left to right: the same list gives bitwise the same
    result on any machine. Tiles with count 0 merge as the identity. The
    result's stats_dtype is float64 if any part's is.
    """
    parts = _check_parts(parts, Moments, "merge_moments")
    shape = parts[0].shape
    count = np.empty(shape, _I64)
    mean = np.empty(shape, _F64)
    m2 = np.empty(shape, _F64)
    _core.merge_moments(parts=[(p.count, p.mean, p.m2) for p in parts], count=count, mean=mean, m2=m2)
    sd = _F64 if any(p.stats_dtype == _F64 for p in parts) else np.dtype(np.float32)
    return Moments(count, mean, m2, sd)


def given_stats(stats: Any, n: Any, groups: Any, x_dtype: Any) -> Dict[str, Any]:
    """group_norm's ``stats=`` as the core's keyword arguments: count, gmean,
    gm2 for Moments, smean, srstd for a (mean, rstd) pair."""
    if isinstance(stats, Moments):
        if stats.shape != (n, groups):
            raise ValueError(f"stats has shape {stats.shape}, but x has (N, num_groups) = {(n, groups)}")
        return dict(count=stats.count, gmean=stats.mean, gm2=stats.m2)
    if isinstance(stats, (tuple, list)) and len(stats) == 2:
        mean, rstd = checks.stats_arrays(stats[0], stats[1], n, groups, checks.stats_dtype(x_dtype))
        return dict(smean=mean, srstd=rstd)
    raise TypeError(f"stats must be a groupnorm.Moments or a (mean, rstd) pair, got {type(stats).__name__}")


def backward_sums(grad_y_tile: Any, x_tile: Any, mean: Any, rstd: Any, num_groups: int, weight: Optional[Any] = None,
                  bias: Optional[Any] = None, *, channels_last: bool = False, activation: Optional[str] = None,
                  num_threads: Optional[int] = None) -> BackwardSums:
    """Per (sample, channel) sums over a tile for the backward.

    Args:
        grad_y_tile: gradient of the loss w.r.t. this tile's y; like x_tile.
        x_tile: the forward's input tile (x + skip when skip was used).
        mean, rstd: (N, G) statistics of the whole tensor (e.g. from
            ``merge_moments(...).mean_rstd(eps)``).
        num_groups, weight, bias, channels_last, activation: as in the forward
            (bias is needed for the SiLU backward).

    Returns:
        a :class:`BackwardSums` (sum_dz, sum_dz_xc of shape (N, C), float64).
    """
    channels_last = checks.flag(channels_last, "channels_last")
    x = _cpu_input(x_tile, "x_tile")
    channels = checks.channels_of(x, channels_last)
    groups = checks.groups_of(num_groups)
    act = checks.activation(activation)
    _core.check(channels=channels, groups=groups, eps=0.0)
    grad_y = checks.same_as_x(_cpu_input(grad_y_tile, "grad_y_tile"), x, "grad_y_tile")
    n = x.shape[0]
    mean, rstd = checks.stats_arrays(mean, rstd, n, groups, checks.stats_dtype(x.dtype))
    weight, bias, param_code = checks.weight_bias(weight, bias, x.dtype, channels)
    sum_dz = np.empty((n, channels), _F64)
    sum_dz_xc = np.empty((n, channels), _F64)
    _core.backward_sums(grad_y=grad_y, x=x, mean=mean, rstd=rstd, groups=groups, weight=weight, bias=bias,
                        channels_last=channels_last, activation=act, dtype=checks.DTYPE_CODES[x.dtype], param_dtype=param_code,
                        sum_dz=sum_dz, sum_dz_xc=sum_dz_xc, num_threads=checks.threads(num_threads))
    return BackwardSums(sum_dz, sum_dz_xc, checks.geometry(x.shape, channels_last)[2])


def merge_backward_sums(parts: Sequence[BackwardSums]) -> BackwardSums:
    """Adds a list of :class:`BackwardSums` of the same (N, C), in list order."""
    parts = _check_parts(parts, BackwardSums, "merge_backward_sums")
    shape = parts[0].shape
    d = np.empty(shape, _F64)
    q = np.empty(shape, _F64)
    _core.merge_backward_sums(parts=[(p.sum_dz, p.sum_dz_xc) for p in parts], sum_dz=d, sum_dz_xc=q)
    spatial = sum(p.spatial for p in parts)
    if spatial > _I64_MAX:
        raise ValueError(f"merge_backward_sums: the merged spatial count {spatial} does not fit in int64")
    return BackwardSums(d, q, spatial)


def given_sums(sums: Any, n: Any, channels: Any, spatial: Any) -> Any:
    """group_norm_backward's ``sums=`` checked against the tile."""
    if not isinstance(sums, BackwardSums):
        raise TypeError(f"sums must be a groupnorm.BackwardSums, got {type(sums).__name__}")
    if sums.shape != (n, channels):
        raise ValueError(f"sums has shape {sums.shape}, but x has (N, C) = {(n, channels)}")
    if sums.spatial < spatial:
        raise ValueError(f"sums cover {sums.spatial} spatial elements, fewer than this tile's {spatial}: "
                         "merge the sums of every tile first")
    return sums
