"""The fast path of group_norm (canonical NumPy arguments, checked in the core's
binding) must give exactly what the checked Python path gives, and must decline
everything that is not canonical so that the checked path can explain it."""
import numpy as np
import pytest

from conftest import (ALL_DTYPES, BF16, F32, F64, assert_bitwise_equal, assert_close, dtype_id, make_shape,
                      poison, ref_forward)


def _checked(gn, x, G, w, b, **kw):
    # return_stats=True never takes the fast path
    return gn.group_norm(x, G, w, b, return_stats=True, **kw)[0]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("params", ["x_dtype", "float32", "none", "weight_only"])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_fast_path_equals_checked_path(gn, rng, dtype, channels_last, params, activation):
    N, C, G = 2, 12, 3
    x = rng.x(make_shape(N, C, (5, 4), channels_last), dtype)
    pd = F32 if params == "float32" else dtype
    w, b = rng.params(C, pd)
    if params == "none":
        w = b = None
    elif params == "weight_only":
        b = None
    # the fast path is taken for these arguments
    y = poison(x.shape, dtype)
    got = gn._core.forward_fast(x, G, w, b, 1e-5, channels_last, 0 if activation is None else 1, y, 2)
    assert got is y
    assert not np.isnan(y.astype(np.float32)).any()
    want = _checked(gn, x, G, w, b, channels_last=channels_last, activation=activation)
    assert_bitwise_equal(y, want, "fast vs checked path")
    # and through the public function, with and without out=
    assert_bitwise_equal(gn.group_norm(x, G, w, b, channels_last=channels_last, activation=activation), want, "y")
    out = poison(x.shape, dtype)
    r = gn.group_norm(x, G, w, b, channels_last=channels_last, activation=activation, out=out, num_threads=1)
    assert r is out
    assert_bitwise_equal(out, want, "y (out=)")
    if dtype in (F32, F64):
        ref, _, _ = ref_forward(x, G, w, b, channels_last=channels_last, activation=activation)
        tol = 1e-10 if dtype == F64 else 3e-5
        assert_close(out, ref, rtol=tol, atol=tol, what="y vs float64 reference")


def test_fast_path_in_place(gn, rng):
    x = rng.x((2, 8, 6, 5))
    w, b = rng.params(8)
    want = _checked(gn, x, 4, w, b)
    r = gn.group_norm(x, 4, w, b, out=x)
    assert r is x
    assert_bitwise_equal(x, want, "in place")


def _declines(gn, x, G=2, w=None, b=None, out=None, channels_last=False):
    return gn._core.forward_fast(x, G, w, b, 1e-5, channels_last, 0, out, 0) is None


def test_fast_path_declines_non_canonical(gn, rng):
    x = rng.x((2, 8, 5))
    w, b = rng.params(8)
    assert not _declines(gn, x, w=w, b=b)
    assert _declines(gn, x.astype(x.dtype.newbyteorder()))            # byte-swapped
    assert _declines(gn, rng.x((2, 5, 8)).transpose(0, 2, 1))         # not C-contiguous
    assert _declines(gn, x.astype(np.int32))                          # integer data
    assert _declines(gn, x, w=w.astype(np.float64))                   # float64 weight, float32 x
    assert _declines(gn, x, w=w, b=b.astype(np.float16))              # mixed parameter dtypes
    assert _declines(gn, x, w=list(w))                                # not an array
    assert _declines(gn, x, w=np.repeat(w, 2)[::2])                   # strided weight
    assert _declines(gn, x, w=w[:4])                                  # wrong shape
    ro = np.empty_like(x)
    ro.flags.writeable = False
    assert _declines(gn, x, out=ro)                                   # read-only out
    assert _declines(gn, x, out=np.empty((2, 8, 6), np.float32))      # wrong out shape
    assert _declines(gn, x, out=np.empty(x.shape, np.float64))        # wrong out dtype
    assert _declines(gn, x, out=np.empty((2, 5, 8), np.float32).transpose(0, 2, 1))


def test_fast_path_1d_input_declines(gn):
    assert gn._core.forward_fast(np.ones(8, np.float32), 2, None, None, 1e-5, False, 0, None, 0) is None


@pytest.mark.parametrize("case", ["byteswap", "f64_weight", "strided_weight", "list_weight"])
def test_declined_inputs_still_work_or_explain(gn, rng, case):
    x = rng.x((2, 8, 5))
    w, b = rng.params(8)
    if case == "byteswap":
        with pytest.raises(TypeError, match="x must be float64, float32, float16 or bfloat16"):
            gn.group_norm(x.astype(x.dtype.newbyteorder()), 2)
        return
    w2 = {"f64_weight": w.astype(np.float64), "strided_weight": np.repeat(w, 2)[::2], "list_weight": list(w)}[case]
    got = gn.group_norm(x, 2, w2, b)
    want = _checked(gn, x, 2, w2, b)
    assert_bitwise_equal(got, want, case)
    ref, _, _ = ref_forward(x, 2, np.asarray(w2, np.float64), b)
    assert_close(got, ref, rtol=3e-5, atol=3e-5, what=case)


def test_fast_path_errors_come_from_the_core(gn, rng):
    x = rng.x((2, 9, 4))
    with pytest.raises(ValueError, match="num_channels 9 is not divisible by num_groups 2|9.*2"):
        gn.group_norm(x, 2)
    with pytest.raises(ValueError, match="eps"):
        gn.group_norm(x, 3, eps=float("nan"))
    with pytest.raises(ValueError):
        gn.group_norm(x, 0)
    out = poison(x.shape, x.dtype)
    with pytest.raises(ValueError):
        gn.group_norm(x, 2, out=out)
    assert np.isnan(out).all(), "nothing is written when the call is refused"


def test_bfloat16_fast_path(gn, rng):
    x = rng.x((2, 8, 7), BF16)
    y = gn._core.forward_fast(x, 4, None, None, 1e-5, False, 0, None, 0)
    assert y is not None and y.dtype == BF16
    assert_bitwise_equal(y, _checked(gn, x, 4, None, None), "bfloat16")


def test_float64_without_params_uses_float64_parameters(gn, rng):
    x = rng.x((3, 6, 11), F64)
    assert_bitwise_equal(gn.group_norm(x, 3), _checked(gn, x, 3, None, None), "float64")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_id)
def test_new_outputs_are_64_byte_aligned(gn, rng, dtype):
    x = rng.x((2, 6, 7, 3), dtype)
    w, b = rng.params(6, F32)
    outs = [gn.group_norm(x, 3, w, b),                              # fast path
            gn.group_norm(x, 3, w, b, return_stats=True)[0],        # checked path
            gn.group_norm_backward(rng.x(x.shape, dtype), x, *gn.group_norm(x, 3, w, b, return_stats=True)[1:],
                                   3, w, b)[0]]
    for y in outs:
        assert y.shape == x.shape and y.dtype == x.dtype
        assert y.ctypes.data % 64 == 0
        assert y.flags.c_contiguous and y.flags.writeable
    assert_bitwise_equal(outs[0], outs[1], "fast vs checked")
