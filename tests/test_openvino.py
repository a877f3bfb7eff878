"""The OpenVINO extension: ONNX models with each GroupNorm spec, read by OpenVINO with the extension
loaded, run on the CPU device by groupnorm's kernel, equal to each spec's reference.

The extension is built with the package (CMAKE_ARGS="-DGROUPNORM_OPENVINO=ON", see the README):
a package built without it fails these tests (groupnorm.openvino.extension_path() raises), never
skips them. openvino and onnx are in the [test] extra.
"""
import os

import numpy as np
import pytest

import onnx  # test dependencies: missing is an error, not a skip
import openvino as ov
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import groupnorm
import groupnorm.openvino as gov
import engines
from conftest import F16, F32, F64, assert_close, dtype_id
from test_onnx_specs import ref_contrib, tolerance

ONNX_TYPES = {F32: TensorProto.FLOAT, F16: TensorProto.FLOAT16}
CONFIG = {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": "f32"}


@pytest.fixture(scope="module")
def core():
    engines.ensure(gov.ENV_VAR, gov.packaged_path(), "libgroupnorm_openvino.so")
    c = ov.Core()
    c.add_extension(gov.extension_path())
    return c


def make_model(nodes, inputs, outputs, initializers, opset=21, contrib=False):
    graph = helper.make_graph(nodes, "gn", inputs, outputs, initializer=initializers)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if contrib else [])
    return helper.make_model(graph, opset_imports=imports)


def run(core, model, feeds, tmp_path, config=CONFIG):
    """(outputs, model read with the extension, perf counters)."""
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    read = core.read_model(str(path))
    compiled = core.compile_model(read, "CPU", config)
    request = compiled.create_infer_request()
    result = request.infer(feeds)
    outs = [np.array(result[o]) for o in compiled.outputs]
    return outs, read, request.get_profiling_info()


def assert_served_by_groupnorm(read, perf, count):
    """Every GroupNorm node of the model is our operation, and each ran (a 'Reference' node, the CPU
    plugin's executor of extension operations, of that name in the performance counters)."""
    ours = [op for op in read.get_ordered_ops() if op.get_type_name() == gov.OP_TYPE]
    assert len(ours) == count, [op.get_type_name() for op in read.get_ordered_ops()]
    stock = [op.get_type_name() for op in read.get_ordered_ops() if op.get_type_name() in ("GroupNormalization", "MVN")]
    assert not stock, f"stock normalization nodes left in the model: {stock}"
    executed = {p.node_name: p for p in perf if p.status == ov.ProfilingInfo.Status.EXECUTED}
    for op in ours:
        name = op.get_friendly_name()
        assert name in executed, f"{name} not among executed nodes {sorted(executed)}"
        assert executed[name].node_type == "Reference", (name, executed[name].node_type)


def params(rng, n, dtype):
    return rng.standard_normal(n).astype(dtype)


# ----------------------------------------------------------------------------- GroupNormalization-18/21


@pytest.mark.parametrize("dtype", [F32, F16], ids=dtype_id)
@pytest.mark.parametrize("opset", [18, 21])
def test_group_normalization(core, tmp_path, rng, dtype, opset):
    g = rng.rng
    N, C, G = 2, 16, 4
    x = (g.standard_normal((N, C, 6, 5)) * 2 + 0.5).astype(dtype)
    pc = G if opset == 18 else C
    scale, bias = params(g, pc, dtype), params(g, pc, dtype)
    t = ONNX_TYPES[dtype]
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=G, epsilon=1e-3)
    model = make_model([node], [helper.make_tensor_value_info("x", t, list(x.shape))],
                       [helper.make_tensor_value_info("y", t, None)],
                       [numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(bias, "bias")], opset)
    (y,), read, perf = run(core, model, {"x": x}, tmp_path)
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    assert y.dtype == dtype
    rtol, atol = tolerance(dtype, x=x, groups=G, epsilon=1e-3)
    assert_close(y, expected, rtol, atol, f"GroupNormalization-{opset} {dtype_id(dtype)} in OpenVINO")
    assert_served_by_groupnorm(read, perf, 1)
    if dtype == F32:  # the kernel itself: bitwise what the NumPy API gives
        w = np.repeat(scale, C // G) if opset == 18 else scale
        b = np.repeat(bias, C // G) if opset == 18 else bias
        np.testing.assert_array_equal(y, groupnorm.group_norm(x, G, w, b, float(np.float32(1e-3))))


def test_opset18_scale_as_an_input(core, tmp_path, rng):
    """Per-group scale/bias fed at run time (not initializers): repeated per channel inside the graph."""
    g = rng.rng
    x = g.standard_normal((2, 12, 5)).astype(F32)
    scale, bias = params(g, 3, F32), params(g, 3, F32)
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=3)
    model = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape)),
                                helper.make_tensor_value_info("scale", TensorProto.FLOAT, [3]),
                                helper.make_tensor_value_info("bias", TensorProto.FLOAT, [3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [], 18)
    (y,), read, perf = run(core, model, {"x": x, "scale": scale, "bias": bias}, tmp_path)
    expected = ReferenceEvaluator(model).run(None, {"x": x, "scale": scale, "bias": bias})[0]
    assert_close(y, expected, *tolerance(F32, x=x, groups=3), "GroupNormalization-18, scale as an input")
    assert_served_by_groupnorm(read, perf, 1)


@pytest.mark.parametrize("stash_type", [1, 10, 11])
def test_stash_type(core, tmp_path, rng, stash_type):
    g = rng.rng
    x = g.standard_normal((1, 8, 4, 4)).astype(F32)
    scale, bias = params(g, 8, F32), params(g, 8, F32)
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=2, stash_type=stash_type)
    model = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                       [numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(bias, "bias")])
    (y,), read, perf = run(core, model, {"x": x}, tmp_path)
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    stash = {1: F32, 10: F16, 11: F64}[stash_type]
    assert_close(y, expected, *tolerance(F32, stash, x=x, groups=2), f"stash_type {stash_type}")
    assert_served_by_groupnorm(read, perf, 1)


def test_threads_give_the_same_bits(core, tmp_path, rng):
    """On OpenVINO's threads (1 or 2 of them) the result is bitwise the same."""
    g = rng.rng
    x = g.standard_normal((2, 64, 32, 32)).astype(F32)
    scale, bias = params(g, 64, F32), params(g, 64, F32)
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=8)
    model = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                       [numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(bias, "bias")])
    (y1,), _, _ = run(core, model, {"x": x}, tmp_path, dict(CONFIG, INFERENCE_NUM_THREADS=1))
    (y2,), _, _ = run(core, model, {"x": x}, tmp_path, dict(CONFIG, INFERENCE_NUM_THREADS=2))
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(y1, groupnorm.group_norm(x, 8, scale, bias, float(np.float32(1e-5)), num_threads=1))


def test_stability_mean_1e4(core, tmp_path, rng):
    """float32 data with mean 1e4: ours within 1e-4 of float64; stock OpenVINO's error is larger."""
    g = rng.rng
    x = (g.standard_normal((1, 32, 32, 32)) + 1e4).astype(F32)
    scale, bias = np.ones(32, F32), np.zeros(32, F32)
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=8)
    model = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                       [numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(bias, "bias")])
    exact = groupnorm.group_norm(x.astype(F64), 8, eps=float(np.float32(1e-5)))
    (ours,), _, _ = run(core, model, {"x": x}, tmp_path)
    (stock,), _, _ = run(ov.Core(), model, {"x": x}, tmp_path)
    err_ours, err_stock = np.abs(ours - exact).max(), np.abs(stock - exact).max()
    assert err_ours < 1e-4, err_ours
    assert not err_stock <= err_ours, f"stock OpenVINO {err_stock:.2e} vs ours {err_ours:.2e}"


# ----------------------------------------------------------------------------- com.microsoft contrib ops


@pytest.mark.parametrize("dtype", [F32, F16], ids=dtype_id)
@pytest.mark.parametrize("channels_last", [1, 0])
@pytest.mark.parametrize("activation", [0, 1])
def test_microsoft_group_norm(core, tmp_path, rng, dtype, channels_last, activation):
    g = rng.rng
    shape = (2, 6, 5, 32) if channels_last else (2, 32, 6, 5)
    x = (g.standard_normal(shape) * 1.5 - 0.5).astype(dtype)
    gamma, beta = params(g, 32, F32), params(g, 32, F32)  # float32 gamma/beta (M), as ORT's fp16 models keep them
    t = ONNX_TYPES[dtype]
    node = helper.make_node("GroupNorm", ["x", "gamma", "beta"], ["y"], domain="com.microsoft", groups=8,
                            activation=activation, channels_last=channels_last, epsilon=1e-5)
    model = make_model([node], [helper.make_tensor_value_info("x", t, list(shape))],
                       [helper.make_tensor_value_info("y", t, None)],
                       [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(beta, "beta")], contrib=True)
    (y,), read, perf = run(core, model, {"x": x}, tmp_path)
    expected, _ = ref_contrib(x, gamma, beta, 8, activation, float(np.float32(1e-5)), channels_last)
    rtol, atol = (4e-3, 4e-3) if dtype == F16 else (1e-5, 1e-5)
    assert_close(y, expected, rtol, atol, "com.microsoft.GroupNorm in OpenVINO")
    assert_served_by_groupnorm(read, perf, 1)


@pytest.mark.parametrize("dtype", [F32, F16], ids=dtype_id)
@pytest.mark.parametrize("channels_last", [1, 0])
@pytest.mark.parametrize("skip_form,with_bias,with_sum", [("full", True, True), ("full", False, False),
                                                          ("nc", True, False), ("n11c", False, True)])
def test_microsoft_skip_group_norm(core, tmp_path, rng, dtype, channels_last, skip_form, with_bias, with_sum):
    g = rng.rng
    n, c, h, w = 2, 16, 4, 5
    shape = (n, h, w, c) if channels_last else (n, c, h, w)
    skip_shape = {"full": shape, "nc": (n, c), "n11c": (n, 1, 1, c) if channels_last else (n, c, 1, 1)}[skip_form]
    x = (g.standard_normal(shape) + 0.3).astype(dtype)
    skip = g.standard_normal(skip_shape).astype(dtype)
    bias = params(g, c, dtype) if with_bias else None
    gamma, beta = params(g, c, dtype), params(g, c, dtype)
    t = ONNX_TYPES[dtype]
    ins = ["x", "gamma", "beta", "skip"] + (["bias"] if with_bias else [])
    outs = ["y", "s"] if with_sum else ["y"]
    node = helper.make_node("SkipGroupNorm", ins, outs, domain="com.microsoft", groups=4, activation=1,
                            channels_last=channels_last)
    inits = [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(beta, "beta")]
    if with_bias:
        inits.append(numpy_helper.from_array(bias, "bias"))
    model = make_model([node], [helper.make_tensor_value_info("x", t, list(shape)),
                                helper.make_tensor_value_info("skip", t, list(skip_shape))],
                       [helper.make_tensor_value_info(o, t, None) for o in outs], inits, contrib=True)
    got, read, perf = run(core, model, {"x": x, "skip": skip}, tmp_path)
    assert len(got) == len(outs)
    expected, s_expected = ref_contrib(x, gamma, beta, 4, 1, float(np.float32(1e-5)), channels_last, skip, bias)
    rtol, atol = (4e-3, 4e-3) if dtype == F16 else (1e-5, 1e-5)
    assert_close(got[0], expected, rtol, atol, "com.microsoft.SkipGroupNorm Y in OpenVINO")
    if with_sum:
        assert_close(got[1], s_expected, rtol, atol, "com.microsoft.SkipGroupNorm S in OpenVINO")
    assert_served_by_groupnorm(read, perf, 1)


# ----------------------------------------------------------------------------- bad models


def _read(core, tmp_path, model):
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    return core.read_model(str(path))


@pytest.mark.parametrize("attrs,scale_len,match", [
    (dict(num_groups=4, stash_type=0), 16, "stash_type must be 1, 10, 11 or 16"),
    (dict(num_groups=4), 8, "scale and bias must both have num_channels 16"),
    (dict(num_groups=3), 16, "num_channels 16 is not divisible by num_groups 3"),
])
def test_bad_group_normalization(core, tmp_path, attrs, scale_len, match):
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], **attrs)
    model = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 4, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                       [numpy_helper.from_array(np.ones(scale_len, F32), "scale"),
                        numpy_helper.from_array(np.zeros(scale_len, F32), "bias")])
    with pytest.raises(Exception, match=match):
        _read(core, tmp_path, model)


def test_bad_contrib(core, tmp_path):
    node = helper.make_node("GroupNorm", ["x", "gamma", "beta"], ["y"], domain="com.microsoft", groups=4,
                            activation=2)
    model = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 16])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                       [numpy_helper.from_array(np.ones(16, F32), "gamma"),
                        numpy_helper.from_array(np.zeros(16, F32), "beta")], contrib=True)
    with pytest.raises(Exception, match="activation must be 0 or 1"):
        _read(core, tmp_path, model)


def test_extension_path_names_the_build(monkeypatch, tmp_path):
    monkeypatch.setenv(gov.ENV_VAR, str(tmp_path / "missing.so"))
    with pytest.raises(FileNotFoundError, match="GROUPNORM_OPENVINO=ON"):
        gov.extension_path()
    monkeypatch.delenv(gov.ENV_VAR)
    if os.path.isfile(gov.packaged_path()):  # built with the package: the default
        assert gov.extension_path() == gov.packaged_path()
    else:
        with pytest.raises(FileNotFoundError, match="GROUPNORM_OPENVINO=ON"):
            gov.extension_path()
