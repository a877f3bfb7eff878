"""Split-phase API: moments of tiles, merge in list order, apply with given stats, backward sums.

Tiled results are compared with the float64 reference (conftest) and with the
one-call path; bitwise checks are only between runs of the library itself
(threads, ISAs, one tile == whole tensor).
"""
import itertools

import numpy as np
import pytest

from conftest import (ALL_DTYPES, BF16, F16, F32, F64, HALF_DTYPES, assert_bitwise_equal, assert_close,
                      assert_within_ulps, dtype_id, make_shape, poison, ref_backward, ref_forward, ref_stats)

TOL = {F32: dict(rtol=2e-5, atol=2e-5), F64: dict(rtol=1e-11, atol=1e-11)}
BTOL = {F32: dict(rtol=1e-4, atol=2e-5), F64: dict(rtol=1e-10, atol=1e-11)}


# --------------------------------------------------------------------------- tilings


def slab_cuts(rng, length, ntiles):
    """ntiles uneven [a, b) pieces covering [0, length); some may be empty."""
    cuts = np.sort(rng.integers(0, length + 1, size=ntiles - 1))
    edges = [0] + [int(c) for c in cuts] + [length]
    return list(zip(edges[:-1], edges[1:]))


def slabs(rng, shape, channels_last, ntiles, axis=0):
    """Index tuples of slabs along spatial axis `axis`."""
    first = 1 if channels_last else 2
    ax = first + axis
    out = []
    for a, b in slab_cuts(rng, shape[ax], ntiles):
        idx = [slice(None)] * len(shape)
        idx[ax] = slice(a, b)
        out.append(tuple(idx))
    return out


def boxes(rng, shape, channels_last, per_axis):
    """Index tuples of boxes: every spatial axis cut into per_axis uneven pieces."""
    first = 1 if channels_last else 2
    nsp = len(shape) - 2
    pieces = [slab_cuts(rng, shape[first + i], per_axis) for i in range(nsp)]
    out = []
    for combo in itertools.product(*pieces):
        idx = [slice(None)] * len(shape)
        for i, (a, b) in enumerate(combo):
            idx[first + i] = slice(a, b)
        out.append(tuple(idx))
    return out


def tiled_forward(gn, x, G, tiles, channels_last, eps=1e-5, weight=None, bias=None, activation=None, skip=None,
                  skip_bias=None, num_threads=None):
    """moments of every tile, merged in tile order, applied tile by tile; y assembled (poisoned first)."""
    parts = [gn.moments(x[t], G, channels_last=channels_last, num_threads=num_threads,
                        skip=None if skip is None else skip[t], skip_bias=skip_bias) for t in tiles]
    m = gn.merge_moments(parts)
    y = poison(x.shape, x.dtype)
    for t in tiles:
        out = poison(x[t].shape, x.dtype)
        r = gn.group_norm(x[t], G, weight, bias, eps, channels_last=channels_last, activation=activation,
                          skip=None if skip is None else skip[t], skip_bias=skip_bias, stats=m, out=out,
                          num_threads=num_threads)
        assert r is out
        y[t] = out
    return y, m


def check_vs_one_call(y, y1):
    """Tiled and one-call y differ only by the rounding of the statistics."""
    if y.dtype in (F32, F64):
        assert_close(y, y1, what="tiled vs one-call", **TOL[y.dtype])
    else:
        assert_within_ulps(y, y1.astype(np.float64), y.dtype, ulps=1, atol=1e-6, what="tiled vs one-call")


def check_vs_reference(y, x, G, w, b, cl, activation, eps=1e-5):
    ref, _, _ = ref_forward(x, G, w, b, eps, channels_last=cl, activation=activation)
    if x.dtype in (F32, F64):
        assert_close(y, ref, what="tiled y", **TOL[x.dtype])
    else:
        assert_within_ulps(y, ref, x.dtype, ulps=4, atol=1e-3 * max(1.0, np.abs(ref).max()), what="tiled y")


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("ntiles", [1, 2, 3, 7, 64])
def test_slabs_match_whole(gn, rng, dtype, channels_last, ntiles):
    N, C, G = 2, 24, 6
    shape = make_shape(N, C, (70, 9), channels_last)
    x = rng.x(shape, dtype)
    w, b = rng.params(C)
    tiles = slabs(rng.rng, shape, channels_last, ntiles)
    y, m = tiled_forward(gn, x, G, tiles, channels_last, weight=w, bias=b)
    check_vs_reference(y, x, G, w, b, channels_last, None)
    # the merged statistics are the whole tensor's
    mref, rref = ref_stats(x, G, 1e-5, channels_last)
    assert m.count.dtype == np.int64 and m.mean.dtype == F64 and m.m2.dtype == F64
    assert (m.count == C // G * 70 * 9).all()
    mean, rstd = m.mean_rstd(1e-5)
    sd = F64 if dtype == F64 else F32
    assert mean.dtype == sd and rstd.dtype == sd
    r = 1e-11 if dtype == F64 else 2e-5  # the one-call path's tolerance (test_forward)
    assert_close(mean, mref, rtol=r, atol=r, what="merged mean")
    assert_close(rstd, rref, rtol=r, atol=0, what="merged rstd")
    # and agree with the one-call path within rounding of the output dtype
    y1 = gn.group_norm(x, G, w, b, channels_last=channels_last)
    check_vs_one_call(y, y1)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_boxes_of_volume_with_activation_and_skip(gn, rng, dtype, channels_last):
    N, C, G = 2, 16, 4
    shape = make_shape(N, C, (9, 10, 11), channels_last)
    x = rng.x(shape, dtype)
    skip = rng.x(shape, dtype)
    sb = rng.normal(C, F32)
    w, b = rng.params(C)
    tiles = boxes(rng.rng, shape, channels_last, 3)  # 27 strided boxes, some possibly empty
    y, _ = tiled_forward(gn, x, G, tiles, channels_last, weight=w, bias=b, activation="silu", skip=skip,
                         skip_bias=sb)
    # what group_norm normalizes with skip: x + skip + skip_bias rounded to x's dtype
    s = (x.astype(np.float64 if dtype == F64 else np.float32) + skip.astype(np.float64 if dtype == F64 else np.float32)
         + (sb if channels_last else sb.reshape(C, 1, 1, 1))).astype(dtype)
    check_vs_reference(y, s, G, w, b, channels_last, "silu")
    y1 = gn.group_norm(x, G, w, b, channels_last=channels_last, activation="silu", skip=skip, skip_bias=sb)
    check_vs_one_call(y, y1)


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_strided_tiles(gn, rng, channels_last):
    """Tiles as arbitrary views: every other row, interleaved (still a partition of the spatial extent)."""
    N, C, G = 3, 8, 2
    shape = make_shape(N, C, (12, 10), channels_last)
    x = rng.x(shape, F32)
    ax = 1 if channels_last else 2
    tiles = []
    for k in range(3):
        idx = [slice(None)] * 4
        idx[ax] = slice(k, None, 3)
        tiles.append(tuple(idx))
    y, _ = tiled_forward(gn, x, G, tiles, channels_last)
    check_vs_reference(y, x, G, None, None, channels_last, None)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("case", ["plain", "silu_params", "skip", "same_dtype_params"])
def test_one_tile_is_bitwise_the_one_call(gn, rng, dtype, channels_last, case):
    N, C, G = 2, 32, 8
    shape = make_shape(N, C, (15, 17), channels_last)
    x = rng.x(shape, dtype)
    kw = {}
    if case in ("silu_params", "skip"):
        kw["weight"], kw["bias"] = rng.params(C)
    if case == "same_dtype_params":
        kw["weight"], kw["bias"] = rng.params(C, dtype)
    if case == "silu_params":
        kw["activation"] = "silu"
    mkw = {}
    if case == "skip":
        kw["skip"] = mkw["skip"] = rng.x(shape, dtype)
        kw["skip_bias"] = mkw["skip_bias"] = rng.normal(C, F32)
    y1, mean1, rstd1 = gn.group_norm(x, G, eps=1e-3, channels_last=channels_last, return_stats=True, **kw)
    m = gn.moments(x, G, channels_last=channels_last, **mkw)
    y2, mean2, rstd2 = gn.group_norm(x, G, eps=1e-3, channels_last=channels_last, return_stats=True, stats=m, **kw)
    assert_bitwise_equal(y2, y1, "y")
    assert_bitwise_equal(mean2, mean1, "mean")
    assert_bitwise_equal(rstd2, rstd1, "rstd")
    mean3, rstd3 = m.mean_rstd(1e-3)
    assert_bitwise_equal(mean3, mean1, "Moments.mean_rstd mean")
    assert_bitwise_equal(rstd3, rstd1, "Moments.mean_rstd rstd")


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("shape_sp", [(512, 512), (3, 40000)], ids=["big_group", "long_rows"])
def test_one_tile_bitwise_large_groups(gn, rng, channels_last, shape_sp):
    """Groups split over many kernel tiles and threads (the step schedule)."""
    N, C, G = 1, 8, 1
    shape = make_shape(N, C, shape_sp, channels_last)
    x = rng.x(shape, F32)
    for nt in (1, 2, 3):
        y1 = gn.group_norm(x, G, channels_last=channels_last, num_threads=nt)
        y2 = gn.group_norm(x, G, channels_last=channels_last, num_threads=nt,
                           stats=gn.moments(x, G, channels_last=channels_last, num_threads=nt))
        assert_bitwise_equal(y2, y1, f"y ({nt} threads)")


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_bitwise_over_threads_and_isas(gn, rng, channels_last):
    N, C, G = 2, 64, 8
    shape = make_shape(N, C, (96, 40), channels_last)
    x = rng.x(shape, F32)
    w, b = rng.params(C)
    tiles = slabs(rng.rng, shape, channels_last, 5)
    ref_y, ref_m = None, None
    for isa in gn.available_isas():
        gn.set_isa(isa)
        for nt in (1, 2, 4):
            y, m = tiled_forward(gn, x, G, tiles, channels_last, weight=w, bias=b, activation="silu", num_threads=nt)
            if ref_y is None:
                ref_y, ref_m = y, m
                continue
            what = f"{isa}, {nt} threads"
            assert_bitwise_equal(m.count, ref_m.count, "count " + what)
            assert_bitwise_equal(m.mean, ref_m.mean, "mean " + what)
            assert_bitwise_equal(m.m2, ref_m.m2, "m2 " + what)
            assert_bitwise_equal(y, ref_y, "y " + what)


def test_merge_is_chan_in_list_order(gn, rng):
    """merge_moments == Chan's formula applied left to right (written here independently)."""
    parts = [gn.moments(rng.x((2, 6, n), F64), 3) for n in (5, 1, 17, 3)]
    m = gn.merge_moments(parts)
    n, mean, m2 = (parts[0].count.astype(np.float64), parts[0].mean.copy(), parts[0].m2.copy())
    for p in parts[1:]:
        nb = p.count.astype(np.float64)
        tot = n + nb
        d = p.mean - mean
        mean = mean + d * (nb / tot)
        m2 = m2 + (p.m2 + d * d * (n * nb / tot))
        n = tot
    assert_bitwise_equal(m.count, n.astype(np.int64), "count")
    assert_bitwise_equal(m.mean, mean, "mean")
    assert_bitwise_equal(m.m2, m2, "m2")
    # Moments.merge is the two-element list
    ab = parts[0].merge(parts[1])
    ab2 = gn.merge_moments(parts[:2])
    assert_bitwise_equal(ab.mean, ab2.mean, "merge mean")
    assert_bitwise_equal(ab.m2, ab2.m2, "merge m2")


# --------------------------------------------------------------------------- stability


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_tiles_with_means_1e4_apart(gn, rng, channels_last):
    """Tile means 0 and 1e4: a naive sum/sum-of-squares merge loses everything in float32."""
    N, C, G = 2, 8, 2
    shape = make_shape(N, C, (32, 16), channels_last)
    x = rng.rng.normal(0, 1, size=shape)
    ax = 1 if channels_last else 2
    idx = [slice(None)] * 4
    idx[ax] = slice(16, None)
    x[tuple(idx)] += 1e4
    x = x.astype(np.float32)
    tiles = []
    for a, b in ((0, 16), (16, 32)):
        t = [slice(None)] * 4
        t[ax] = slice(a, b)
        tiles.append(tuple(t))
    y, m = tiled_forward(gn, x, G, tiles, channels_last)
    ref, mref, rref = ref_forward(x, G, channels_last=channels_last)
    mean, rstd = m.mean_rstd()
    # the one-call path's tolerances for this data
    assert_close(mean, mref, rtol=1e-6, atol=0, what="mean")
    assert_close(rstd, rref, rtol=1e-5, atol=0, what="rstd")
    assert_close(y, ref, rtol=0, atol=5e-3, what="y")


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("ntiles", [3, 64])
def test_data_with_mean_1e4(gn, rng, channels_last, ntiles):
    N, C, G = 2, 16, 4
    shape = make_shape(N, C, (80, 11), channels_last)
    x = (1e4 + rng.rng.normal(0, 1, size=shape)).astype(np.float32)
    w, b = rng.params(C)
    y, m = tiled_forward(gn, x, G, slabs(rng.rng, shape, channels_last, ntiles), channels_last, weight=w, bias=b)
    ref, mref, rref = ref_forward(x, G, w, b, channels_last=channels_last)
    mean, rstd = m.mean_rstd()
    assert_close(y, ref, rtol=0, atol=5e-3, what="y (offset 1e4)")
    assert_close(mean, mref, rtol=1e-6, atol=0, what="mean (offset 1e4)")
    assert_close(rstd, rref, rtol=1e-3, atol=0, what="rstd (offset 1e4)")
    # float64 moments of the data itself: m2 well within float32 rounding of the reference
    xg = np.moveaxis(x, -1, 1) if channels_last else x
    xg = xg.astype(np.float64).reshape(N, G, -1)
    m2ref = ((xg - xg.mean(axis=2, keepdims=True)) ** 2).sum(axis=2)
    assert_close(m.m2, m2ref, rtol=1e-4, atol=0, what="m2")


# --------------------------------------------------------------------------- edges and errors


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_empty_tiles_are_the_identity(gn, rng, channels_last):
    N, C, G = 2, 8, 4
    x = rng.x(make_shape(N, C, (5, 7), channels_last), F32)
    empty = np.zeros(make_shape(N, C, (0, 7), channels_last), F32)
    e = gn.moments(empty, G, channels_last=channels_last)
    assert (e.count == 0).all() and (e.mean == 0).all() and (e.m2 == 0).all()
    m = gn.moments(x, G, channels_last=channels_last)
    for parts in ([e, m], [m, e], [e, m, e, e]):
        r = gn.merge_moments(parts)
        assert_bitwise_equal(r.count, m.count, "count")
        assert_bitwise_equal(r.mean, m.mean, "mean")
        assert_bitwise_equal(r.m2, m.m2, "m2")
    # applying to an empty tile writes nothing and returns an empty array
    y = gn.group_norm(empty, G, stats=m, channels_last=channels_last)
    assert y.shape == empty.shape
    # nothing merged at all: no statistics
    mean, rstd = gn.merge_moments([e, e]).mean_rstd()
    assert np.isnan(mean).all() and np.isnan(rstd).all()
    # applied, such statistics report NaN as mean_rstd does (and as the one-call path does for S = 0)
    _, mean2, rstd2 = gn.group_norm(x, G, stats=gn.merge_moments([e]), return_stats=True,
                                    channels_last=channels_last)
    assert np.isnan(mean2).all() and np.isnan(rstd2).all()


def test_stats_as_mean_rstd_pair(gn, rng):
    N, C, G = 2, 12, 3
    x = rng.x((N, C, 20, 6), F64)
    w, b = rng.params(C, F64)
    tiles = slabs(rng.rng, x.shape, False, 4)
    m = gn.merge_moments([gn.moments(x[t], G) for t in tiles])
    mean, rstd = m.mean_rstd(1e-5)
    y = poison(x.shape, F64)
    for t in tiles:
        y[t] = gn.group_norm(x[t], G, w, b, stats=(mean, rstd))
    ref, _, _ = ref_forward(x, G, w, b)
    assert_close(y, ref, **TOL[F64])
    # float32 stats from float64 data are converted to the stats dtype
    y2 = gn.group_norm(x, G, w, b, stats=(mean.astype(np.float32), rstd.astype(np.float32)))
    assert_close(y2, ref, rtol=1e-5, atol=1e-5)


def test_errors(gn, rng):
    x = rng.x((2, 8, 6, 6), F32)
    m = gn.moments(x, 4)
    with pytest.raises(ValueError, match=r"item 1 has shape \(2, 2\), item 0 has \(2, 4\)"):
        gn.merge_moments([m, gn.moments(x, 2)])
    with pytest.raises(ValueError, match=r"item 1 has shape \(1, 4\)"):
        gn.merge_moments([m, gn.moments(x[:1], 4)])
    with pytest.raises(ValueError, match="at least one"):
        gn.merge_moments([])
    with pytest.raises(TypeError, match="wrap it in a list"):
        gn.merge_moments(m)
    with pytest.raises(TypeError, match="item 1 is a tuple"):
        gn.merge_moments([m, (1, 2)])
    with pytest.raises(ValueError, match="not divisible by num_groups 3"):
        gn.moments(x, 3)
    with pytest.raises(ValueError, match="skip_bias needs skip"):
        gn.moments(x, 4, skip_bias=np.zeros(8, F32))
    with pytest.raises(TypeError, match="x_tile must be float64"):
        gn.moments(x.astype(np.int32), 4)
    out = poison(x.shape, F32)
    with pytest.raises(ValueError, match=r"stats has shape \(2, 4\), but x has \(N, num_groups\) = \(2, 2\)"):
        gn.group_norm(x, 2, stats=m, out=out)
    with pytest.raises(TypeError, match="stats must be a groupnorm.Moments"):
        gn.group_norm(x, 4, stats="mean", out=out)
    with pytest.raises(ValueError, match=r"mean must have shape \(2, 4\)"):
        gn.group_norm(x, 4, stats=(np.zeros(3), np.zeros(3)), out=out)
    assert np.isnan(out).all(), "a failed call wrote its output"
    with pytest.raises(ValueError, match="eps must be finite"):
        m.mean_rstd(float("nan"))


# --------------------------------------------------------------------------- backward


def tiled_backward(gn, dy, x, G, tiles, channels_last, w, b, activation=None, eps=1e-5, num_threads=None):
    m = gn.merge_moments([gn.moments(x[t], G, channels_last=channels_last) for t in tiles])
    mean, rstd = m.mean_rstd(eps)
    sums = gn.merge_backward_sums([gn.backward_sums(dy[t], x[t], mean, rstd, G, w, b, channels_last=channels_last,
                                                    activation=activation, num_threads=num_threads)
                                   for t in tiles])
    gx = poison(x.shape, x.dtype)
    gws, gbs = [], []
    for t in tiles:
        out = poison(x[t].shape, x.dtype)
        g, gw, gb = gn.group_norm_backward(dy[t], x[t], mean, rstd, G, w, b, channels_last=channels_last,
                                           activation=activation, sums=sums, out=out, num_threads=num_threads)
        assert g is out
        gx[t] = g
        gws.append(gw)
        gbs.append(gb)
    for gw, gb in zip(gws[1:], gbs[1:]):  # every tile gives the same global parameter gradients
        assert_bitwise_equal(gw, gws[0], "grad_weight of each tile")
        assert_bitwise_equal(gb, gbs[0], "grad_bias of each tile")
    return gx, gws[0], gbs[0], sums


def check_grads(got, ref, dtype, what):
    if dtype in (F32, F64):
        t = BTOL[dtype]
        assert_close(got, ref, rtol=t["rtol"], atol=t["atol"] * max(1.0, np.abs(ref).max()), what=what)
    else:
        assert_within_ulps(got, ref, dtype, ulps=4, atol=2e-5 * np.abs(ref).max(), what=what)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("ntiles", [1, 4, 33])
def test_backward_tiles_match_whole(gn, rng, dtype, channels_last, activation, ntiles):
    N, C, G = 2, 16, 4
    shape = make_shape(N, C, (40, 7), channels_last)
    x = rng.x(shape, dtype)
    dy = rng.normal(shape, dtype)
    w, b = rng.params(C)
    tiles = slabs(rng.rng, shape, channels_last, ntiles)
    gx, gw, gb, sums = tiled_backward(gn, dy, x, G, tiles, channels_last, w, b, activation)
    assert sums.spatial == 40 * 7 and sums.sum_dz.shape == (N, C)
    rx, rw, rb = ref_backward(dy, x, G, w, b, channels_last=channels_last, activation=activation)
    check_grads(gx, rx, dtype, "grad_x")
    check_grads(gw, rw, F32, "grad_weight")
    check_grads(gb, rb, F32, "grad_bias")
    if ntiles == 1:  # one tile: bitwise the one-call backward
        _, mean, rstd = gn.group_norm(x, G, w, b, channels_last=channels_last, activation=activation,
                                      return_stats=True)
        g1, w1, b1 = gn.group_norm_backward(dy, x, mean, rstd, G, w, b, channels_last=channels_last,
                                            activation=activation)
        assert_bitwise_equal(gx, g1, "grad_x")
        assert_bitwise_equal(gw, w1, "grad_weight")
        assert_bitwise_equal(gb, b1, "grad_bias")


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_backward_boxes_bitwise_over_threads(gn, rng, channels_last):
    N, C, G = 2, 8, 2
    shape = make_shape(N, C, (6, 7, 8), channels_last)
    x = rng.x(shape, F32)
    dy = rng.normal(shape, F32)
    w, b = rng.params(C)
    tiles = boxes(rng.rng, shape, channels_last, 2)
    first = None
    for isa in gn.available_isas():
        gn.set_isa(isa)
        for nt in (1, 3):
            res = tiled_backward(gn, dy, x, G, tiles, channels_last, w, b, "silu", num_threads=nt)
            if first is None:
                first = res
                rx, rw, rb = ref_backward(dy, x, G, w, b, channels_last=channels_last, activation="silu")
                check_grads(res[0], rx, F32, "grad_x")
                check_grads(res[1], rw, F32, "grad_weight")
                continue
            for a, r, what in zip(res[:3], first[:3], ("grad_x", "grad_weight", "grad_bias")):
                assert_bitwise_equal(a, r, f"{what} ({isa}, {nt} threads)")


def test_backward_empty_tile_and_errors(gn, rng):
    N, C, G = 2, 8, 2
    x = rng.x((N, C, 5, 4), F32)
    dy = rng.normal(x.shape, F32)
    w, b = rng.params(C)
    mean, rstd = gn.moments(x, G).mean_rstd()
    s = gn.backward_sums(dy, x, mean, rstd, G, w, b)
    e = gn.backward_sums(dy[:, :, :0], x[:, :, :0], mean, rstd, G, w, b)
    assert (e.sum_dz == 0).all() and (e.sum_dz_xc == 0).all() and e.spatial == 0
    both = gn.merge_backward_sums([s, e])
    assert_bitwise_equal(both.sum_dz, s.sum_dz, "sum_dz")
    # an empty tile still returns the global parameter gradients
    _, gw0, gb0 = gn.group_norm_backward(dy, x, mean, rstd, G, w, b, sums=both)
    gx, gw, gb = gn.group_norm_backward(dy[:, :, :0], x[:, :, :0], mean, rstd, G, w, b, sums=both)
    assert gx.shape == (N, C, 0, 4)
    assert_bitwise_equal(gw, gw0, "grad_weight")
    assert_bitwise_equal(gb, gb0, "grad_bias")
    with pytest.raises(ValueError, match=r"item 1 has shape \(1, 8\)"):
        gn.merge_backward_sums([s, gn.backward_sums(dy[:1], x[:1], mean[:1], rstd[:1], G, w, b)])
    with pytest.raises(ValueError, match="fewer than this tile's 20"):
        gn.group_norm_backward(dy, x, mean, rstd, G, w, b, sums=gn.backward_sums(dy[..., :2], x[..., :2], mean,
                                                                                 rstd, G, w, b))
    with pytest.raises(TypeError, match="sums must be a groupnorm.BackwardSums"):
        gn.group_norm_backward(dy, x, mean, rstd, G, w, b, sums=(s.sum_dz, s.sum_dz_xc))
    with pytest.raises(ValueError, match=r"mean must have shape \(2, 2\)"):
        gn.backward_sums(dy, x, mean[:1], rstd, G, w, b)


# --------------------------------------------------------------------------- examples/memmap_volume.py


def _load_example():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "memmap_volume.py")
    spec = importlib.util.spec_from_file_location("memmap_volume", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_memmap_example(gn, rng, tmp_path, channels_last, capsys):
    ex = _load_example()
    N, C, G = 2, 8, 4
    shape = make_shape(N, C, (23, 9, 10), channels_last)
    x = rng.x(shape, F32) + 100.0
    src = np.lib.format.open_memmap(str(tmp_path / "x.npy"), "w+", np.float32, shape)
    src[...] = x
    dst = np.lib.format.open_memmap(str(tmp_path / "y.npy"), "w+", np.float32, shape)
    dst[...] = np.nan
    w, b = rng.params(C)
    budget = 3 * 2 * (x.nbytes // 23)  # three depth planes at a time: 8 slabs
    ex.normalize_volume(src, dst, G, w, b, 1e-5, budget, channels_last=channels_last)
    assert "pass 2 (apply): slab 8/8" in capsys.readouterr().out
    ref, _, _ = ref_forward(x, G, w, b, channels_last=channels_last)
    assert_close(np.asarray(dst), ref, what="memmap result", **TOL[F32])
    # and the script end to end, with its own in-memory comparison
    assert ex.main(["--shape", "1", "4", "7", "6", "5", "--groups", "2", "--budget", "500", "--check",
                    "--dir", str(tmp_path)] + (["--channels-last"] if channels_last else [])) == 0
    assert "ok" in capsys.readouterr().out


def test_readme_tiled_example(gn):
    """The docs' split-phase Python example runs and gives the whole tensor's normalization."""
    import os
    import re
    readme = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                               "split-distributed.md")).read()
    sec = readme[readme.index("# Split phase"):]
    code = re.search(r"```python\n(.*?)```", sec, re.S).group(1)
    ns = {}
    exec(compile(code, "docs/split-distributed.md", "exec"), ns)
    ref, mref, rref = ref_forward(ns["x"], 32, ns["w"], ns["b"])
    assert_close(ns["y"], ref, what="README y", **TOL[F32])
    assert_close(ns["rstd"], rref, rtol=2e-5, atol=0, what="README rstd")


# ----------------------------------------------------------------- counts are element counts
def test_merged_counts_are_exact_integers_above_2_53(gn):
    big = 2**53 + 1  # not a double
    m = gn.Moments(np.full((2, 3), big), np.ones((2, 3)), np.ones((2, 3)))
    merged = gn.merge_moments([m, m, m])
    assert merged.count.dtype == np.int64
    assert (merged.count == 3 * big).all()
    assert_close(merged.mean, np.ones((2, 3)), 0, 0)


def test_merged_count_overflow_is_an_error_and_writes_nothing(gn):
    m = gn.Moments(np.full((1, 2), 2**62), np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="does not fit in int64"):
        gn.merge_moments([m, m])
    ok = gn.Moments(np.full((1, 2), 2**62 - 1), np.zeros((1, 2)), np.zeros((1, 2)))
    assert (gn.merge_moments([ok, ok]).count == 2**63 - 2).all()


@pytest.mark.parametrize("count,kind", [
    (np.array([[5, -1]]), ValueError), (np.array([[5, 2.7]]), ValueError), (np.array([[5, np.nan]]), ValueError),
    (np.array([[5, np.inf]]), ValueError), (np.array([[5, 2.0**63]]), ValueError),
    (np.array([[5, 2**63]], np.uint64), ValueError), (np.array([[True, True]]), TypeError),
    (np.array([["3", "3"]]), TypeError)], ids=["negative", "fraction", "nan", "inf", "2**63 float",
                                               "2**63 uint64", "bool", "str"])
def test_moments_rejects_counts_that_are_not_element_counts(gn, count, kind):
    with pytest.raises(kind, match="count"):
        gn.Moments(count, np.zeros((1, 2)), np.zeros((1, 2)))


def test_moments_accepts_integral_float_counts(gn):
    m = gn.Moments(np.array([[3.0, 0.0]]), np.zeros((1, 2)), np.zeros((1, 2)))
    assert m.count.dtype == np.int64 and m.count.tolist() == [[3, 0]]


def test_moments_rejects_negative_m2(gn):
    with pytest.raises(ValueError, match="m2"):
        gn.Moments(np.ones((1, 2), np.int64), np.zeros((1, 2)), np.array([[0.0, -1.0]]))


@pytest.mark.parametrize("spatial,kind", [(2**70, ValueError), (1e300, ValueError), (-1, ValueError),
                                          (2.5, ValueError), (float("nan"), ValueError), (None, TypeError),
                                          ("7", TypeError), (True, TypeError)])
def test_backward_sums_rejects_bad_spatial(gn, spatial, kind):
    with pytest.raises(kind, match="spatial"):
        gn.BackwardSums(np.zeros((1, 2)), np.zeros((1, 2)), spatial)


def test_core_merge_rejects_negative_counts_before_writing(gn):
    from groupnorm import _core
    parts = [(np.array([1, -2], np.int64), np.zeros(2), np.zeros(2))]
    count, mean, m2 = np.full(2, 7, np.int64), np.full(2, 7.0), np.full(2, 7.0)
    with pytest.raises(ValueError, match=r"count\[1\] is -2"):
        _core.merge_moments(parts, count, mean, m2)
    assert count.tolist() == [7, 7] and mean.tolist() == [7.0, 7.0] and m2.tolist() == [7.0, 7.0]
