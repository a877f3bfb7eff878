"""groupnorm.distributed: mpiexec runs over 1, 2 and 4 ranks, and the allgather= hook.

The hook is exercised in-process with one thread per "rank" and a barrier-based
allgather; results are compared with the float64 reference and with each other.
"""
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import F32, F64, assert_bitwise_equal, assert_close, make_shape, ref_backward, ref_forward

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
