"""Run under mpiexec (tests/test_distributed.py does): distributed forward and
backward over the ranks' slabs of one tensor.

Checks that every rank holds bitwise the same statistics and parameter
gradients, and (on rank 0) that the assembled y and grad_x agree with the
single-process group_norm within rounding. Exits 1 on any failure.
"""
import sys

import numpy as np
from mpi4py import MPI

import groupnorm as gn

comm = MPI.COMM_WORLD
rank, size = comm.rank, comm.size
failures = []

CASES = [
    # dtype, channels_last, activation, spatial
    (np.float32, False, None, (37, 11)),
    (np.float32, True, "silu", (29, 8)),
    (np.float64, False, "silu", (8, 9, 10)),
    (np.float16, True, None, (33, 5)),
    (gn.bfloat16, False, None, (19, 7)),
]

for idx, (dtype, cl, act, sp) in enumerate(CASES):
    rng = np.random.default_rng(20240 + idx)  # the same global tensor on every rank
    N, C, G = 2, 16, 4
    shape = (N,) + sp + (C,) if cl else (N, C) + sp
    x = (rng.normal(3.0, 2.0, size=shape)).astype(dtype)
    dy = rng.normal(0.0, 1.0, size=shape).astype(dtype)
    w = rng.uniform(0.5, 1.5, C).astype(np.float32)
    b = rng.normal(0.0, 0.5, C).astype(np.float32)
    ax = 1 if cl else 2
    # uneven slabs along the first spatial axis, one per rank (some may be empty)
    cuts = np.sort(rng.integers(0, shape[ax] + 1, size=size - 1))
    edges = [0] + [int(c) for c in cuts] + [shape[ax]]
    sl = [slice(None)] * len(shape)
    sl[ax] = slice(edges[rank], edges[rank + 1])
    sl = tuple(sl)
    y, mean, rstd = gn.distributed.group_norm(x[sl], G, w, b, channels_last=cl, activation=act, return_stats=True)
    gx, gw, gb = gn.distributed.group_norm_backward(dy[sl], x[sl], mean, rstd, G, w, b, channels_last=cl,
                                                    activation=act)
    mine = (mean.tobytes(), rstd.tobytes(), gw.tobytes(), gb.tobytes())
    every = comm.allgather(mine)
    if any(e != every[0] for e in every):
        failures.append(f"case {idx}: ranks differ in mean/rstd/grad_weight/grad_bias")
    ys = comm.gather(y, root=0)
    gxs = comm.gather(gx, root=0)
    if rank == 0:
        y_all = np.concatenate(ys, axis=ax)
        gx_all = np.concatenate(gxs, axis=ax)
        y1, m1, r1 = gn.group_norm(x, G, w, b, channels_last=cl, activation=act, return_stats=True)
        g1, w1, b1 = gn.group_norm_backward(dy, x, m1, r1, G, w, b, channels_last=cl, activation=act)
        f64 = lambda a: np.asarray(a).astype(np.float64)  # noqa: E731
        half = np.dtype(dtype).itemsize == 2
        tol = 1e-10 if dtype == np.float64 else (1e-2 if half else 3e-5)
        for name, got, want in (("y", y_all, y1), ("mean", mean, m1), ("rstd", rstd, r1), ("grad_x", gx_all, g1),
                                ("grad_weight", gw, w1), ("grad_bias", gb, b1)):
            err = np.abs(f64(got) - f64(want)).max() / max(1.0, np.abs(f64(want)).max())
            if not err <= tol:
                failures.append(f"case {idx} ({np.dtype(dtype).name}, {'cl' if cl else 'cf'}, {act}): "
                                f"{name} differs from single-process by {err:.3e} (tolerance {tol})")

# ranks that disagree (the last rank differs): every rank raises the same ValueError naming the field,
# through mpi4py's default collective, and the ranks stay in step
MISMATCHES = [
    # (what differs, kwargs of the others, of the last rank, the message)
    ("C", dict(c=8), dict(c=16), "num_channels differs between ranks: "),
    ("G", dict(g=4), dict(g=2), "num_groups differs between ranks: "),
    ("dtype", dict(dtype=np.float32), dict(dtype=np.float64), "dtype differs between ranks: "),
    ("eps", dict(eps=1e-5), dict(eps=1e-3), "eps differs between ranks: "),
    ("own checks", dict(g=4), dict(g=3), None),
]
if size > 1:
    last = rank == size - 1
    for what, mine, theirs, msg in MISMATCHES:
        kw = dict(c=8, g=4, dtype=np.float32, eps=1e-5)
        kw.update(theirs if last else mine)
        xm = np.random.default_rng(rank).normal(size=(2, kw["c"], 3 + rank, 4)).astype(kw["dtype"])
        try:
            gn.distributed.group_norm(xm, kw["g"], eps=kw["eps"])
            err = "no error"
        except ValueError as e:
            err = str(e)
        errs = comm.allgather(err)
        if msg is not None:
            if len(set(errs)) != 1 or msg not in err or f"rank {size - 1} has" not in err:
                failures.append(f"mismatch {what}: errors differ or do not name it: {errs}")
        elif not (last and "num_groups" in err) and not (
                not last and f"rank {size - 1} of {size} failed its own argument checks" in err):
            failures.append(f"mismatch {what}: rank {rank} raised {err!r}")

failed = comm.allreduce(len(failures), op=MPI.SUM)
for f in failures:
    print(f"rank {rank}: {f}", flush=True)
if rank == 0:
    print(f"{size} ranks: {'FAILED' if failed else 'ok'} ({len(CASES)} cases)", flush=True)
sys.exit(1 if failed else 0)
