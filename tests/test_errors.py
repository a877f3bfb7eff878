"""Argument errors: type, message, and that nothing is silently accepted."""
import re

import numpy as np
import pytest

from conftest import BF16


@pytest.fixture
def x(rng):
    return rng.x((2, 8, 3, 3), np.float32)


@pytest.mark.parametrize("C,G", [(8, 3), (12, 5), (6, 4), (7, 2), (3, 6)])
def test_channels_not_divisible(gn, rng, C, G):
    x = rng.x((2, C, 4), np.float32)
    with pytest.raises(ValueError, match="divisible") as ei:
        gn.group_norm(x, G)
    msg = str(ei.value)
    assert re.search(rf"\b{C}\b", msg) and re.search(rf"\b{G}\b", msg), msg


def test_channels_not_divisible_exact_message(gn, x):
    with pytest.raises(ValueError, match=r"num_channels 8 is not divisible by num_groups 3"):
        gn.group_norm(x, 3)


def test_channels_not_divisible_channels_last(gn, rng):
    # channels_last: C is the LAST dim (10), which 4 does not divide; shape[1] (8) would be divisible
    x = rng.x((2, 8, 10), np.float32)
    with pytest.raises(ValueError, match=r"10.*4|4.*10"):
        gn.group_norm(x, 4, channels_last=True)
    # and the converse: shape[1] = 10 is not C in channels-last layout, so this one is fine
    gn.group_norm(rng.x((2, 10, 8), np.float32), 4, channels_last=True)


@pytest.mark.parametrize("G", [0, -1, -4])
def test_num_groups_not_positive(gn, x, G):
    with pytest.raises(ValueError, match="num_groups"):
        gn.group_norm(x, G)


@pytest.mark.parametrize("G", [2.0, "2", None])
def test_num_groups_not_int(gn, x, G):
    with pytest.raises((TypeError, ValueError), match="num_groups"):
        gn.group_norm(x, G)


@pytest.mark.parametrize("which", ["weight", "bias"])
@pytest.mark.parametrize("shape", [(7,), (9,), (1, 8), (8, 1), (), (2,)], ids=str)
def test_param_shape(gn, x, which, shape):
    p = np.ones(shape, np.float32)
    kw = {which: p}
    with pytest.raises(ValueError, match=which):
        gn.group_norm(x, 2, **kw)


@pytest.mark.parametrize("which", ["weight", "bias"])
def test_param_shape_channels_last(gn, rng, which):
    x = rng.x((2, 3, 4, 6), np.float32)  # channels-last: C = 6
    with pytest.raises(ValueError, match=which):
        gn.group_norm(x, 2, **{which: np.ones(3, np.float32)}, channels_last=True)
    gn.group_norm(x, 2, **{which: np.ones(6, np.float32)}, channels_last=True)


@pytest.mark.parametrize("shape", [(), (8,)], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_ndim_lt_2(gn, shape, channels_last):
    x = np.ones(shape, np.float32) + np.arange(np.prod(shape, dtype=int)).reshape(shape)
    with pytest.raises(ValueError):
        gn.group_norm(x, 1, channels_last=channels_last)


@pytest.mark.parametrize("eps", [float("nan"), float("inf"), float("-inf")])
def test_eps_not_finite(gn, x, eps):
    with pytest.raises(ValueError, match="eps"):
        gn.group_norm(x, 2, eps=eps)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.int8, np.uint8, bool, np.complex64,
                                   np.complex128, object], ids=lambda d: np.dtype(d).name)
def test_bad_x_dtype(gn, dtype):
    x = (np.arange(2 * 4 * 3).reshape(2, 4, 3) % 5).astype(dtype)
    with pytest.raises(TypeError):
        gn.group_norm(x, 2)


def test_bad_x_dtype_string(gn):
    with pytest.raises(TypeError):
        gn.group_norm(np.array([["a", "b"], ["c", "d"]]), 1)


@pytest.mark.parametrize("dtype", [np.int32, bool, np.complex64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("which", ["weight", "bias"])
def test_bad_param_dtype(gn, x, dtype, which):
    with pytest.raises(TypeError, match=which):
        gn.group_norm(x, 2, **{which: np.ones(8, dtype)})


@pytest.mark.parametrize("act", ["relu", "gelu", "", "sigmoid", "silu_"])
def test_bad_activation(gn, x, act):
    with pytest.raises(ValueError, match="activation|silu"):
        gn.group_norm(x, 2, activation=act)


def test_bad_activation_backward(gn, x):
    _, m, r = gn.group_norm(x, 2, return_stats=True)
    with pytest.raises(ValueError):
        gn.group_norm_backward(x, x, m, r, 2, activation="relu")


@pytest.mark.parametrize("what", ["skip_bias", "sum_out"])
def test_skip_extras_need_skip(gn, x, what):
    kw = {"skip_bias": np.ones(8, np.float32)} if what == "skip_bias" else {"sum_out": np.empty_like(x)}
    with pytest.raises(ValueError, match="skip"):
        gn.group_norm(x, 2, **kw)


def test_skip_shape_mismatch(gn, x):
    with pytest.raises(ValueError, match="skip"):
        gn.group_norm(x, 2, skip=np.ones((2, 8, 3, 4), np.float32))


def test_skip_bias_shape(gn, x):
    with pytest.raises(ValueError, match="skip_bias"):
        gn.group_norm(x, 2, skip=np.ones_like(x), skip_bias=np.ones(4, np.float32))


def test_sum_out_bad(gn, x):
    with pytest.raises((ValueError, TypeError), match="sum_out"):
        gn.group_norm(x, 2, skip=np.ones_like(x), sum_out=np.empty((2, 8, 3, 4), np.float32))
    ro = np.empty_like(x)
    ro.setflags(write=False)
    with pytest.raises((ValueError, TypeError), match="sum_out"):
        gn.group_norm(x, 2, skip=np.ones_like(x), sum_out=ro)


@pytest.mark.parametrize("shape", [(2, 8, 3, 4), (2, 8, 9), (8, 2, 3, 3)], ids=str)
def test_out_wrong_shape(gn, x, shape):
    with pytest.raises((ValueError, TypeError), match="out"):
        gn.group_norm(x, 2, out=np.empty(shape, np.float32))


@pytest.mark.parametrize("dtype", [np.float64, np.float16, BF16, np.int32], ids=str)
def test_out_wrong_dtype(gn, x, dtype):
    with pytest.raises((ValueError, TypeError), match="out"):
        gn.group_norm(x, 2, out=np.empty(x.shape, dtype))


def test_out_read_only(gn, x):
    out = np.empty_like(x)
    out.setflags(write=False)
    with pytest.raises((ValueError, TypeError), match="out"):
        gn.group_norm(x, 2, out=out)


def test_out_read_only_x_in_place(gn, x):
    x.setflags(write=False)
    with pytest.raises((ValueError, TypeError)):
        gn.group_norm(x, 2, out=x)


def test_out_not_array(gn, x):
    with pytest.raises((ValueError, TypeError)):
        gn.group_norm(x, 2, out=[0.0] * x.size)


def test_failed_call_leaves_out_untouched(gn, x):
    """Argument errors are raised before any output is written."""
    out = np.full_like(x, 123.0)
    with pytest.raises(ValueError):
        gn.group_norm(x, 3, out=out)
    with pytest.raises(ValueError):
        gn.group_norm(x, 2, weight=np.ones(7, np.float32), out=out)
    assert (out == 123.0).all()


def test_set_isa_unknown(gn):
    before = gn.active_isa()
    with pytest.raises(ValueError):
        gn.set_isa("sse9000")
    assert gn.active_isa() == before


@pytest.mark.parametrize("n", [0, -1])
def test_set_num_threads_not_positive(gn, n):
    before = gn.get_num_threads()
    with pytest.raises(ValueError, match="None for the default"):
        gn.set_num_threads(n)
    assert gn.get_num_threads() == before
    with pytest.raises(ValueError, match="num_threads must be positive"):
        gn.group_norm(np.ones((1, 4, 3), np.float32), 2, num_threads=n)


def test_num_threads_above_the_cap_warns_and_runs_capped(gn):
    from groupnorm import _core
    cap = _core.max_threads()
    x = np.random.default_rng(0).standard_normal((8, 16, 40)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match=f"cap of {cap}"):
        y = gn.group_norm(x, 4, num_threads=cap + 1)
    assert np.array_equal(y, gn.group_norm(x, 4, num_threads=1))
    try:
        with pytest.warns(RuntimeWarning, match=f"using {cap}"):
            gn.set_num_threads(1000 + cap)
        assert gn.get_num_threads() == cap
    finally:
        gn.set_num_threads(None)


# ----------------------------------------------------------------- backward argument errors


def test_backward_errors(gn, x):
    _, m, r = gn.group_norm(x, 2, return_stats=True)
    with pytest.raises(ValueError, match="divisible"):
        gn.group_norm_backward(x, x, m, r, 3)
    with pytest.raises(ValueError, match="num_groups"):
        gn.group_norm_backward(x, x, m, r, 0)
    with pytest.raises(ValueError, match="grad_y"):
        gn.group_norm_backward(np.ones((2, 8, 3, 4), np.float32), x, m, r, 2)
    with pytest.raises(TypeError, match="grad_y"):
        gn.group_norm_backward(x.astype(np.float64), x, m, r, 2)
    with pytest.raises(ValueError, match="mean"):
        gn.group_norm_backward(x, x, m[:, :1], r, 2)
    with pytest.raises(ValueError, match="rstd"):
        gn.group_norm_backward(x, x, m, r[:1], 2)
    with pytest.raises(ValueError, match="weight"):
        gn.group_norm_backward(x, x, m, r, 2, weight=np.ones(4, np.float32))
    with pytest.raises(TypeError):
        gn.group_norm_backward(x.astype(np.int32), x.astype(np.int32), m, r, 2)
    with pytest.raises(ValueError):
        gn.group_norm_backward(x[0, 0, 0], x[0, 0, 0], m, r, 2)


# ----------------------------------------------------------------- layer argument errors


def test_layer_errors(gn):
    with pytest.raises(ValueError, match=r"num_channels 8 is not divisible by num_groups 3"):
        gn.GroupNorm(3, 8)
    with pytest.raises(ValueError, match="num_groups"):
        gn.GroupNorm(0, 8)
    with pytest.raises(ValueError, match="eps"):
        gn.GroupNorm(2, 8, eps=float("nan"))
    with pytest.raises(ValueError):
        gn.GroupNorm(2, 8, activation="relu")
    with pytest.raises(TypeError):
        gn.GroupNorm(2, 8, dtype=np.int32)


def test_layer_input_errors(gn, rng):
    layer = gn.GroupNorm(2, 8)
    with pytest.raises(ValueError):
        layer(rng.x((2, 6, 3), np.float32))  # wrong channel count (6 % 2 == 0, so the shape check must catch it)
    with pytest.raises(TypeError):
        layer(np.ones((2, 8, 3), np.int64))


def test_layer_load_state_dict_shape(gn):
    layer = gn.GroupNorm(2, 8)
    with pytest.raises(ValueError, match="weight"):
        layer.load_state_dict({"weight": np.ones(4, np.float32), "bias": np.zeros(8, np.float32)})
    with pytest.raises(ValueError, match="bias"):
        layer.load_state_dict({"weight": np.ones(8, np.float32), "bias": np.zeros((8, 1), np.float32)})
    with pytest.raises(ValueError, match="weight"):
        layer.load_state_dict({"weight": np.ones((), np.float32), "bias": np.zeros(8, np.float32)})


def test_layer_backward_before_forward(gn):
    layer = gn.GroupNorm(2, 8)
    with pytest.raises(Exception):
        layer.backward(np.ones((2, 8, 3), np.float32))


# ----------------------------------------------------------------- the Python error contract
# Every bad scalar argument is a ValueError/TypeError with a short message naming
# it, raised before anything is allocated or written; pybind11's conversion error
# ("incompatible function arguments") never reaches the caller.

BAD_SCALARS = [
    # (keyword, value, exception, text the message must contain)
    ("num_groups", True, TypeError, "num_groups"),
    ("num_groups", False, TypeError, "num_groups"),
    ("num_groups", np.bool_(True), TypeError, "num_groups"),
    ("num_groups", 2**63, ValueError, "num_groups"),
    ("num_groups", 2**64 + 2, ValueError, "num_groups"),
    ("num_groups", -2**63 - 1, ValueError, "num_groups"),
    ("num_groups", 2.0, TypeError, "num_groups"),
    ("num_groups", "2", TypeError, "num_groups"),
    ("num_groups", None, TypeError, "num_groups"),
    ("num_groups", 2**40, ValueError, "num_groups"),
    ("eps", "1e-5", TypeError, "eps"),
    ("eps", b"1e-5", TypeError, "eps"),
    ("eps", None, TypeError, "eps"),
    ("eps", True, TypeError, "eps"),
    ("eps", 1e-5 + 0j, TypeError, "eps"),
    ("eps", [1e-5], TypeError, "eps"),
    ("eps", 10**400, ValueError, "eps"),
    ("eps", float("nan"), ValueError, "eps"),
    ("eps", -1, ValueError, "eps"),
    ("eps", -1e-300, ValueError, "eps"),
    ("channels_last", "no", TypeError, "channels_last"),
    ("channels_last", None, TypeError, "channels_last"),
    ("channels_last", 1, TypeError, "channels_last"),
    ("channels_last", "yes", TypeError, "channels_last"),
    ("return_stats", "yes", TypeError, "return_stats"),
    ("return_stats", None, TypeError, "return_stats"),
    ("return_stats", 0, TypeError, "return_stats"),
    ("num_threads", True, TypeError, "num_threads"),
    ("num_threads", 2.0, TypeError, "num_threads"),
    ("num_threads", "4", TypeError, "num_threads"),
    ("num_threads", 0, ValueError, "num_threads"),
    ("num_threads", -1, ValueError, "num_threads"),
    ("num_threads", -2**70, ValueError, "num_threads"),
    ("activation", 1, TypeError, "activation"),
    ("activation", True, TypeError, "activation"),
    ("activation", "relu", ValueError, "activation"),
    ("activation", "silu\0", ValueError, "activation"),
]


def _check_message(ei, text):
    msg = str(ei.value)
    assert text in msg, msg
    assert "incompatible function arguments" not in msg, msg
    assert len(msg) < 300, msg


@pytest.mark.parametrize("kw,value,exc,text", BAD_SCALARS, ids=lambda v: repr(v)[:20])
@pytest.mark.parametrize("with_outputs", [False, True], ids=["plain", "out+stats"])
def test_bad_scalar_forward(gn, rng, kw, value, exc, text, with_outputs):
    x = rng.x((2, 8, 5), np.float32)
    x0 = x.copy()
    args = {"num_groups": 2, kw: value}
    out = np.full_like(x, np.nan)
    extra = {"out": out} if with_outputs else {}
    if with_outputs and kw != "return_stats":
        extra["return_stats"] = True
    with pytest.raises(exc) as ei:
        gn.group_norm(x, **args, **extra)
    _check_message(ei, text)
    assert np.isnan(out).all(), "out was written by a failing call"
    assert np.array_equal(x, x0)


@pytest.mark.parametrize("kw,value,exc,text",
                         [b for b in BAD_SCALARS if b[0] in ("num_groups", "channels_last", "num_threads",
                                                             "activation")],
                         ids=lambda v: repr(v)[:20])
def test_bad_scalar_backward(gn, rng, kw, value, exc, text):
    x = rng.x((2, 8, 5), np.float32)
    dy = rng.x(x.shape, np.float32)
    _, m, r = gn.group_norm(x, 2, return_stats=True)
    out = np.full_like(x, np.nan)
    args = {"num_groups": 2, kw: value}
    with pytest.raises(exc) as ei:
        gn.group_norm_backward(dy, x, m, r, **args, out=out)
    _check_message(ei, text)
    assert np.isnan(out).all()


def test_huge_num_groups_with_stats_is_a_value_error(gn, rng):
    """(N, num_groups) statistics are not allocated before num_groups is checked."""
    x = rng.x((2, 8, 5), np.float32)
    for g in (2**40, 2**62, 2**63 - 1):
        with pytest.raises(ValueError, match="num_groups"):
            gn.group_norm(x, g, return_stats=True)


def test_numpy_scalars_are_accepted(gn, rng):
    """NumPy integers and floats are ints and reals (bools are not)."""
    from conftest import ref_forward, assert_close
    x = rng.x((2, 8, 5), np.float32)
    y, m, r = gn.group_norm(x, np.int64(4), eps=np.float32(1e-3), channels_last=np.bool_(False),
                            return_stats=np.bool_(True), num_threads=np.int32(2))
    ry, rm, rr = ref_forward(x, 4, eps=float(np.float32(1e-3)))
    assert_close(y, ry, 1e-5, 1e-5)
    assert_close(m, rm, 1e-6, 1e-6)
    y2 = gn.group_norm(x, 4, eps=1)  # an int eps is a real number
    assert_close(y2, ref_forward(x, 4, eps=1.0)[0], 1e-5, 1e-5)


@pytest.mark.parametrize("n", [2**31, 2**40, 2**70])
def test_num_threads_beyond_int32_is_not_a_conversion_error(gn, rng, n):
    """A request beyond the core's int is passed as its largest value, which the core
    caps (at 4x the hardware threads); on a problem big enough to use threads too."""
    from conftest import ref_forward, assert_close
    x = rng.x((64, 32, 512), np.float32)
    y = gn.group_norm(x, 8, num_threads=n)
    assert_close(y, ref_forward(x, 8)[0], 1e-5, 1e-5)
    gn.set_num_threads(n)
    assert 1 <= gn.get_num_threads() <= 4 * (__import__("os").cpu_count() or 1)
    assert_close(gn.group_norm(x, 8), ref_forward(x, 8)[0], 1e-5, 1e-5)
    gn.set_num_threads(None)


@pytest.mark.parametrize("value,exc", [(True, TypeError), (False, TypeError), (2.5, TypeError), ("8", TypeError),
                                       (0, ValueError), (-3, ValueError)])
def test_set_num_threads_bad(gn, value, exc):
    before = gn.get_num_threads()
    with pytest.raises(exc, match="num_threads"):
        gn.set_num_threads(value)
    assert gn.get_num_threads() == before


def test_set_num_threads_none_restores_default(gn):
    default = gn.get_num_threads()
    gn.set_num_threads(None)
    default = gn.get_num_threads()
    gn.set_num_threads(default + 3)
    assert gn.get_num_threads() == default + 3
    gn.set_num_threads(None)
    assert gn.get_num_threads() == default


@pytest.mark.parametrize("name", [None, 3, b"avx2", "portable\0x"])
def test_set_isa_bad_type(gn, name):
    before = gn.active_isa()
    with pytest.raises((TypeError, ValueError)):
        gn.set_isa(name)
    assert gn.active_isa() == before


def test_isa_env_bogus_is_reported():
    """GROUPNORM_ISA naming no available instruction set warns, naming the value and the choices."""
    import subprocess
    import sys
    code = "import warnings; warnings.simplefilter('error'); import groupnorm"
    env = dict(__import__("os").environ, GROUPNORM_ISA="bogus")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode != 0
    assert "GROUPNORM_ISA='bogus'" in p.stderr and "portable" in p.stderr, p.stderr
    env["GROUPNORM_ISA"] = "portable"  # a valid cap: silent, and honoured
    p = subprocess.run([sys.executable, "-c", code + "; print(groupnorm.active_isa())"], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "portable"


def test_layer_scalar_errors(gn):
    for kw, value, exc in [("num_groups", True, TypeError), ("num_channels", 8.0, TypeError),
                           ("num_channels", True, TypeError), ("eps", "1e-5", TypeError),
                           ("channels_last", "no", TypeError), ("affine", None, TypeError),
                           ("dtype", "float99", TypeError), ("dtype", np.int8, TypeError)]:
        args = {"num_groups": 2, "num_channels": 8, kw: value}
        with pytest.raises(exc, match=kw):
            gn.GroupNorm(**args)


@pytest.mark.parametrize("channels_last", [False, True])
def test_layer_channel_mismatch_names_both(gn, rng, channels_last):
    layer = gn.GroupNorm(2, 8, channels_last=channels_last)
    x = rng.x((2, 3, 6) if channels_last else (2, 6, 3), np.float32)
    with pytest.raises(ValueError, match=r"expects 8 channels.*got 6"):
        layer(x)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, BF16], ids=str)
def test_layer_dtype_honoured_and_shown(gn, rng, dtype):
    from conftest import ref_forward, assert_close
    layer = gn.GroupNorm(2, 8, dtype=dtype)
    assert layer.weight.dtype == dtype and layer.bias.dtype == dtype
    assert f"dtype={np.dtype(dtype).name}" in repr(layer)
    assert layer.dtype == np.dtype(dtype)
    w, b = rng.params(8, np.float32)
    layer.weight[...] = w
    layer.bias[...] = b
    x = rng.x((2, 8, 5), np.float32)
    y = layer(x)
    assert y.dtype == np.float32
    assert_close(y, ref_forward(x, 2, layer.weight, layer.bias)[0], 1e-5, 1e-5)
    layer.backward(rng.x(x.shape, np.float32))
    assert layer.weight_grad.dtype == dtype and layer.bias_grad.dtype == dtype


@pytest.mark.parametrize("value", ["no", None, 1])
def test_split_phase_channels_last_must_be_bool(gn, rng, value):
    x = rng.x((2, 8, 5), np.float32)
    with pytest.raises(TypeError, match="channels_last"):
        gn.moments(x, 2, channels_last=value)
    _, m, r = gn.group_norm(x, 2, return_stats=True)
    with pytest.raises(TypeError, match="channels_last"):
        gn.backward_sums(x, x, m, r, 2, channels_last=value)
