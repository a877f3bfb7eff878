"""groupnorm.onnx: every GroupNorm spec mapped onto the one kernel, checked against that spec's reference.

- GroupNormalization-18 and -21 (every stash_type, every dtype) against onnx.reference (the ONNX
  function body run by NumPy), and the backend test cases the onnx package ships;
- com.microsoft.GroupNorm / SkipGroupNorm (no reference in onnx) against an independent float64
  reference written here from ONNX Runtime's operator documentation.
"""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import onnx  # a test dependency (the [test] extra): missing is an error, not a skip
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import groupnorm.onnx as gno
from conftest import BF16, F16, F32, F64, assert_close, dtype_id

ONNX_TYPES = {F32: TensorProto.FLOAT, F16: TensorProto.FLOAT16, F64: TensorProto.DOUBLE, BF16: TensorProto.BFLOAT16}
STASH = {1: F32, 10: F16, 11: F64, 16: BF16}
BITS = {F64: 53, F32: 24, F16: 11, BF16: 8}


def gn_model(opset, dtype, num_groups, epsilon=None, stash_type=None):
    attrs = {"num_groups": num_groups}
    if epsilon is not None:
        attrs["epsilon"] = epsilon
    if stash_type is not None:
        attrs["stash_type"] = stash_type
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], **attrs)
    t = ONNX_TYPES[np.dtype(dtype)]
    graph = helper.make_graph([node], "gn", [helper.make_tensor_value_info(n, t, None) for n in ("x", "scale", "bias")],
                              [helper.make_tensor_value_info("y", t, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model, node


def run_reference(model, x, scale, bias):
    return ReferenceEvaluator(model).run(None, {"x": x, "scale": scale, "bias": bias})[0]


def tolerance(*dtypes, x=None, groups=None, epsilon=1e-5):
    """rtol/atol for outputs that carry the rounding of the narrowest type involved: a few units in
    its last place (the reference rounds several intermediates in it, we round once), times the
    condition of the reference's own variance, E[x^2] - E[x]^2, which loses E[x^2] / var of those
    units (given x and groups: the worst group's E[x^2] / (var + eps), computed in float64)."""
    bits = min(BITS[np.dtype(d)] for d in dtypes)
    eps = 2.0 ** (1 - bits)
    cond = 1.0
    if x is not None:
        g = np.asarray(x).astype(F64).reshape(x.shape[0], groups, -1)
        cond = float(((g ** 2).mean(axis=2) / (g.var(axis=2) + epsilon)).max())
    return 8 * eps * cond, 8 * eps * cond


def data(rng, shape, dtype, scale=1.0, offset=0.0):
    rng = getattr(rng, "rng", rng)  # conftest's Data or a numpy Generator
    return (rng.standard_normal(shape) * scale + offset).astype(dtype)


# ----------------------------------------------------------------------------- GroupNormalization-18/21


@pytest.mark.parametrize("dtype", [F32, F16, F64, BF16], ids=dtype_id)
@pytest.mark.parametrize("shape,G", [((2, 8, 5, 6), 4), ((3, 48), 3), ((1, 12, 16), 12), ((2, 4, 3, 2, 5), 1)])
@pytest.mark.parametrize("opset", [18, 21])
def test_group_normalization_vs_onnx_reference(rng, dtype, shape, G, opset):
    C = shape[1]
    x = data(rng, shape, dtype, 2.0, 0.5)
    pc = C if opset == 21 else G
    scale, bias = data(rng, pc, dtype), data(rng, pc, dtype)
    eps = float(rng.rng.choice([1e-5, 1e-3, 0.1]))
    model, node = gn_model(opset, dtype, G, eps)
    expected = run_reference(model, x, scale, bias)
    got = gno.group_normalization(x, scale, bias, G, eps, opset=opset)
    assert got.dtype == x.dtype and got.shape == x.shape
    stage_one = dtype if opset == 18 else F32  # opset 21's default stash_type is float32
    rtol, atol = tolerance(dtype, stage_one, x=x, groups=G, epsilon=eps)
    assert_close(got, expected, rtol, atol, f"GroupNormalization-{opset} {dtype_id(dtype)}")
    # the same through the node runner, with the version read from the opset, and from scale's shape
    # (which tells the versions apart unless num_groups == C: there only stage one's precision differs)
    if G != C:
        assert_close(gno.run_node(node, [x, scale, bias])[0], expected, rtol, atol, "run_node")
    assert_close(gno.run_node(node, [x, scale, bias], opset=opset)[0], expected, rtol, atol, "run_node(opset)")


@pytest.mark.parametrize("dtype", [F32, F16, F64, BF16], ids=dtype_id)
@pytest.mark.parametrize("stash_type", [1, 10, 11, 16])
def test_stash_type_vs_onnx_reference(rng, dtype, stash_type):
    """stage one in the stash type: a narrower one shows its rounding, exactly as the reference's does."""
    x = data(rng, (2, 6, 4, 5), dtype, 1.5, 0.3)
    scale, bias = data(rng, 6, dtype), data(rng, 6, dtype)
    model, node = gn_model(21, dtype, 3, 1e-4, stash_type)
    expected = run_reference(model, x, scale, bias)
    got = gno.group_normalization(x, scale, bias, 3, 1e-4, stash_type=stash_type)
    rtol, atol = tolerance(dtype, STASH[stash_type], x=x, groups=3, epsilon=1e-4)
    assert_close(got, expected, rtol, atol, f"stash_type {stash_type} on {dtype_id(dtype)}")
    assert_close(gno.run_node(node, [x, scale, bias])[0], expected, rtol, atol, "run_node")


def test_narrow_stash_rounds_like_the_spec(rng):
    """float64 data with a bfloat16 stash carries bfloat16's rounding (the spec's stage one), not float64's."""
    x = data(rng, (1, 4, 64), F64)
    scale, bias = np.ones(4), np.zeros(4)
    exact = gno.group_normalization(x, scale, bias, 2, stash_type=11)
    narrow = gno.group_normalization(x, scale, bias, 2, stash_type=16)
    model, _ = gn_model(21, F64, 2, None, 16)
    expected = run_reference(model, x, scale, bias)
    assert np.abs(narrow - exact).max() > 1e-4  # bfloat16 rounding shows
    assert_close(narrow, expected, *tolerance(BF16), "bfloat16 stash on float64")
    # every normalized value is a bfloat16 number, as the reference's Cast makes it
    assert np.array_equal(narrow, narrow.astype(BF16).astype(F64))


def test_opset18_scale_is_per_group(rng):
    x = data(rng, (2, 8, 3), F32)
    scale, bias = np.array([1, 2, 3, 4], F32), np.array([0, 10, 20, 30], F32)
    y = gno.group_normalization(x, scale, bias, 4, opset=18)
    y21 = gno.group_normalization(x, np.repeat(scale, 2), np.repeat(bias, 2), 4, opset=21)
    np.testing.assert_array_equal(y, y21)


def test_onnx_backend_test_cases():
    """The GroupNormalization node test cases the onnx package ships (function and expanded forms)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = [c for c in collect_testcases("GroupNormalization") if "group_normalization" in c.name]
    assert len(cases) >= 2, [c.name for c in cases]
    for case in cases:
        model = case.model
        opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        node = next(n for n in model.graph.node if n.op_type == "GroupNormalization") \
            if any(n.op_type == "GroupNormalization" for n in model.graph.node) else None
        for inputs, outputs in case.data_sets:
            if node is None:  # the expanded form: run the original op's attributes from the case name's twin
                continue
            got = gno.run_node(node, inputs, opset=opset)[0]
            np.testing.assert_allclose(got, outputs[0], rtol=case.rtol, atol=max(case.atol, 1e-6), err_msg=case.name)
    assert any(n.op_type == "GroupNormalization" for c in cases for n in c.model.graph.node)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 3), groups=st.integers(1, 6), cpg=st.integers(1, 4), spatial=st.lists(st.integers(1, 6),
       max_size=3), opset=st.sampled_from([18, 21]), stash=st.sampled_from([1, 10, 11, 16]),
       dtype=st.sampled_from([F32, F16, F64]), eps=st.sampled_from([1e-5, 1e-2, 0.5]), seed=st.integers(0, 2**31))
def test_group_normalization_fuzz(n, groups, cpg, spatial, opset, stash, dtype, eps, seed):
    rng = np.random.default_rng(seed)
    shape = (n, groups * cpg, *spatial)
    x = data(rng, shape, dtype, 1.0 + 3 * rng.random(), rng.standard_normal())
    pc = groups * cpg if opset == 21 else groups
    scale, bias = data(rng, pc, dtype), data(rng, pc, dtype)
    stash_type = stash if opset == 21 else None
    model, node = gn_model(opset, dtype, groups, eps, stash_type)
    expected = run_reference(model, x, scale, bias)
    got = gno.run_node(node, [x, scale, bias], opset=opset)[0]
    narrowest = [dtype, STASH[stash] if opset == 21 else dtype]
    rtol, atol = tolerance(*narrowest, x=x, groups=groups, epsilon=eps)
    assert_close(got, expected, 2 * rtol, 2 * atol, f"{shape} G={groups} opset {opset} stash {stash}")


@pytest.mark.parametrize("kwargs,match", [
    (dict(stash_type=0), "stash_type must be one of"),
    (dict(stash_type=2), "stash_type must be one of"),
    (dict(opset=17), "opset must be one of"),
    (dict(opset=18, stash_type=10), "GroupNormalization-21 only"),
])
def test_group_normalization_bad_attributes(rng, kwargs, match):
    x = data(rng, (2, 4, 3), F32)
    with pytest.raises(ValueError, match=match):
        gno.group_normalization(x, np.ones(4, F32), np.zeros(4, F32), 2, **kwargs)


def test_group_normalization_bad_inputs(rng):
    x = data(rng, (2, 4, 3), F32)
    with pytest.raises(ValueError, match=r"scale must have shape \(4,\)"):
        gno.group_normalization(x, np.ones(2, F32), np.zeros(2, F32), 2)  # opset 21 wants C values
    with pytest.raises(ValueError, match=r"scale must have shape \(2,\)"):
        gno.group_normalization(x, np.ones(4, F32), np.zeros(4, F32), 2, opset=18)
    with pytest.raises(TypeError, match="scale must have x's dtype"):
        gno.group_normalization(x, np.ones(4, F64), np.zeros(4, F32), 2)
    with pytest.raises(ValueError, match="not divisible by num_groups 3"):
        gno.group_normalization(x, np.ones(4, F32), np.zeros(4, F32), 3)
    with pytest.raises(TypeError, match="stash_type must be an int"):
        gno.group_normalization(x, np.ones(4, F32), np.zeros(4, F32), 2, stash_type=1.0)


def test_stability_mean_1e4(rng):
    """float32 data with mean 1e4: ours stays ~1e-5 from float64; the reference's E[x^2]-E[x]^2 does not."""
    x = data(rng, (2, 8, 16, 16), F32, 1.0, 1e4)
    scale, bias = np.ones(8, F32), np.zeros(8, F32)
    exact = gno.group_normalization(x.astype(F64), scale.astype(F64), bias.astype(F64), 4, stash_type=11)
    got = gno.group_normalization(x, scale, bias, 4)
    assert np.abs(got - exact).max() < 1e-3
    model, _ = gn_model(21, F32, 4)
    ref = run_reference(model, x, scale, bias)
    # the reference's error is 10x ours or worse (or NaN: its variance went negative)
    assert not (np.abs(ref - exact) <= 10 * np.abs(got - exact).max()).all()


# ----------------------------------------------------------------------------- com.microsoft contrib ops


def ref_contrib(x, gamma, beta, groups, activation, eps, channels_last, skip=None, bias=None):
    """float64 reference of com.microsoft.(Skip)GroupNorm: s = x + skip + bias stored in x's type, its
    group statistics two-pass in float64, y = act(gamma * (s - mean) / sqrt(var + eps) + beta)."""
    s = x.astype(F64)
    if skip is not None:
        sk = skip.astype(F64)
        if sk.shape != x.shape:  # one value per sample and channel
            n, c = x.shape[0], gamma.shape[0]
            shape = (n,) + (1,) * (x.ndim - 2) + (c,) if channels_last else (n, c) + (1,) * (x.ndim - 2)
            sk = sk.reshape(shape)
        s = s.astype(F32) + sk.astype(F32)
        if bias is not None:
            bshape = (1,) * (x.ndim - 1) + (-1,) if channels_last else (1, -1) + (1,) * (x.ndim - 2)
            s = s + bias.astype(F32).reshape(bshape)
        s = s.astype(x.dtype).astype(F64)
    sc = np.moveaxis(s, -1, 1) if channels_last else s
    n, c = sc.shape[:2]
    g = sc.reshape(n, groups, -1)
    mean = g.mean(axis=2, keepdims=True)
    var = ((g - mean) ** 2).mean(axis=2, keepdims=True)
    xhat = ((g - mean) / np.sqrt(var + eps)).reshape(sc.shape)
    pshape = (1, c) + (1,) * (sc.ndim - 2)
    z = xhat * gamma.astype(F64).reshape(pshape) + beta.astype(F64).reshape(pshape)
    if activation == 1:
        z = z / (1.0 + np.exp(-z))
    y = np.moveaxis(z, 1, -1) if channels_last else z
    return y, s


def contrib_node(op, outputs=("y",), **attrs):
    inputs = ["x", "gamma", "beta"] + (["skip", "bias"] if op == "SkipGroupNorm" else [])
    return helper.make_node(op, inputs, list(outputs), domain="com.microsoft", **attrs)


@pytest.mark.parametrize("dtype,param_dtype", [(F32, F32), (F16, F16), (F16, F32), (F32, F16)],
                         ids=lambda d: dtype_id(d))
@pytest.mark.parametrize("channels_last", [1, 0])
@pytest.mark.parametrize("activation", [0, 1])
def test_microsoft_group_norm(rng, dtype, param_dtype, channels_last, activation):
    shape = (2, 5, 7, 16) if channels_last else (2, 16, 5, 7)
    x = data(rng, shape, dtype, 2.0, -1.0)
    gamma, beta = data(rng, 16, param_dtype), data(rng, 16, param_dtype)
    eps = 1e-5
    expected, _ = ref_contrib(x, gamma, beta, 4, activation, eps, channels_last)
    y = gno.microsoft_group_norm(x, gamma, beta, 4, activation, eps, channels_last=channels_last)
    assert y.dtype == dtype and y.shape == shape
    rtol, atol = (4e-3, 4e-3) if dtype == F16 else (1e-5, 1e-5)
    assert_close(y, expected, rtol, atol, "GroupNorm")
    node = contrib_node("GroupNorm", groups=4, activation=activation, channels_last=channels_last, epsilon=eps)
    np.testing.assert_array_equal(gno.run_node(node, [x, gamma, beta])[0], y)


@pytest.mark.parametrize("dtype", [F32, F16], ids=dtype_id)
@pytest.mark.parametrize("channels_last", [1, 0])
@pytest.mark.parametrize("skip_form", ["full", "nc", "n11c"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_microsoft_skip_group_norm(rng, dtype, channels_last, skip_form, with_bias):
    n, c, h, w = 2, 8, 4, 3
    shape = (n, h, w, c) if channels_last else (n, c, h, w)
    x = data(rng, shape, dtype, 1.0, 0.5)
    skip_shape = {"full": shape, "nc": (n, c), "n11c": (n, 1, 1, c) if channels_last else (n, c, 1, 1)}[skip_form]
    skip = data(rng, skip_shape, dtype, 1.0, -0.2)
    bias = data(rng, c, dtype) if with_bias else None
    gamma, beta = data(rng, c, F32), data(rng, c, F32)
    expected, s_expected = ref_contrib(x, gamma, beta, 2, 1, 1e-5, channels_last, skip, bias)
    y, s = gno.microsoft_skip_group_norm(x, gamma, beta, skip, bias, groups=2, activation=1,
                                         channels_last=channels_last, return_sum=True)
    rtol, atol = (4e-3, 4e-3) if dtype == F16 else (1e-5, 1e-5)
    assert_close(y, expected, rtol, atol, "SkipGroupNorm Y")
    assert s.dtype == dtype
    np.testing.assert_array_equal(s.astype(F64), s_expected)  # x + skip + bias in float, stored in x's type
    node = contrib_node("SkipGroupNorm", outputs=("y", "s"), groups=2, activation=1, channels_last=channels_last)
    y2, s2 = gno.run_node(node, [x, gamma, beta, skip, bias])
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(s2, s)
    node1 = contrib_node("SkipGroupNorm", groups=2, activation=1, channels_last=channels_last)
    np.testing.assert_array_equal(gno.run_node(node1, [x, gamma, beta, skip, bias])[0], y)


def test_microsoft_defaults_are_channels_last(rng):
    x = data(rng, (1, 3, 3, 8), F32)
    node = contrib_node("GroupNorm", groups=2, activation=0)
    y = gno.run_node(node, [x, np.ones(8, F32), np.zeros(8, F32)])[0]
    expected, _ = ref_contrib(x, np.ones(8), np.zeros(8), 2, 0, 1e-5, True)
    assert_close(y, expected, 1e-5, 1e-5, "default channels_last=1, epsilon=1e-5")


def test_microsoft_bad_arguments(rng):
    x = data(rng, (1, 3, 3, 8), F32)
    g, b = np.ones(8, F32), np.zeros(8, F32)
    with pytest.raises(ValueError, match="activation must be 0"):
        gno.microsoft_group_norm(x, g, b, 2, 2)
    with pytest.raises(ValueError, match="channels_last must be 0 or 1"):
        gno.microsoft_group_norm(x, g, b, 2, 0, channels_last=3)
    with pytest.raises(TypeError, match="X must be float16 or float32"):
        gno.microsoft_group_norm(x.astype(F64), g, b, 2, 0)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\)"):
        gno.microsoft_group_norm(x, g, b, 2, 0, channels_last=0)
    with pytest.raises(ValueError, match="skip must have x's shape"):
        gno.microsoft_skip_group_norm(x, g, b, x[:, :2], groups=2, activation=0)
    with pytest.raises(ValueError, match="needs the attribute groups"):
        gno.run_node(contrib_node("GroupNorm", activation=0), [x, g, b])
    with pytest.raises(ValueError, match="run_node runs GroupNormalization"):
        gno.run_node(helper.make_node("LayerNormalization", ["x", "g"], ["y"]), [x, g])
