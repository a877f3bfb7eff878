"""Shared helpers for the groupnorm test suite.

The reference implementation here is written independently of the library: plain
float64 NumPy, two-pass mean and (biased) variance, explicit backward formulas.
Tests compare the library against it (or against torch / ONNX), never against
groupnorm itself, except the determinism / bitwise-equivalence tests.
"""
import os
import zlib

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import pytest
import ml_dtypes

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
HALF_DTYPES = [F16, BF16]
ALL_DTYPES = [F64, F32, F16, BF16]


def dtype_id(d):
    return {F64: "f64", F32: "f32", F16: "f16", BF16: "bf16"}.get(np.dtype(d), str(d))


# --------------------------------------------------------------------------- reference


def _to_channels_first(a, channels_last):
    return np.moveaxis(a, -1, 1) if channels_last else a


def _from_channels_first(a, channels_last):
    return np.moveaxis(a, 1, -1) if channels_last else a


def _grouped(a, G):
    """(N, C, *spatial) -> (N, G, C/G * prod(spatial)) float64 copy."""
    n, c = a.shape[:2]
    return np.ascontiguousarray(a, dtype=np.float64).reshape(n, G, -1)


def _bcast_c(p, ndim):
    """(C,) -> shape (1, C, 1, ..., 1) for a channels-first array of rank ndim."""
    return np.asarray(p, dtype=np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free and accurate in float64


def ref_stats(x, G, eps=1e-5, channels_last=False):
    """float64 mean and rstd, shape (N, G); two-pass variance."""
    xc = _to_channels_first(np.asarray(x).astype(np.float64), channels_last)
    xg = _grouped(xc, G)
    mean = xg.mean(axis=2)
    var = ((xg - mean[:, :, None]) ** 2).mean(axis=2)
    rstd = 1.0 / np.sqrt(var + eps)
    return mean, rstd


def ref_forward(x, G, weight=None, bias=None, eps=1e-5, channels_last=False, activation=None,
                return_parts=False):
    """float64 reference: returns (y, mean, rstd) (all float64); y in x's layout.

    With return_parts, also returns a dict with x_hat and z (pre-activation) in x's layout.
    """
    x64 = np.asarray(x).astype(np.float64)
    xc = _to_channels_first(x64, channels_last)
    n, c = xc.shape[:2]
    mean, rstd = ref_stats(x64, G, eps, channels_last)
    xg = _grouped(xc, G)
    xhat = ((xg - mean[:, :, None]) * rstd[:, :, None]).reshape(xc.shape)
    z = xhat
    if weight is not None:
        z = z * _bcast_c(weight, xc.ndim)
    if bias is not None:
        z = z + _bcast_c(bias, xc.ndim)
    if activation == "silu":
        y = z * _sigmoid(z)
    elif activation is None:
        y = z
    else:
        raise ValueError(activation)
    y = _from_channels_first(y, channels_last)
    if return_parts:
        return y, mean, rstd, {"xhat": _from_channels_first(xhat, channels_last),
                               "z": _from_channels_first(z, channels_last)}
    return y, mean, rstd


def ref_backward(grad_y, x, G, weight=None, bias=None, eps=1e-5, channels_last=False, activation=None):
    """float64 reference gradients (grad_x, grad_weight, grad_bias); stats recomputed from x."""
    x64 = np.asarray(x).astype(np.float64)
    dy = _to_channels_first(np.asarray(grad_y).astype(np.float64), channels_last)
    xc = _to_channels_first(x64, channels_last)
    n, c = xc.shape[:2]
    nd = xc.ndim
    mean, rstd = ref_stats(x64, G, eps, channels_last)
    xg = _grouped(xc, G)
    xhat = ((xg - mean[:, :, None]) * rstd[:, :, None]).reshape(xc.shape)
    w = _bcast_c(weight, nd) if weight is not None else np.ones((1, c) + (1,) * (nd - 2))
    b = _bcast_c(bias, nd) if bias is not None else np.zeros((1, c) + (1,) * (nd - 2))
    if activation == "silu":
        z = xhat * w + b
        s = _sigmoid(z)
        dz = dy * (s * (1.0 + z * (1.0 - s)))
    else:
        dz = dy
    red = (0,) + tuple(range(2, nd))
    gw = (dz * xhat).sum(axis=red) if weight is not None else None
    gb = dz.sum(axis=red) if bias is not None else None
    dxhat = dz * w
    dxg = dxhat.reshape(n, G, -1)
    xhg = xhat.reshape(n, G, -1)
    m1 = dxg.mean(axis=2, keepdims=True)
    m2 = (dxg * xhg).mean(axis=2, keepdims=True)
    dx = (rstd[:, :, None] * (dxg - m1 - xhg * m2)).reshape(xc.shape)
    return _from_channels_first(dx, channels_last), gw, gb


# --------------------------------------------------------------------------- comparisons


def ulp(v, dtype):
    """Size of one unit in the last place of |v| in `dtype` (works for float16 / bfloat16)."""
    fi = ml_dtypes.finfo(dtype) if np.dtype(dtype) == BF16 else np.finfo(dtype)
    nmant = int(fi.nmant)
    tiny = float(fi.tiny)  # smallest normal
    a = np.maximum(np.abs(np.asarray(v, dtype=np.float64)), tiny)
    e = np.floor(np.log2(a))
    return np.exp2(e - nmant)


def assert_close(actual, expected, rtol, atol, what="value"):
    """|actual - expected| <= atol + rtol * |expected| elementwise, float64 math, NaN-aware."""
    a = np.asarray(actual).astype(np.float64)
    e = np.asarray(expected).astype(np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    assert np.array_equal(np.isnan(a), np.isnan(e)), (
        f"{what}: NaN pattern differs ({np.isnan(a).sum()} NaNs vs expected {np.isnan(e).sum()})")
    ok = ~np.isnan(e)
    diff = np.abs(a - e)
    tol = atol + rtol * np.abs(e)
    bad = ok & ~(diff <= tol)
    if bad.any():
        idx = np.unravel_index(np.argmax(np.where(ok, diff - tol, -np.inf)), a.shape)
        raise AssertionError(
            f"{what}: {bad.sum()} of {a.size} elements out of tolerance (rtol={rtol}, atol={atol}); "
            f"max abs diff {np.nanmax(np.where(ok, diff, np.nan)):.3e}; worst at {idx}: "
            f"got {a[idx]!r}, expected {e[idx]!r}")


def assert_within_ulps(actual, expected, dtype, ulps=4, atol=0.0, what="value"):
    """|actual - expected| <= ulps * ulp(|expected|, dtype) + atol."""
    a = np.asarray(actual).astype(np.float64)
    e = np.asarray(expected).astype(np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    assert np.isfinite(a).all(), f"{what}: {(~np.isfinite(a)).sum()} non-finite elements"
    tol = ulps * ulp(e, dtype) + atol
    diff = np.abs(a - e)
    bad = ~(diff <= tol)
    if bad.any():
        idx = np.unravel_index(np.argmax(diff - tol), a.shape)
        raise AssertionError(
            f"{what} ({dtype_id(dtype)}): {bad.sum()} of {a.size} elements beyond {ulps} ulp + {atol:.2e}; "
            f"worst at {idx}: got {a[idx]!r}, expected {e[idx]!r}, diff {diff[idx]:.3e} "
            f"= {diff[idx] / ulp(e[idx], dtype):.2f} ulp")


def assert_bitwise_equal(a, b, what="value"):
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} != {b.dtype}"
    if a.tobytes() != b.tobytes():
        a64 = a.astype(np.float64)
        b64 = b.astype(np.float64)
        neq = (np.ascontiguousarray(a).view(np.uint8).reshape(a.size, -1)
               != np.ascontiguousarray(b).view(np.uint8).reshape(b.size, -1)).any(axis=1) if a.size else []
        n = int(np.sum(neq))
        first = int(np.argmax(neq))
        raise AssertionError(
            f"{what}: not bitwise equal, {n} of {a.size} elements differ; first at flat index {first}: "
            f"{a64.reshape(-1)[first]!r} vs {b64.reshape(-1)[first]!r}; max abs diff "
            f"{np.nanmax(np.abs(a64 - b64)) if a.size else 0:.3e}")


# --------------------------------------------------------------------------- data


class Data:
    """Fresh random data, never all-zeros; seeded per test for reproducibility."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def x(self, shape, dtype=np.float32, loc=0.0, scale=1.0):
        a = self.rng.normal(loc, scale, size=shape)
        # a random global offset/scale on top, so mean 0 / std 1 is not baked in
        a = a * self.rng.uniform(0.5, 2.0) + self.rng.uniform(-1.0, 1.0) * scale
        a = a.astype(dtype)
        assert a.size == 0 or np.any(a != 0)
        return a

    def params(self, C, dtype=np.float32):
        w = self.rng.uniform(0.5, 1.5, size=C) * self.rng.choice([-1.0, 1.0], size=C)
        b = self.rng.normal(0.0, 0.5, size=C)
        return w.astype(dtype), b.astype(dtype)

    def normal(self, shape, dtype=np.float32, scale=1.0):
        return (self.rng.normal(0.0, scale, size=shape)).astype(dtype)


@pytest.fixture
def rng(request):
    # distinct but reproducible data per test (and per parametrization)
    seed = zlib.crc32(request.node.nodeid.encode())
    return Data(seed)


def poison(shape, dtype):
    """An output buffer pre-filled with NaN, to prove that every element gets written."""
    return np.full(shape, np.nan, dtype=dtype)


def make_shape(N, C, spatial, channels_last):
    return (N,) + tuple(spatial) + (C,) if channels_last else (N, C) + tuple(spatial)


@pytest.fixture(scope="session")
def gn():
    import groupnorm
    return groupnorm


@pytest.fixture(scope="session")
def torch():
    import torch  # a test dependency (pyproject's [test] extra): its absence is an error, not a skip
    return torch


# A skip for any reason other than the host's ("no GPU ...", "host: ..." such
# as an instruction set the CPU lacks) fails the run: a missing dependency or a
# broken oracle must not silently drop tests
# (GROUPNORM_TEST_STRICT_SKIPS=0 turns this off, for a partial environment).
GPU_SKIP_PREFIX = "no GPU"
HOST_SKIP_PREFIX = "host: "
ALLOWED_SKIP_PREFIXES = (GPU_SKIP_PREFIX, HOST_SKIP_PREFIX)


def _skip_reason(report):
    lr = report.longrepr
    reason = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("GROUPNORM_TEST_STRICT_SKIPS", "1") == "0":
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = tr.stats.get("skipped", []) if tr is not None else []
    bad = [r for r in skipped if not _skip_reason(r).startswith(ALLOWED_SKIP_PREFIXES)]
    if bad:
        tr.ensure_newline()
        for r in bad:
            tr.write_line(f"FORBIDDEN SKIP {r.nodeid}: {_skip_reason(r)}", red=True)
        tr.write_line(f"{len(bad)} tests skipped for a reason other than the host's "
                      f"({' or '.join(repr(p) for p in ALLOWED_SKIP_PREFIXES)}) "
                      "(GROUPNORM_TEST_STRICT_SKIPS=0 allows them)", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def torch_tensor(a):
    """numpy (incl. ml_dtypes.bfloat16) -> torch tensor."""
    import torch
    a = np.ascontiguousarray(a)
    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def torch_to_numpy(t):
    import torch
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BF16)
    return t.numpy()


def _worker_pool_at_start():
    try:
        import groupnorm
    except ImportError:
        return None
    return groupnorm.worker_pool()


# The worker pool's state before any test module is imported. Importing
# groupnorm.torch (test_torch.py does at collection) turns the pool off for the
# process; each test runs with the state its own module chose instead: off in
# modules that use groupnorm.torch, as a torch user's process has it, the
# default everywhere else.
_POOL_AT_START = _worker_pool_at_start()


def _uses_torch_integration(module):
    import sys
    gnt = sys.modules.get("groupnorm.torch")
    return gnt is not None and module is not None and any(
        v is gnt or getattr(v, "__module__", None) == "groupnorm.torch" for v in vars(module).values())


@pytest.fixture(autouse=True)
def _restore_global_state(request):
    """Tests that change the ISA, default thread count or worker pool must not leak into others."""
    try:
        import groupnorm
    except ImportError:
        yield
        return
    isa = groupnorm.active_isa()
    nt = groupnorm.get_num_threads()
    if _POOL_AT_START is not None:
        pool = False if _uses_torch_integration(getattr(request, "module", None)) else _POOL_AT_START
        if groupnorm.worker_pool() != pool:
            groupnorm.set_worker_pool(pool)
    yield
    if groupnorm.active_isa() != isa:
        groupnorm.set_isa(isa)
    if groupnorm.get_num_threads() != nt:
        groupnorm.set_num_threads(nt)
