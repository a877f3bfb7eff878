"""groupnorm.distributed: mpiexec runs over 1, 2 and 4 ranks, and the allgather= hook.

The hook is exercised in-process with one thread per "rank" and a barrier-based
allgather; results are compared with the float64 reference and with each other.
"""
import os
import re
import shutil
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from conftest import BF16, F16, F32, F64, assert_bitwise_equal, assert_close, make_shape, ref_backward, ref_forward

HERE = os.path.dirname(os.path.abspath(__file__))


class ThreadCollective:
    """allgather over `size` threads: every thread gets the list of all arrays in rank order."""

    def __init__(self, size):
        self.size = size
        self.slots = [None] * size
        self.barrier = threading.Barrier(size)

    def for_rank(self, rank):
        def allgather(a):
            self.slots[rank] = np.array(a, copy=True)
            self.barrier.wait()
            out = list(self.slots)
            self.barrier.wait()  # everyone has read before the next round writes
            return out
        return allgather


def run_ranks(size, fn):
    results, errors = [None] * size, []
    coll = ThreadCollective(size)

    def body(r):
        try:
            results[r] = fn(r, coll.for_rank(r))
        except BaseException as e:  # reported below; the barrier is broken so others fail too
            errors.append(e)
            coll.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("size", [1, 3, 5])
def test_allgather_hook(gn, rng, channels_last, dtype, size):
    N, C, G = 2, 12, 3
    shape = make_shape(N, C, (23, 6), channels_last)
    x = rng.x(shape, dtype)
    dy = rng.normal(shape, dtype)
    w, b = rng.params(C)
    ax = 1 if channels_last else 2
    edges = [0] + sorted(int(c) for c in rng.rng.integers(0, shape[ax] + 1, size - 1)) + [shape[ax]]

    def tile(r):
        idx = [slice(None)] * 4
        idx[ax] = slice(edges[r], edges[r + 1])
        return tuple(idx)

    def rank(r, allgather):
        t = tile(r)
        y, mean, rstd = gn.distributed.group_norm(x[t], G, w, b, allgather=allgather, channels_last=channels_last,
                                                  activation="silu", return_stats=True, num_threads=1)
        gx, gw, gb = gn.distributed.group_norm_backward(dy[t], x[t], mean, rstd, G, w, b, allgather=allgather,
                                                        channels_last=channels_last, activation="silu",
                                                        num_threads=1)
        return y, mean, rstd, gx, gw, gb

    res = run_ranks(size, rank)
    for r in range(1, size):  # every rank bitwise the same statistics and parameter gradients
        for i, what in ((1, "mean"), (2, "rstd"), (4, "grad_weight"), (5, "grad_bias")):
            assert_bitwise_equal(res[r][i], res[0][i], f"{what} of rank {r}")
    y = np.concatenate([r[0] for r in res], axis=ax)
    gx = np.concatenate([r[3] for r in res], axis=ax)
    ref, mref, rref = ref_forward(x, G, w, b, channels_last=channels_last, activation="silu")
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == F32 else dict(rtol=1e-11, atol=1e-11)
    assert_close(y, ref, what="y", **tol)
    assert_close(res[0][2], rref, what="rstd", rtol=tol["rtol"], atol=0)
    rx, rw, rb = ref_backward(dy, x, G, w, b, channels_last=channels_last, activation="silu")
    btol = dict(rtol=1e-4, atol=2e-5) if dtype == F32 else dict(rtol=1e-10, atol=1e-11)
    assert_close(gx, rx, what="grad_x", rtol=btol["rtol"], atol=btol["atol"] * max(1, np.abs(rx).max()))
    # grad_weight/grad_bias come back in the parameters' dtype (float32 here)
    assert_close(res[0][4], rw, what="grad_weight", rtol=1e-4, atol=2e-5 * max(1, np.abs(rw).max()))
    assert_close(res[0][5], rb, what="grad_bias", rtol=1e-4, atol=2e-5 * max(1, np.abs(rb).max()))
    # and the same as the split-phase API over the same tiles in the same order
    m = gn.merge_moments([gn.moments(x[tile(r)], G, channels_last=channels_last) for r in range(size)])
    mean, rstd = m.mean_rstd()
    assert_bitwise_equal(res[0][1], mean, "mean vs merge_moments")
    assert_bitwise_equal(res[0][2], rstd, "rstd vs merge_moments")


def test_mismatched_ranks_and_bad_arguments(gn, rng):
    x = rng.x((2, 8, 5, 5), F32)

    def rank(r, allgather):  # rank 1 holds a different batch
        return gn.distributed.group_norm(x[: 1 + r], 4, allgather=allgather)

    with pytest.raises(ValueError, match=r"batch size \(N\) differs between ranks: rank 0 has 1, rank 1 has 2"):
        run_ranks(2, rank)
    with pytest.raises(ValueError, match="comm= or allgather=, not both"):
        gn.distributed.group_norm(x, 4, comm=object(), allgather=lambda a: [a])
    with pytest.raises(TypeError, match="allgather must be callable"):
        gn.distributed.group_norm(x, 4, allgather=3)
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        gn.distributed.group_norm(x, 4, comm=object())


def test_missing_mpi4py_is_a_clear_error(gn, rng, monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(ImportError, match="needs mpi4py .*pip install mpi4py.*or pass allgather="):
        gn.distributed.group_norm(rng.x((1, 4, 3, 3), F32), 2)


def _mpiexec():
    # the mpich wheel puts mpiexec beside the interpreter, which may not be on PATH
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    exe = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    if exe is None:
        pytest.fail("mpiexec not found: install the test extra (mpi4py and mpich from PyPI)")
    return exe


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_mpiexec(ranks):
    cmd = [_mpiexec(), "-n", str(ranks), sys.executable, os.path.join(HERE, "mpi", "check_distributed.py")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}"
    assert f"{ranks} ranks: ok" in p.stdout


# --------------------------------------------------------------------------- ranks that disagree


def run_ranks_errors(size, fn):
    """Like run_ranks, but every rank's exception (or None) in rank order; no rank may hang."""
    errors = [None] * size
    coll = ThreadCollective(size)

    def body(r):
        try:
            fn(r, coll.for_rank(r))
        except Exception as e:
            errors[r] = e

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a rank hangs in the collective"
    return errors


# (what differs, keyword arguments of rank 0, of rank 1, the message every rank must raise)
DISAGREEMENTS = [
    ("N", dict(n=2), dict(n=3), r"batch size \(N\) differs between ranks: rank 0 has 2, rank 1 has 3"),
    ("C", dict(c=8), dict(c=16), r"num_channels differs between ranks: rank 0 has 8, rank 1 has 16"),
    ("G", dict(g=4), dict(g=2), r"num_groups differs between ranks: rank 0 has 4, rank 1 has 2"),
    ("C and G, same N*G", dict(c=8, g=4), dict(c=12, g=4), r"num_channels differs .*rank 0 has 8, rank 1 has 12"),
    ("dtype", dict(dtype=F32), dict(dtype=F64), r"dtype differs between ranks: rank 0 has float32, rank 1 has float64"),
    ("layout", dict(cl=False), dict(cl=True), r"layout differs between ranks: rank 0 has channels-first, rank 1 has "
                                               r"channels_last"),
    ("spatial dims", dict(sp=(5, 4)), dict(sp=(5, 2, 2)),
     r"number of spatial dims differs .*rank 0 has 2, rank 1 has 3"),
    ("eps", dict(eps=1e-5), dict(eps=1e-3), r"eps differs between ranks: rank 0 has 1e-05, rank 1 has 0.001"),
    ("affine", dict(affine=True), dict(affine=False), r"weight differs between ranks: rank 0 has given, rank 1 has "
                                                       r"None; bias differs"),
    ("activation", dict(act=None), dict(act="silu"), r"activation differs between ranks: rank 0 has None, rank 1 "
                                                      r"has 'silu'"),
    ("skip", dict(skip=False), dict(skip=True), r"skip differs between ranks: rank 0 has None, rank 1 has given"),
]


def _tile(rng, n=2, c=8, g=4, dtype=F32, cl=False, sp=(5, 4), eps=1e-5, affine=True, act=None, skip=False):
    x = rng.x(make_shape(n, c, sp, cl), dtype)
    w, b = rng.params(c) if affine else (None, None)
    kw = dict(channels_last=cl, eps=eps, activation=act, skip=rng.x(x.shape, dtype) if skip else None)
    return x, g, w, b, kw


@pytest.mark.parametrize("case", DISAGREEMENTS, ids=[d[0] for d in DISAGREEMENTS])
def test_ranks_that_disagree_all_raise_the_same_error(gn, rng, case):
    _, kw0, kw1, msg = case
    tiles = [_tile(rng, **kw0), _tile(rng, **kw1)]

    def rank(r, allgather):
        x, g, w, b, kw = tiles[r]
        gn.distributed.group_norm(x, g, w, b, allgather=allgather, **kw)

    errors = run_ranks_errors(2, rank)
    for r, e in enumerate(errors):
        assert isinstance(e, ValueError), f"rank {r} raised {e!r}"
        assert re.search(msg, str(e)), f"rank {r}: {e}"
    assert str(errors[0]) == str(errors[1])


def test_three_ranks_one_disagrees(gn, rng):
    tiles = [_tile(rng, c=8), _tile(rng, c=16), _tile(rng, c=8)]

    def rank(r, allgather):
        x, g, w, b, kw = tiles[r]
        gn.distributed.group_norm(x, g, w, b, allgather=allgather, **kw)

    errors = run_ranks_errors(3, rank)
    assert len({str(e) for e in errors}) == 1 and all(isinstance(e, ValueError) for e in errors)
    assert "num_channels differs between ranks: ranks 0, 2 have 8, rank 1 has 16" in str(errors[0])


def test_a_rank_failing_its_own_checks_stops_every_rank(gn, rng):
    x = rng.x((2, 8, 5, 4), F32)

    def rank(r, allgather):  # rank 1's num_groups does not divide C: it raises, the others must not wait
        gn.distributed.group_norm(x, 3 if r == 1 else 4, allgather=allgather)

    errors = run_ranks_errors(3, rank)
    assert isinstance(errors[1], ValueError) and "num_groups" in str(errors[1])
    for r in (0, 2):
        assert isinstance(errors[r], ValueError), errors[r]
        assert "rank 1 of 3 failed its own argument checks in group_norm" in str(errors[r])


def test_backward_disagreements(gn, rng):
    x = rng.x((2, 8, 6, 4), F32)
    dy = rng.normal(x.shape, F32)
    tiles = [(slice(0, 3), None), (slice(3, 6), "silu")]

    def stats(allgather, r):
        return gn.distributed.group_norm(x[:, :, tiles[r][0]], 4, allgather=allgather, return_stats=True)[1:]

    def rank_act(r, allgather):  # the activation differs in the backward only
        mean, rstd = stats(allgather, r)
        t = tiles[r][0]
        gn.distributed.group_norm_backward(dy[:, :, t], x[:, :, t], mean, rstd, 4, allgather=allgather,
                                           activation=tiles[r][1])

    errors = run_ranks_errors(2, rank_act)
    assert all(isinstance(e, ValueError) for e in errors) and str(errors[0]) == str(errors[1])
    assert "activation differs between ranks: rank 0 has None, rank 1 has 'silu'" in str(errors[0])

    def rank_stats(r, allgather):  # rank 1 passes its local statistics, not the global ones
        mean, rstd = stats(allgather, r)
        t = tiles[r][0]
        if r == 1:
            mean, rstd = gn.moments(x[:, :, t], 4).mean_rstd()
        gn.distributed.group_norm_backward(dy[:, :, t], x[:, :, t], mean, rstd, 4, allgather=allgather)

    errors = run_ranks_errors(2, rank_stats)
    assert all(isinstance(e, ValueError) for e in errors) and str(errors[0]) == str(errors[1])
    assert "mean/rstd (checksum) differs between ranks" in str(errors[0])


# --------------------------------------------------------------------------- malformed allgather= results


def _recorded(gn, fn):
    """What a rank sends (header, payload) when it runs fn(allgather) alone."""
    sent = []

    def rec(a):
        sent.append(np.array(a, copy=True))
        return [a]
    out = fn(rec)
    return sent, out


def _two_rank_world(x, tile_other, fn_of_tile, gn, mutate=None):
    """Rank 0 runs fn_of_tile(x, allgather) in a world where rank 1 sent what it sends for tile_other;
    mutate(call_index, parts) may change the list rank 0 gets back."""
    other, _ = _recorded(gn, lambda ag: fn_of_tile(tile_other, ag))
    calls = []

    def allgather(a):
        parts = [np.array(a, copy=True), np.array(other[len(calls)], copy=True)]
        calls.append(a)
        return parts if mutate is None else mutate(len(calls) - 1, parts)
    return fn_of_tile(x, allgather)


MALFORMED = [
    ("parts as int64", lambda i, p: [q.astype(np.int64) for q in p], r"rank 0's header as int64, sent as float64"),
    ("moments as int64", lambda i, p: [q.astype(np.int64) for q in p] if i else p,
     r"rank 0's moments as int64, sent as float64"),
    ("float32", lambda i, p: [q.astype(np.float32) for q in p] if i else p, r"rank 0's moments as float32"),
    ("big-endian", lambda i, p: [q.astype(">f8") for q in p] if i else p, r"as >f8, sent as float64"),
    ("count 1e19", lambda i, p: p if i == 0 else [p[0], _set(p[1], (0, 0, 0), 1e19)],
     r"rank 1's moments with count 1e\+19 for \(sample, group\) \(0, 0\), but its tile holds 30 elements per group"),
    ("count -60", lambda i, p: p if i == 0 else [p[0], _set(p[1], (0, 1, 2), -60.0)],
     r"rank 1's moments with count -60"),
    ("count 2.5", lambda i, p: p if i == 0 else [_set(p[0], (0, 0, 1), 2.5), p[1]], r"rank 0's moments with count 2.5"),
    ("NaN parts", lambda i, p: p if i == 0 else [np.full_like(q, np.nan) for q in p],
     r"rank 0's moments with count nan"),
    ("NaN mean", lambda i, p: p if i == 0 else [p[0], _set(p[1], (1, 1, 0), np.nan)],
     r"rank 1's moments with mean nan at \(1, 0\), but that rank's were all finite"),
    ("inf M2", lambda i, p: p if i == 0 else [p[0], _set(p[1], (2, 0, 3), np.inf)], r"rank 1's moments with M2 inf"),
    ("negative M2", lambda i, p: p if i == 0 else [p[0], _set(p[1], (2, 0, 3), -1.0)],
     r"rank 1's moments with a negative M2 -1.0 at \(0, 3\)"),
    ("changed mean", lambda i, p: p if i == 0 else [p[0], _set(p[1], (1, 0, 0), 0.25)], r"rank 1's moments with "
                                                                                     r"values other than .*checksum"),
    ("shape", lambda i, p: p if i == 0 else [p[0], p[1][:, :1]],
     r"rank 1's moments with shape \(3, 1, 4\), this rank's have shape \(3, 2, 4\)"),
    ("flattened", lambda i, p: p if i == 0 else [q.ravel() for q in p], r"shape \(24,\), this rank's have shape "
                                                                        r"\(3, 2, 4\)"),
    ("a rank missing", lambda i, p: p if i == 0 else p[:1], r"returned 1 arrays of moments but 2 headers"),
    ("ranks swapped", lambda i, p: p if i == 0 else p[::-1], r"rank 0's moments with values other than"),
    ("header changed", lambda i, p: [p[0], _set(p[1], (0, 0, 0), 1e19)] if i == 0 else p,
     r"for rank 1 a header that groupnorm did not write"),
    ("own header missing", lambda i, p: [p[1], p[1]] if i == 0 else p, r"none is this rank's own"),
    ("not a list", lambda i, p: p[0], r"must return a list of arrays"),
    ("None", lambda i, p: None, r"must return a list of arrays"),
    ("empty", lambda i, p: [], r"returned no arrays"),
    ("objects", lambda i, p: [object(), object()], r"header as object"),
]


def _set(a, idx, v):
    a = np.array(a, copy=True)
    a[idx] = v
    return a


@pytest.mark.parametrize("case", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_allgather_result_is_a_clear_error(gn, rng, case):
    _, mutate, msg = case
    x = rng.x((2, 8, 6, 5), F32)  # rank 0 holds rows :3, rank 1 rows 3:; 2 x 3 x 5 = 30 per group
    x0, x1 = x[:, :, :3], x[:, :, 3:]
    out = np.full(x0.shape, np.nan, F32)
    w, b = rng.params(8)

    def fn(t, ag):
        return gn.distributed.group_norm(t, 4, w, b, allgather=ag, out=out if t is x0 else None)

    with pytest.raises((ValueError, TypeError), match=msg):
        _two_rank_world(x0, x1, fn, gn, mutate)
    assert np.isnan(out).all(), "an output was written before the error"
    # and untouched parts give the whole tensor's normalization
    y = _two_rank_world(x0, x1, fn, gn)
    assert_close(y, ref_forward(x, 4, w, b)[0][:, :, :3], what="y", rtol=2e-5, atol=2e-5)


def test_malformed_backward_sums(gn, rng):
    x = rng.x((2, 8, 6, 5), F32)
    dy = rng.normal(x.shape, F32)
    mean, rstd = gn.moments(x, 4).mean_rstd()
    x0, x1, d0, d1 = x[:, :, :3], x[:, :, 3:], dy[:, :, :3], dy[:, :, 3:]

    def fn(t, ag):
        d = d0 if t is x0 else d1
        return gn.distributed.group_norm_backward(d, t, mean, rstd, 4, allgather=ag)

    for mutate, msg in (
            (lambda i, p: p if i == 0 else [q.astype(np.int64) for q in p], r"rank 0's backward sums as int64"),
            (lambda i, p: p if i == 0 else [p[0], _set(p[1], (0, 0, 0), np.nan)],
             r"rank 1's backward sums with sum_dz nan at \(0, 0\)"),
            (lambda i, p: p if i == 0 else [p[0], _set(p[1], (1, 1, 7), 1e300)], r"rank 1's backward sums with values "
                                                                                r"other than"),
            (lambda i, p: p if i == 0 else [p[0], p[1].reshape(-1)], r"shape \(32,\), this rank's have shape "
                                                                     r"\(2, 2, 8\)"),
            (lambda i, p: [p[0], _set(p[1], (1, 0, 1), 1e300)] if i == 0 else p, r"a header that groupnorm did not "
                                                                                 r"write")):
        with pytest.raises(ValueError, match=msg):
            _two_rank_world(x0, x1, fn, gn, mutate)
    gx, gw, gb = _two_rank_world(x0, x1, fn, gn)
    rx, rw, rb = ref_backward(dy, x, 4)
    assert_close(gx, rx[:, :, :3], what="grad_x", rtol=1e-4, atol=2e-5 * max(1, np.abs(rx).max()))


def test_nonfinite_data_still_propagates(gn, rng):
    """A NaN in a rank's data is not a transport error: y is NaN in that (sample, group), as in one process."""
    x = rng.x((2, 8, 6, 5), F32)
    x[1, 2, 4, 1] = np.nan  # rank 1's tile, sample 1, group 1
    res = run_ranks(2, lambda r, ag: gn.distributed.group_norm(x[:, :, 3 * r:3 * r + 3], 4, allgather=ag))
    y = np.concatenate(res, axis=2)
    want = gn.group_norm(x, 4)
    assert np.array_equal(np.isnan(y), np.isnan(want))
    assert np.isnan(y[1, 2:4]).all() and not np.isnan(y[0]).any()


# --------------------------------------------------------------------------- fuzzing allgather= results

FUZZ_EXAMPLES = int(os.environ.get("GROUPNORM_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ODD_VALUES = [np.nan, -np.nan, np.inf, -np.inf, -1.0, 0.0, -0.0, 0.5, 1.0, 2.5, 30.0, 1e19, 2.0**53 + 2, 2.0**63,
              2.0**64, 1e300, -1e300, 5e-324, 1735289202.0]
ODD_DTYPES = [np.int64, np.int32, np.uint64, np.float32, np.float16, ">f8", np.complex128, np.bool_, object,
              np.longdouble]


@st.composite
def gather_mutations(draw):
    """(which call: 0 header / 1 payload, a function parts -> what allgather returns)."""
    which = draw(st.sampled_from([0, 1]))
    kind = draw(st.sampled_from(["value", "value", "value", "dtype", "shape", "list", "container"]))
    rank = draw(st.sampled_from([0, 1]))
    if kind == "value":
        where = draw(st.integers(0, 10**6))
        value = draw(st.sampled_from(ODD_VALUES) | st.floats(allow_nan=True, allow_infinity=True))

        def f(parts):
            q = np.array(parts[rank], copy=True)
            q.reshape(-1)[where % q.size] = value
            return [q if r == rank else p for r, p in enumerate(parts)]
    elif kind == "dtype":
        dtype = draw(st.sampled_from(ODD_DTYPES))
        both = draw(st.booleans())

        def f(parts):
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return [p.astype(dtype) if both or r == rank else p for r, p in enumerate(parts)]
    elif kind == "shape":
        how = draw(st.sampled_from(["ravel", "newaxis", "drop_row", "transpose", "empty", "scalar"]))

        def f(parts):
            q = parts[rank]
            q = {"ravel": lambda: q.ravel(), "newaxis": lambda: q[None], "drop_row": lambda: q[:-1],
                 "transpose": lambda: q.T, "empty": lambda: q[:0], "scalar": lambda: q.reshape(-1)[0]}[how]()
            return [q if r == rank else p for r, p in enumerate(parts)]
    elif kind == "list":
        how = draw(st.sampled_from(["drop", "duplicate", "swap", "extra", "tuple", "generator"]))

        def f(parts):
            return {"drop": lambda: parts[:1], "duplicate": lambda: parts + [parts[rank]],
                    "swap": lambda: parts[::-1], "extra": lambda: parts + [np.zeros_like(parts[0])],
                    "tuple": lambda: tuple(parts), "generator": lambda: (p for p in parts)}[how]()
    else:  # same values in other containers: lists of floats, torch tensors (the result must be right)
        how = draw(st.sampled_from(["tolist", "torch", "stacked", "none", "dict", "strings"]))

        def f(parts):
            if how == "torch":
                import torch
                return [torch.from_numpy(p) for p in parts]
            return {"tolist": lambda: [p.tolist() for p in parts], "stacked": lambda: np.stack(parts),
                    "none": lambda: None, "dict": lambda: dict(enumerate(parts)),
                    "strings": lambda: [str(p) for p in parts]}[how]()
    return which, f


@st.composite
def distributed_calls(draw):
    dtype = draw(st.sampled_from([F32, F64, F16, BF16]))
    n = draw(st.sampled_from([1, 2]))
    g = draw(st.sampled_from([1, 2, 4]))
    c = g * draw(st.sampled_from([1, 2]))
    cl = draw(st.booleans())
    rows = draw(st.integers(1, 6))
    cut = draw(st.integers(0, rows))  # rank 0 holds rows [0, cut), rank 1 the rest (either may be empty)
    cols = draw(st.sampled_from([1, 3]))
    backward = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return dtype, n, g, c, cl, rows, cut, cols, backward, seed


@FUZZ
@given(distributed_calls(), gather_mutations())
def test_fuzz_allgather_results(call, mutation):
    """Any allgather= result gives the right answer (bitwise the untouched exchange's) or a clear error."""
    import groupnorm

    dtype, n, g, c, cl, rows, cut, cols, backward, seed = call
    which, mutate = mutation
    rng = np.random.default_rng(seed)
    shape = make_shape(n, c, (rows, cols), cl)
    x = rng.normal(2.0, 3.0, shape).astype(dtype)
    dy = rng.normal(0.0, 1.0, shape).astype(dtype)
    w = rng.uniform(0.5, 1.5, c).astype(np.float32)
    ax = 1 if cl else 2
    t0, t1 = (tuple(slice(lo, hi) if i == ax else slice(None) for i in range(4)) for lo, hi in ((0, cut), (cut, rows)))
    mean, rstd = groupnorm.moments(x, g, channels_last=cl).mean_rstd()
    out = np.full(x[t0].shape, np.nan, dtype)

    def fn(t, ag):
        o = out if t == t0 else None
        if backward:
            return groupnorm.distributed.group_norm_backward(dy[t], x[t], mean, rstd, g, w, allgather=ag,
                                                             channels_last=cl, out=o)[0]
        return groupnorm.distributed.group_norm(x[t], g, w, allgather=ag, channels_last=cl, out=o)

    want = np.array(_two_rank_world(t0, t1, fn, groupnorm), copy=True)
    out[...] = np.nan
    try:
        got = _two_rank_world(t0, t1, fn, groupnorm, lambda i, p: mutate(p) if i == which else p)
    except (ValueError, TypeError) as e:
        msg = str(e)
        event(f"{type(e).__name__}: {re.sub(r'[-0-9.e+]+|nan|inf', '#', msg)[:70]}")
        assert 20 < len(msg) < 600 and ("allgather" in msg or "rank" in msg), msg
        assert "(): incompatible" not in msg and "Invoked with" not in msg, msg  # never pybind11's text
        assert np.isnan(out.astype(np.float32)).all(), f"out was written before the error: {msg}"
        return
    event("a result")
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), "a wrong result without an error"
