"""Paths that exist for speed only give the right results: in place on tensors
large enough for streaming stores, unaligned outputs and inputs, streamed
outputs. (That the schedule does not change bits is tests/test_determinism.py's.)"""
import os
import subprocess
import sys

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


@pytest.mark.parametrize("cl", [False, True], ids=["cf", "cl"])
def test_streamed_outputs_are_right(tmp_path, cl):
    """Outputs written with non-temporal stores (forced on) match the float64 reference."""
    script = r"""
import sys, numpy as np, groupnorm as gn
rng = np.random.default_rng(7)
cl = sys.argv[1] == "1"
shape = (2, 37, 41, 48) if cl else (2, 48, 37, 41)
x = rng.standard_normal(shape).astype(np.float32)
y = gn.group_norm(x, 8, channels_last=cl)
np.save(sys.argv[2], np.stack([x, y]))
"""
    path = str(tmp_path / "s.npy")
    env = dict(os.environ, GROUPNORM_STREAM_BYTES="1")
    subprocess.run([sys.executable, "-c", script, "1" if cl else "0", path], env=env, check=True)
    x, y = np.load(path)
    ref = ref_forward(x, 8, channels_last=cl)[0]
    np.testing.assert_allclose(y, ref, atol=2e-5, rtol=0)
