"""Paths that exist for speed only must not change results: in place on tensors
large enough for streaming stores, unaligned outputs and inputs, and dynamic
assignment of tiles to threads."""
import numpy as np
import pytest

from conftest import F32, assert_bitwise_equal, assert_close, make_shape, poison, ref_backward, ref_forward

# more than the 16 MiB above which outputs are written with non-temporal stores
BIG = (1, 64, 256, 288)


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_in_place_large_equals_out_of_place(gn, rng, channels_last, activation):
    shape = make_shape(BIG[0], BIG[1], BIG[2:], channels_last)
    x = rng.x(shape, F32, loc=1.0)
    assert x.nbytes > 16 << 20
    w, b = rng.params(BIG[1], F32)
    want = gn.group_norm(x, 8, w, b, channels_last=channels_last, activation=activation, out=poison(shape, F32))
    ref = ref_forward(x, 8, w, b, channels_last=channels_last, activation=activation)[0]
    assert_close(want, ref, 1e-4, 1e-4)
    xi = x.copy()
    y = gn.group_norm(xi, 8, w, b, channels_last=channels_last, activation=activation, out=xi)
    assert np.shares_memory(y, xi)
    assert_bitwise_equal(xi, want, "in place vs out of place")


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_backward_in_place_large_equals_out_of_place(gn, rng, channels_last):
    shape = make_shape(BIG[0], BIG[1], BIG[2:], channels_last)
    x = rng.x(shape, F32)
    gy = rng.x(shape, F32)
    w, b = rng.params(BIG[1], F32)
    _, mean, rstd = gn.group_norm(x, 8, w, b, channels_last=channels_last, return_stats=True)
    want = gn.group_norm_backward(gy, x, mean, rstd, 8, w, b, channels_last=channels_last,
                                  out=poison(shape, F32))[0]
    ref = ref_backward(gy, x, 8, w, b, channels_last=channels_last)[0]
    assert_close(want, ref, 1e-4, 1e-4)
    g2 = gy.copy()
    got = gn.group_norm_backward(g2, x, mean, rstd, 8, w, b, channels_last=channels_last, out=g2)[0]
    assert np.shares_memory(got, g2)
    assert_bitwise_equal(g2, want, "grad_x in place of grad_y")
