"""Peers and copy floors for bench/run.py.

Every builder takes a :class:`Case` and returns ``(fn, note)``: ``fn`` is a
zero-argument callable that runs the operation once on the case's
preallocated data (what gets timed); ``note`` says anything a reader of the
results should know (e.g. that a channels-last peer runs through Transposes).
A builder raises when the peer cannot run the case; run.py records the reason
and reports the peer as missing for that row.

Peers: PyTorch (forward, backward via autograd, group_norm + silu), OpenVINO
(forward, opset12 GroupNormalization), ONNX Runtime (forward, standard
GroupNormalization opset 21), ncnn (forward: its GroupNorm layer in a generated
net, and the layer alone in place on data already in its packed layout). Copy
floors: groupnorm._core.parallel_copy and torch's Tensor.copy_, both with the
case's thread count.
"""
from __future__ import annotations

import dataclasses
import importlib

import numpy as np

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except Exception:  # pragma: no cover - ml_dtypes is a dependency of groupnorm
    ml_dtypes = None
    BF16 = None


@dataclasses.dataclass
class Case:
    """One (shape, layout, dtype, threads) configuration and its data.

    ``dims`` is the logical (N, C, *spatial) shape; ``x``/``grad_y`` are in
    the layout's memory order: (N, C, *spatial) for "cf" and (N, *spatial, C)
    for "cl", C-contiguous in both cases.
    """
    shape_name: str
    dims: tuple
    groups: int
    layout: str
    dtype: np.dtype
    threads: int
    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    grad_y: np.ndarray
    eps: float = 1e-5

    @property
    def channels_last(self):
        return self.layout == "cl"

    @property
    def channels(self):
        return self.dims[1]


def peer_versions():
    """{name: version or None} for the peers that can be imported."""
    out = {}
    for name, mod in (("torch", "torch"), ("openvino", "openvino"), ("onnxruntime", "onnxruntime"),
                      ("ncnn", "ncnn"), ("ncnn_packed", "ncnn")):
        try:
            out[name] = importlib.import_module(mod).__version__
        except Exception as e:  # noqa: BLE001 - any import failure means "not installed"
            out[name] = None
            out[name + "_error"] = f"{type(e).__name__}: {e}"
    return out


def _perm_to_cf(ndim):
    """Axes that turn an (N, *spatial, C) array into (N, C, *spatial)."""
    return [0, ndim - 1] + list(range(1, ndim - 1))


def _perm_to_cl(ndim):
    """Axes that turn an (N, C, *spatial) array into (N, *spatial, C)."""
    return [0] + list(range(2, ndim)) + [1]


# ----------------------------------------------------------------------------------------- torch

def _torch():
    import torch
    return torch


def to_torch(a):
    """A torch tensor sharing ``a``'s memory (bfloat16 through an int16 view)."""
    torch = _torch()
    if BF16 is not None and a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def torch_logical(case, a):
    """``a`` (in the case's memory order) as a logically NCHW torch tensor.

    For channels-last this is a permuted view: logical (N, C, *spatial) in
    torch.channels_last / channels_last_3d memory, no copy.
    """
    torch = _torch()
    t = to_torch(a)
    if case.channels_last:
        t = t.permute(*_perm_to_cf(a.ndim))
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.dim())
        if fmt is not None and not t.is_contiguous(memory_format=fmt):
            raise RuntimeError("channels-last view is not in torch's channels_last memory format")
    return t


def _torch_memory_format(case):
    torch = _torch()
    if not case.channels_last:
        return torch.contiguous_format
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(len(case.dims), torch.contiguous_format)


def _torch_note(case):
    if not case.channels_last:
        return ""
    return {4: "torch.channels_last", 5: "torch.channels_last_3d"}.get(
        len(case.dims), "permuted view (no torch channels-last format for this rank)")


def torch_forward(case, activation=None):
    torch = _torch()
    F = torch.nn.functional
    x = torch_logical(case, case.x)
    w, b = to_torch(case.weight), to_torch(case.bias)
    g, eps = case.groups, case.eps
    fmt = _torch_memory_format(case)
    y = F.group_norm(x, g, w, b, eps)
    if case.channels_last and not y.is_contiguous(memory_format=fmt):
        raise RuntimeError("torch group_norm did not keep the channels-last memory format")
    note = _torch_note(case)
    if activation == "silu":
        def fn():
            return F.silu(F.group_norm(x, g, w, b, eps), inplace=True)
        note = (note + "; " if note else "") + "group_norm then silu(inplace=True)"
    else:
        def fn():
            return F.group_norm(x, g, w, b, eps)
    run = _no_grad(fn)
    run.output = lambda: torch_to_numpy(case, run())
    run()
    return run, note


def _no_grad(fn):
    torch = _torch()

    def run():
        with torch.no_grad():
            return fn()
    return run


def torch_backward(case, activation=None):
    """Time only torch.autograd.grad(y, [x, w, b], gy) on a graph built once."""
    torch = _torch()
    F = torch.nn.functional
    x = torch_logical(case, case.x).detach().requires_grad_(True)
    w = to_torch(case.weight).detach().clone().requires_grad_(True)
    b = to_torch(case.bias).detach().clone().requires_grad_(True)
    gy = torch_logical(case, case.grad_y)
    with torch.enable_grad():
        y = F.group_norm(x, case.groups, w, b, case.eps)
        if activation == "silu":
            y = F.silu(y)
    inputs = [x, w, b]

    def fn():
        return torch.autograd.grad(y, inputs, gy, retain_graph=True)
    gx = fn()[0]
    fn.output = lambda: torch_to_numpy(case, fn()[0])
    note = _torch_note(case)
    if case.channels_last and not gx.is_contiguous(memory_format=_torch_memory_format(case)):
        note = (note + "; " if note else "") + "grad_x not channels-last"
    if activation == "silu":
        note = (note + "; " if note else "") + "autograd through group_norm then silu"
    return fn, note


def torch_to_numpy(case, t):
    """A logically NCHW torch tensor -> numpy array in the case's memory order and dtype."""
    torch = _torch()
    t = t.detach()
    if case.channels_last:
        t = t.permute(*_perm_to_cl(t.dim()))
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BF16)
    return t.numpy()


def torch_copy(case):
    """Tensor.copy_ of x into a preallocated tensor (torch threads = case.threads, set by the caller)."""
    src = to_torch(case.x).reshape(-1)
    dst = torch_empty_like(src)

    def fn():
        dst.copy_(src)
    fn()
    return fn, "torch Tensor.copy_"


def torch_empty_like(t):
    return _torch().empty_like(t)


# -------------------------------------------------------------------------------------- openvino

_OV_CORE = None


def _ov_type(ov, dtype):
    table = {np.dtype(np.float32): ov.Type.f32, np.dtype(np.float64): ov.Type.f64,
             np.dtype(np.float16): ov.Type.f16}
    if BF16 is not None:
        table[BF16] = ov.Type.bf16
    if dtype not in table:
        raise TypeError(f"no OpenVINO element type for {dtype}")
    return table[dtype]


def _ov_tensor(ov, a):
    if BF16 is not None and a.dtype == BF16:
        return ov.Tensor(a.view(np.uint16), list(a.shape), ov.Type.bf16)
    return ov.Tensor(a, shared_memory=True)


def _ov_ops():
    try:
        import openvino.opset12 as ops
    except ImportError:  # older layout
        import openvino.runtime.opset12 as ops
    return ops


def _ov_model(case, via_f32):
    """Parameter in x's layout and dtype -> [Transpose] -> [Convert f32] -> GroupNormalization ->
    [Convert back] -> [Transpose]."""
    import openvino as ov
    ops = _ov_ops()
    et = _ov_type(ov, case.dtype)
    nd = len(case.dims)
    p = ops.parameter(list(case.x.shape), et, name="x")
    node = p
    if case.channels_last:
        node = ops.transpose(node, ops.constant(np.array(_perm_to_cf(nd), np.int64)))
    if via_f32:
        node = ops.convert(node, ov.Type.f32)
        w = ops.constant(case.weight.astype(np.float32))
        b = ops.constant(case.bias.astype(np.float32))
    elif BF16 is not None and case.dtype == BF16:
        w = ops.convert(ops.constant(case.weight.astype(np.float32)), ov.Type.bf16)
        b = ops.convert(ops.constant(case.bias.astype(np.float32)), ov.Type.bf16)
    else:
        w, b = ops.constant(case.weight), ops.constant(case.bias)
    node = ops.group_normalization(node, w, b, case.groups, case.eps)
    if via_f32:
        node = ops.convert(node, et)
    if case.channels_last:
        node = ops.transpose(node, ops.constant(np.array(_perm_to_cl(nd), np.int64)))
    return ov.Model([node.output(0)], [p], "groupnorm")


def openvino_forward(case, activation=None):
    """opset12 GroupNormalization compiled for CPU (INFERENCE_NUM_THREADS = threads, f32 precision
    hint); the input tensor is set once (shared memory) and infer() is timed. Channels-last runs
    NHWC -> Transpose -> GroupNormalization -> Transpose. A dtype the CPU plugin cannot run
    natively (bfloat16 without hardware support) goes through Convert to f32 and back."""
    global _OV_CORE
    if activation is not None:
        raise NotImplementedError("forward group_norm only")
    import openvino as ov
    if _OV_CORE is None:
        _OV_CORE = ov.Core()
    config = {"INFERENCE_NUM_THREADS": int(case.threads), "INFERENCE_PRECISION_HINT": "f32"}
    errors = []
    for via_f32 in ((False, True) if case.dtype != np.float32 else (False,)):
        try:
            compiled = _OV_CORE.compile_model(_ov_model(case, via_f32), "CPU", config)
            req = compiled.create_infer_request()
            req.set_input_tensor(_ov_tensor(ov, case.x))

            def fn():
                req.infer(share_outputs=True)
            fn()
            fn.output = lambda req=req: _ov_output(req, case)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{'via f32' if via_f32 else 'native'}: {type(e).__name__}: {_short(e)}")
            continue
        note = "f32 precision hint"
        if case.channels_last:
            note = "NHWC input via Transpose -> GroupNormalization -> Transpose (no native channels-last GN); " + note
        if case.dtype != np.float32:
            note += (f"; {_dt_name(case.dtype)} in/out, Convert to f32 around GroupNormalization "
                     f"(native {_dt_name(case.dtype)} failed)" if via_f32 else f"; {_dt_name(case.dtype)} in/out")
        return fn, note
    raise RuntimeError("; ".join(errors))


def _ov_output(req, case):
    a = np.array(req.get_output_tensor().data, copy=True)
    if BF16 is not None and case.dtype == BF16:
        a = a.view(np.uint16).view(BF16)
    return a.reshape(case.x.shape)


def _dt_name(dt):
    return "bfloat16" if BF16 is not None and dt == BF16 else np.dtype(dt).name


# ----------------------------------------------------------------------------------- onnxruntime

def _onnx_elem(dtype):
    from onnx import TensorProto
    table = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
             np.dtype(np.float16): TensorProto.FLOAT16}
    if BF16 is not None:
        table[BF16] = TensorProto.BFLOAT16
    if dtype not in table:
        raise TypeError(f"no ONNX element type for {dtype}")
    return table[dtype]


def _onnx_initializer(a, name, elem):
    import onnx
    from onnx import TensorProto
    if elem == TensorProto.BFLOAT16:
        return onnx.helper.make_tensor(name, elem, a.shape, a.view(np.uint16).tobytes(), raw=True)
    return onnx.numpy_helper.from_array(a, name)


def build_onnx_model(case, opset, via_f32=False):
    import onnx  # noqa: F401
    from onnx import helper, TensorProto
    elem = _onnx_elem(case.dtype)
    pelem = TensorProto.FLOAT if via_f32 else elem
    nd = len(case.dims)
    nodes = []
    data = "x"
    if case.channels_last:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_cf"], perm=_perm_to_cf(nd)))
        data = "x_cf"
    gn_out = "y_cf" if case.channels_last else "y"
    if via_f32:
        nodes.append(helper.make_node("Cast", [data], ["x_f32"], to=TensorProto.FLOAT))
        data = "x_f32"
        final_out, gn_out = gn_out, "gn_f32"
    if opset >= 21:
        scale, bias = case.weight, case.bias
    else:  # opset 18: scale/bias per group (different affine, same amount of work)
        scale = case.weight[:case.groups].copy()
        bias = case.bias[:case.groups].copy()
    nodes.append(helper.make_node("GroupNormalization", [data, "scale", "bias"], [gn_out],
                                  num_groups=case.groups, epsilon=case.eps))
    if via_f32:
        nodes.append(helper.make_node("Cast", ["gn_f32"], [final_out], to=elem))
        scale, bias = scale.astype(np.float32), bias.astype(np.float32)
    if case.channels_last:
        nodes.append(helper.make_node("Transpose", ["y_cf"], ["y"], perm=_perm_to_cl(nd)))
    graph = helper.make_graph(
        nodes, "groupnorm",
        [helper.make_tensor_value_info("x", elem, list(case.x.shape))],
        [helper.make_tensor_value_info("y", elem, list(case.x.shape))],
        [_onnx_initializer(scale, "scale", pelem), _onnx_initializer(bias, "bias", pelem)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    return model


def _ort_value(ort, a):
    if BF16 is not None and a.dtype == BF16:
        from onnx import TensorProto
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(a.view(np.uint16), TensorProto.BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(a)


def onnxruntime_forward(case, activation=None):
    """Standard GroupNormalization (opset 21, else 18) in an InferenceSession, run with IO binding
    into a preallocated output."""
    if activation is not None:
        raise NotImplementedError("forward group_norm only")
    import onnxruntime as ort
    errors = []
    tries = [(21, False), (18, False)]
    if case.dtype != np.float32:
        tries += [(21, True)]
    for opset, via_f32 in tries:
        try:
            model = build_onnx_model(case, opset, via_f32)
            so = ort.SessionOptions()
            so.intra_op_num_threads = int(case.threads)
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # idle worker threads would otherwise spin and steal the CPU from the
            # measurements interleaved with this one
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            y = np.empty_like(case.x)
            xv, yv = _ort_value(ort, case.x), _ort_value(ort, y)
            binding = sess.io_binding()
            binding.bind_ortvalue_input("x", xv)
            binding.bind_ortvalue_output("y", yv)

            def fn():
                sess.run_with_iobinding(binding)
            fn()
            fn.output = lambda y=y: y
            if opset < 21:
                fn.output = None  # different affine (per group): nothing to compare with
            note = f"GroupNormalization opset {opset}; IO binding; no spinning"
            if opset < 21:
                note += "; opset-18 per-group scale/bias"
            if via_f32:
                note += f"; Cast to float around GroupNormalization (native {_dt_name(case.dtype)} failed)"
            if case.channels_last:
                note = "NHWC input via Transpose -> GroupNormalization -> Transpose; " + note
            return fn, note
        except Exception as e:  # noqa: BLE001 - try the older opset, then give up with both reasons
            errors.append(f"opset {opset}{' via float' if via_f32 else ''}: {type(e).__name__}: {_short(e)}")
    raise RuntimeError("; ".join(errors))


# ------------------------------------------------------------------------------------------ ncnn
# ncnn has no batch dimension and no channels-last layout: a net runs one sample
# (C, *spatial) at a time, in its own packed layout (channels interleaved by 4,
# 8 or 16 lanes) inside the net. Two candidates:
#   ncnn         the GroupNorm layer in a generated net (param/bin files in a
#                temporary folder), NCHW float32 in and out, one extract per sample
#                (channels-first rows only);
#   ncnn_packed  the layer alone, forward_inplace on each sample already packed
#                in its layout (what it does inside an engine). Reported on both
#                layouts' rows: the packed layout is neither.

def _ncnn_check(case):
    if case.dtype != np.float32:
        raise NotImplementedError("float32 only here (ncnn's half storage is an engine option)")
    if len(case.dims) > 5:
        raise NotImplementedError("ncnn Mats have at most 3 spatial dims")


def _ncnn_sample_cf(case, n):
    """Sample n of x as a C-contiguous (C, *spatial) float32 array."""
    x = case.x[n]
    if case.channels_last:
        x = np.ascontiguousarray(np.moveaxis(x, -1, 0))
    return x


def ncnn_forward(case, activation=None):
    if activation is not None:
        raise NotImplementedError("forward group_norm only")
    if case.channels_last:
        raise NotImplementedError("no channels-last layout in ncnn (see ncnn_packed)")
    _ncnn_check(case)
    import os
    import tempfile
    import ncnn
    c, g = case.channels, case.groups
    tmp = tempfile.mkdtemp(prefix="gn_bench_ncnn_")
    param, binf = os.path.join(tmp, "gn.param"), os.path.join(tmp, "gn.bin")
    with open(param, "w") as f:
        f.write(f"7767517\n2 2\nInput in 0 1 in\nGroupNorm gn 1 1 in out 0={g} 1={c} 2={case.eps:.9g} 3=1\n")
    with open(binf, "wb") as f:  # raw float32 gamma then beta
        f.write(case.weight.astype(np.float32).tobytes() + case.bias.astype(np.float32).tobytes())
    net = ncnn.Net()
    net.opt.num_threads = int(case.threads)
    net.opt.lightmode = False  # with lightmode the Python binding crashes on an in-place layer's input
    if net.load_param(param) != 0 or net.load_model(binf) != 0:
        raise RuntimeError("ncnn could not load the generated GroupNorm net")
    mats = [ncnn.Mat(case.x[n]) for n in range(case.x.shape[0])]
    outs = [None] * len(mats)

    def fn():
        for n, m in enumerate(mats):
            ex = net.create_extractor()
            ex.input("in", m)
            r, outs[n] = ex.extract("out")
            if r != 0:
                raise RuntimeError(f"ncnn extract failed ({r})")
    fn()
    fn.output = lambda: np.stack([np.array(o) for o in outs]).reshape(case.x.shape)
    return fn, "GroupNorm layer in a generated ncnn net, one extract per sample (no batch in ncnn)"


def ncnn_packed_forward(case, activation=None):
    if activation is not None:
        raise NotImplementedError("forward group_norm only")
    _ncnn_check(case)
    import ncnn
    c, g, t = case.channels, case.groups, int(case.threads)
    layer = ncnn.create_layer("GroupNorm")
    pd = ncnn.ParamDict()
    pd.set(0, g)
    pd.set(1, c)
    pd.set(2, float(case.eps))
    pd.set(3, 0)  # no affine: the Python binding cannot hand the layer its weights outside a net
    layer.load_param(pd)
    opt = ncnn.Option()
    opt.num_threads = t
    opt.use_packing_layout = True
    if layer.create_pipeline(opt) != 0:
        raise RuntimeError("ncnn GroupNorm create_pipeline failed")
    pack = 16 if c % 16 == 0 else (8 if c % 8 == 0 else (4 if c % 4 == 0 else 1))
    packed = []
    for n in range(case.x.shape[0]):
        src = _ncnn_sample_cf(case, n)
        p = ncnn.Mat()
        ncnn.convert_packing(ncnn.Mat(src), p, pack, opt)
        packed.append(p)
    # the layer is right before timing it: one call on fresh packed data, unpacked,
    # against a float64 reference of the same (affine-free) normalization
    p0 = packed[0].clone()
    if layer.forward_inplace(p0, opt) != 0:
        raise RuntimeError("ncnn GroupNorm forward_inplace failed")
    u = ncnn.Mat()
    ncnn.convert_packing(p0, u, 1, opt)
    got = np.array(u).astype(np.float64)
    xg = _ncnn_sample_cf(case, 0).astype(np.float64).reshape(g, -1)
    want = ((xg - xg.mean(1, keepdims=True)) / np.sqrt(xg.var(1, keepdims=True) + case.eps)).reshape(got.shape)
    err = float(np.max(np.abs(got - want)))
    if not err < 2e-3:
        raise RuntimeError(f"ncnn packed GroupNorm disagrees with the reference (max err {err:.3g})")

    def fn():
        for p in packed:
            layer.forward_inplace(p, opt)
    fn()
    return fn, (f"layer forward_inplace on data packed by {packed[0].elempack} (ncnn's layout), affine off "
                f"(same work per element), one call per sample; checked before timing (max err {err:.1e})")


def _short(e, n=160):
    s = " ".join(str(e).split())
    return s if len(s) <= n else s[:n - 3] + "..."


# ---------------------------------------------------------------------------------------- copies

def parallel_copy(case, core, threads=None):
    """groupnorm._core.parallel_copy of x into a preallocated buffer with case.threads threads
    (or `threads`)."""
    src = case.x
    dst = np.empty_like(src)
    t = int(threads or case.threads)
    pc = core.parallel_copy
    if BF16 is not None and src.dtype == BF16:  # byte copy: view as a plain dtype of the same size
        src, dst = src.view(np.uint16), dst.view(np.uint16)

    def fn():
        pc(dst, src, t)
    fn()
    return fn, f"groupnorm._core.parallel_copy, {t} thread{'s' if t > 1 else ''}"


def numpy_copy(case):
    """Single-threaded numpy copyto (used only when nothing better is available)."""
    src = case.x
    dst = np.empty_like(src)

    def fn():
        np.copyto(dst, src)
    fn()
    return fn, "numpy.copyto (1 thread)"


PEERS = {
    # name: {pass: builder}
    "torch": {"fwd": torch_forward, "bwd": torch_backward,
              "silu": lambda c: torch_forward(c, "silu"),
              "silu_bwd": lambda c: torch_backward(c, "silu")},
    "openvino": {"fwd": openvino_forward},
    "onnxruntime": {"fwd": onnxruntime_forward},
    "ncnn": {"fwd": ncnn_forward},
    "ncnn_packed": {"fwd": ncnn_packed_forward},
}
PEER_NAMES = list(PEERS)
