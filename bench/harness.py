"""The benchmark harness: the cases, the one timing loop, the data, the checks.

Every bench script times with ``measure`` (calibrated batches of calls,
candidates interleaved round by round, the median per call) or, for a batch
timed inside a scenario of its own, ``batch_ns``.
"""
from __future__ import annotations

import gc
import math
import re
import statistics
import time

import numpy as np

import peers as P

SHAPES = {
    # name: (logical dims (N, C, *spatial), groups)
    "sd_unet": ((2, 320, 64, 64), 32),
    "vae_512": ((1, 512, 128, 128), 32),
    "vae_256": ((1, 256, 256, 256), 32),
    "resnet_gn": ((8, 256, 56, 56), 32),
    "vol3d": ((1, 32, 32, 128, 128), 8),
    "sd_640": ((2, 640, 32, 32), 32),
    "sd_1280": ((2, 1280, 16, 16), 32),
    "tiny": ((1, 64, 8, 8), 8),
}
LAYOUTS = ("cf", "cl")
DTYPES = ("float32", "float16", "bfloat16", "float64")
PASSES = ("fwd", "bwd", "silu", "silu_bwd", "fwd_alloc", "fwd_inplace")
DEFAULT_PASSES = ("fwd", "bwd", "silu", "fwd_alloc", "fwd_inplace")
# bytes moved per pass, in units of x.nbytes: forward reads x and writes y; backward
# reads x and grad_y and writes grad_x
BYTES_PER_X = {"fwd": 2, "silu": 2, "bwd": 3, "silu_bwd": 3, "fwd_alloc": 2, "fwd_inplace": 2}
PEER_LABEL = {"ours": "groupnorm", "torch": "PyTorch", "openvino": "OpenVINO", "onnxruntime": "ONNX Runtime",
              "ncnn": "ncnn", "ncnn_packed": "ncnn packed in place"}
TARGET_RATIO = 1.25

CSV_FIELDS = [
    "shape", "dims", "groups", "layout", "dtype", "pass", "threads",
    "median_us", "min_us", "gbps", "x_copy", "x_copy_bytes", "copy_us", "copy_gbps", "copy_impl",
    "vs_torch", "vs_openvino", "vs_onnxruntime", "vs_ncnn", "vs_ncnn_packed",
    "torch_us", "openvino_us", "onnxruntime_us", "ncnn_us", "ncnn_packed_us",
    "torch_x_copy", "openvino_x_copy", "onnxruntime_x_copy", "ncnn_x_copy", "ncnn_packed_x_copy",
    "spread_pct", "samples", "calls_per_sample", "isa", "check", "missing", "notes",
]


# ---------------------------------------------------------------------------------------- timing

class Failed(Exception):
    pass


def batch_ns(fn, k):
    """ns for k calls of fn back to back."""
    pc = time.perf_counter_ns
    t0 = pc()
    for _ in range(k):
        fn()
    return pc() - t0


def _calibrate(fn, warmup_s):
    """Warm up and return an estimate of one call's time in ns."""
    warm_ns = warmup_s * 1e9
    n, spent = 0, 0
    while n < 2 or (spent < warm_ns and n < 100000):
        spent += batch_ns(fn, 1 if n < 2 else max(1, n))
        n += 1 if n < 2 else max(1, n)
    k = 1
    while True:  # per-call estimate from a batch of >= 1 ms (or one call)
        t = batch_ns(fn, k)
        if t >= 1e6 or k >= 1 << 16:
            return max(t / k, 1.0)
        k *= 4


def measure(cands, repeat, target_s, warmup_s, gap_s=0.0, calls_per_sample=None):
    """Time the candidates {name: fn} interleaved. Returns ({name: stats}, {name: error}).

    Each candidate gets about target_s seconds in `repeat` samples of a batch of calls
    (fewer samples for a slow call); calls_per_sample fixes the batch and takes exactly
    `repeat` samples instead."""
    errors, plan = {}, {}
    for name, fn in cands.items():
        try:
            per_call = _calibrate(fn, warmup_s)
        except Exception as e:  # noqa: BLE001
            errors[name] = _reason(e)
            continue
        total = target_s * 1e9
        inner = max(1, int(round(total / (repeat * per_call))))
        samples = repeat
        if inner == 1:  # slow call: fewer samples (each also has an untimed priming call), >= min(repeat, 3)
            samples = max(min(repeat, 3), min(repeat, int(math.ceil(total / (2 * per_call)))))
        if calls_per_sample:
            inner, samples = calls_per_sample, repeat
        plan[name] = (fn, inner, samples)
    times = {name: [] for name in plan}
    names = list(plan)
    rounds = max((s for _, _, s in plan.values()), default=0)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)] if names else []
            for name in order:
                fn, inner, samples = plan[name]
                if name in errors or len(times[name]) >= samples:
                    continue
                if gap_s > 0:  # optional: let other runtimes' spinning worker threads go idle
                    time.sleep(gap_s)
                try:
                    if inner < 4:  # one untimed call first: the thread pool is awake, the caches as in a loop
                        fn()
                    times[name].append(batch_ns(fn, inner) / inner)
                except Exception as e:  # noqa: BLE001
                    errors[name] = _reason(e)
    finally:
        if gc_was:
            gc.enable()
    stats = {}
    for name, ts in times.items():
        if name in errors or not ts:
            continue
        taken = [t / 1e3 for t in ts]  # in the order taken
        ts.sort()
        med = statistics.median(ts)
        q1, q3 = ts[len(ts) // 4], ts[(3 * len(ts)) // 4]
        stats[name] = {"us": med / 1e3, "min_us": ts[0] / 1e3, "spread_pct": 100.0 * (q3 - q1) / med,
                       "samples": len(ts), "inner": plan[name][1], "times_us": taken}
    return stats, errors


def _reason(e):
    """One line: exception type and message, without OpenVINO's "Exception from src/...:N:" chains."""
    msg = re.sub(r"(Exception from )?src/[\w/.\-]+:\d+:?", " ", str(e))
    msg = re.sub(r"\[ONNXRuntimeError\] : \d+ : ", "", msg)
    s = " ".join(f"{type(e).__name__}: {msg}".split())
    return s if len(s) <= 240 else s[:237] + "..."


# ------------------------------------------------------------------------------------------- data

def np_dtype(name):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def args_dtype_name(dt):
    return "bfloat16" if dt == P.BF16 else np.dtype(dt).name


def make_data(dims, layout, dtype, rng):
    """x and grad_y in the layout's memory order; weight and bias in x's dtype."""
    shape = dims if layout == "cf" else (dims[0],) + tuple(dims[2:]) + (dims[1],)
    c = dims[1]
    x = (rng.standard_normal(shape, dtype=np.float32) * 1.5 + 0.25).astype(dtype)
    gy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    w = (1.0 + 0.1 * rng.standard_normal(c, dtype=np.float32)).astype(dtype)
    b = (0.1 * rng.standard_normal(c, dtype=np.float32)).astype(dtype)
    return x, gy, w, b


# --------------------------------------------------------------------------------------- checks

# max |out - ref| allowed, per dtype (x ~ N(0.25, 1.5^2), y ~ N(0, 1)); peers compute in float32
TOL = {"float32": 2e-3, "float64": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}


def reference(case, pass_name, refs):
    """float64 forward (y) or backward (grad_x) in the case's memory order, cached in refs."""
    if pass_name in refs:
        return refs[pass_name]
    act = "silu" if pass_name.startswith("silu") else None
    x = case.x.astype(np.float64)
    n, c, g = case.dims[0], case.channels, case.groups
    if case.channels_last:  # (N, S, C) -> (N, S, G, C/G); reduce over S and C/G
        xg = x.reshape(n, -1, g, c // g)
        axes, pshape = (1, 3), (1, 1, g, c // g)
    else:                   # (N, C, S) -> (N, G, C/G, S); reduce over C/G and S
        xg = x.reshape(n, g, c // g, -1)
        axes, pshape = (2, 3), (1, g, c // g, 1)
    mean = xg.mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(xg.var(axis=axes, keepdims=True) + case.eps)
    xhat = (xg - mean) * rstd
    w = case.weight.astype(np.float64).reshape(pshape)
    z = xhat * w + case.bias.astype(np.float64).reshape(pshape)
    if not pass_name.endswith("bwd"):
        out = z / (1.0 + np.exp(-z)) if act == "silu" else z
    else:
        dy = case.grad_y.astype(np.float64).reshape(xg.shape)
        if act == "silu":
            sig = 1.0 / (1.0 + np.exp(-z))
            dy = dy * sig * (1.0 + z * (1.0 - sig))
        dxhat = dy * w
        m = np.prod([xg.shape[a] for a in axes])
        out = rstd / m * (m * dxhat - dxhat.sum(axis=axes, keepdims=True)
                          - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True))
    refs[pass_name] = out.reshape(case.x.shape)
    return refs[pass_name]


def check_outputs(args, case, cands, refs):
    """{key: "ok" or "max err E > tol T"} for every candidate that exposes its output."""
    res = {}
    dt = args_dtype_name(case.dtype)
    for key, fn in cands.items():
        getter = getattr(fn, "output", None)
        pass_name = key.split(":", 1)[1]
        if getter is None or pass_name not in BYTES_PER_X:
            continue
        try:
            out = np.asarray(getter()).astype(np.float64)
            ref = reference(case, pass_name, refs)
            tol = TOL[dt] * (4 if pass_name.endswith("bwd") else 1)
            err = float(np.max(np.abs(out - ref))) if out.shape == ref.shape else float("inf")
            if not np.isfinite(err) or err > tol:
                res[key] = f"max err {err:.3g} > {tol:g}"
            else:
                res[key] = "ok"
        except Exception as e:  # noqa: BLE001
            res[key] = f"check failed: {_reason(e)}"
    return res


# --------------------------------------------------------------------------------------- the run
