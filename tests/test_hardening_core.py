"""Hostile-caller regressions of the C++ core, through the Python API: thread
requests far beyond the machine, in-place residual adds on every kernel, outputs
partly overlapping inputs, empty batches of absurd width, and data at the edges
of each dtype's range."""
import time

import numpy as np
import pytest

from conftest import ref_forward

F32, F64 = np.float32, np.float64


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


# ----------------------------------------------------------------- 1. threads
@pytest.mark.parametrize("n", [30000, 40000, 65536, 2**31 - 1])
def test_huge_num_threads_is_capped(gn, rng, n):
    x = rng.normal((65536, 32), F32)
    y1 = gn.group_norm(x, 8, num_threads=1)
    t0 = time.perf_counter()
    y = gn.group_norm(x, 8, num_threads=n)
    elapsed = time.perf_counter() - t0
    assert np.array_equal(_bits(y), _bits(y1))
    assert elapsed < 2.0, f"num_threads={n} took {elapsed:.2f} s"
    gx, _, _ = gn.group_norm_backward(x, x, *gn.group_norm(x, 8, return_stats=True)[1:], 8, num_threads=n)
    gx1, _, _ = gn.group_norm_backward(x, x, *gn.group_norm(x, 8, return_stats=True)[1:], 8, num_threads=1)
    assert np.array_equal(_bits(gx), _bits(gx1))


def test_set_num_threads_is_capped_and_restorable(gn, rng):
    from groupnorm import _core
    default = gn.get_num_threads()
    cap = _core.max_threads()
    assert 4 <= cap <= 65536 and 1 <= default <= cap
    x = rng.normal((64, 32, 5), F32)
    y1 = gn.group_norm(x, 8, num_threads=1)
    try:
        _core.set_num_threads(65536)
        assert gn.get_num_threads() == cap
        assert np.array_equal(_bits(gn.group_norm(x, 8)), _bits(y1))
    finally:
        _core.set_num_threads(0)
    assert gn.get_num_threads() == default


# ----------------------------------------------------------------- 2. sum_out aliasing x or skip
LAYOUTS = [((6, 32), False), ((6, 32), True), ((3, 16, 7, 5), False), ((3, 7, 5, 16), True),
           ((2, 9, 2048), True), ((2, 16, 20000), False)]


@pytest.mark.parametrize("shape,cl", LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [F32, F64, np.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("alias", ["sum_out=x", "sum_out=skip", "y=x,sum_out=skip", "y=skip,sum_out=x"])
def test_sum_out_aliasing_inputs(gn, rng, shape, cl, dtype, alias):
    C = shape[-1] if cl else shape[1]
    x = rng.normal(shape, dtype)
    skip = rng.normal(shape, dtype)
    w, b = rng.params(C, F32)
    sb = rng.normal((C,), F32, scale=0.3)
    y0 = np.full(shape, np.nan, dtype)
    s0 = np.full(shape, np.nan, dtype)
    gn.group_norm(x, 4, w, b, skip=skip, skip_bias=sb, sum_out=s0, out=y0, channels_last=cl)
    ref, _, _ = ref_forward(s0, 4, w, b, channels_last=cl)
    assert np.allclose(y0.astype(F64), ref, rtol=0, atol=5e-3 if dtype == np.float16 else 1e-4)
    xs, ks = x.copy(), skip.copy()
    if alias == "sum_out=x":
        y = gn.group_norm(xs, 4, w, b, skip=ks, skip_bias=sb, sum_out=xs, channels_last=cl)
        s = xs
    elif alias == "sum_out=skip":
        y = gn.group_norm(xs, 4, w, b, skip=ks, skip_bias=sb, sum_out=ks, channels_last=cl)
        s = ks
    elif alias == "y=x,sum_out=skip":
        y = gn.group_norm(xs, 4, w, b, skip=ks, skip_bias=sb, sum_out=ks, out=xs, channels_last=cl)
        s = ks
        assert y is xs or np.shares_memory(y, xs)
    else:
        y = gn.group_norm(xs, 4, w, b, skip=ks, skip_bias=sb, sum_out=xs, out=ks, channels_last=cl)
        s = xs
    assert np.array_equal(_bits(s), _bits(s0)), "sum_out"
    assert np.array_equal(_bits(y), _bits(y0)), "y"


def test_issue_reproducer_sum_out_is_x_channels_last(gn, rng):
    x = rng.normal((4, 8, 8, 32), F32)
    skip = rng.normal((4, 8, 8, 32), F32)
    want = gn.group_norm(x + skip, 4, channels_last=True)
    xs = x.copy()
    y = gn.group_norm(xs, 4, skip=skip, sum_out=xs, channels_last=True)
    assert np.array_equal(xs, x + skip)  # the in-place residual sum
    assert np.allclose(y, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_grad_x_in_place_of_grad_y(gn, rng, dtype):
    x = rng.normal((3, 12, 50), dtype)
    dy = rng.normal((3, 12, 50), dtype)
    w, b = rng.params(12, dtype)
    _, m, r = gn.group_norm(x, 3, w, b, return_stats=True)
    gx0, gw0, gb0 = gn.group_norm_backward(dy, x, m, r, 3, w, b)
    g = dy.copy()
    gx, gw, gb = gn.group_norm_backward(g, x, m, r, 3, w, b, out=g)
    assert np.array_equal(_bits(g), _bits(gx0)) and np.array_equal(gw, gw0) and np.array_equal(gb, gb0)


# ----------------------------------------------------------------- 3. partial overlap
@pytest.mark.parametrize("channels_last", [False, True])
def test_out_partly_overlapping_x_is_rejected(gn, rng, channels_last):
    buf = rng.normal((2 * 4 * 8 * 6 + 8,), F32)
    before = buf.copy()
    x = buf[:2 * 4 * 8 * 6].reshape(2, 4, 8, 6)
    out = buf[8:].reshape(2, 4, 8, 6)
    with pytest.raises(ValueError, match="overlap"):
        gn.group_norm(x, 2, out=out, channels_last=channels_last)
    assert np.array_equal(_bits(buf), _bits(before)), "nothing may be written"


def test_sum_out_partly_overlapping_skip_is_rejected(gn, rng):
    buf = rng.normal((2 * 4 * 10 + 4,), F32)
    before = buf.copy()
    x = rng.normal((2, 4, 10), F32)
    skip = buf[:80].reshape(2, 4, 10)
    sum_out = buf[4:].reshape(2, 4, 10)
    with pytest.raises(ValueError, match="sum_out.*skip|skip.*sum_out"):
        gn.group_norm(x, 2, skip=skip, sum_out=sum_out)
    assert np.array_equal(_bits(buf), _bits(before))


def test_backward_out_partly_overlapping_grad_y_is_rejected(gn, rng):
    buf = rng.normal((2 * 4 * 10 + 1,), F32)
    x = rng.normal((2, 4, 10), F32)
    _, m, r = gn.group_norm(x, 2, return_stats=True)
    before = buf.copy()
    dy = buf[:80].reshape(2, 4, 10)
    out = buf[1:].reshape(2, 4, 10)
    with pytest.raises(ValueError, match="grad_x.*grad_y"):
        gn.group_norm_backward(dy, x, m, r, 2, out=out)
    assert np.array_equal(_bits(buf), _bits(before))


def test_y_equal_to_sum_out_is_rejected(gn, rng):
    x = rng.normal((2, 4, 10), F32)
    skip = rng.normal((2, 4, 10), F32)
    o = np.full_like(x, np.nan)
    with pytest.raises(ValueError, match="overlap"):
        gn.group_norm(x, 2, skip=skip, sum_out=o, out=o)
    assert np.isnan(o).all()


# ----------------------------------------------------------------- 4. empty batches
def test_backward_empty_batch_huge_channels_does_not_hang(gn):
    x = np.zeros((0, 2**40), F32)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="num_channels"):
        gn.group_norm_backward(x, x, np.zeros((0, 1), F32), np.zeros((0, 1), F32), 1)
    assert time.perf_counter() - t0 < 1.0


def test_empty_batch_still_checks_sizes(gn):
    x = np.zeros((0, 2**31), F32)
    with pytest.raises(ValueError, match="num_channels"):
        gn.group_norm(x, 1)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_empty_batch_backward_gives_zero_parameter_gradients(gn, rng, dtype):
    x = np.zeros((0, 6, 4), dtype)
    w, b = rng.params(6, dtype)
    gx, gw, gb = gn.group_norm_backward(x, x, np.zeros((0, 3), dtype), np.zeros((0, 3), dtype), 3, w, b)
    assert gx.shape == (0, 6, 4) and np.array_equal(gw, np.zeros(6)) and np.array_equal(gb, np.zeros(6))
