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


# shapes for each schedule: many sets (mode A), one big sample (mode B, channels-last),
# few big groups (mode B, channels-first)
SCHED_SHAPES = [(8, 32, (24, 24), 8), (1, 64, (96, 96), 4), (1, 8, (256, 288), 2)]


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("N, C, S, G", SCHED_SHAPES, ids=["many_sets", "one_sample", "big_groups"])
def test_oversubscribed_threads_steal_work_without_changing_bits(gn, rng, channels_last, N, C, S, G):
    # 7 threads on a machine with fewer cores: threads are descheduled at random
    # points and the others take their unclaimed tiles; results must not move
    shape = make_shape(N, C, S, channels_last)
    x = rng.x(shape, F32, loc=3.0)
    gy = rng.x(shape, F32)
    w, b = rng.params(C, F32)
    y1, m1, r1 = gn.group_norm(x, G, w, b, channels_last=channels_last, activation="silu", return_stats=True,
                               num_threads=1)
    g1 = gn.group_norm_backward(gy, x, m1, r1, G, w, b, channels_last=channels_last, activation="silu",
                                num_threads=1)
    assert_close(y1, ref_forward(x, G, w, b, channels_last=channels_last, activation="silu")[0], 1e-4, 1e-4)
    for _ in range(5):
        y = gn.group_norm(x, G, w, b, channels_last=channels_last, activation="silu", num_threads=7,
                          out=poison(shape, F32))
        assert_bitwise_equal(y, y1, "forward, 7 threads vs 1")
        g = gn.group_norm_backward(gy, x, m1, r1, G, w, b, channels_last=channels_last, activation="silu",
                                   num_threads=7, out=poison(shape, F32))
        for a, b_, name in zip(g, g1, ("grad_x", "grad_weight", "grad_bias")):
            assert_bitwise_equal(a, b_, f"{name}, 7 threads vs 1")
