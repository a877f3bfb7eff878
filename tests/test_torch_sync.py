"""SyncGroupNorm over torch.distributed (gloo): 1, 2 and 4 processes spawned here.

Each rank takes a slab of rows of one tensor (uneven slabs); the ranks' y and
gradients, put back together, must equal the single-process GroupNorm of the
whole tensor (float64 autograd of torch's own GroupNorm as the reference, and
groupnorm.torch.group_norm), and the statistics and parameter gradients must be
bitwise the same on every rank. This file is also the worker script:
``python test_torch_sync.py RANK WORLD PORT OUTDIR LAYOUT`` (LAYOUT "mismatch":
the two ranks call with different arguments, case after case).
"""
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

N, C, G, H, W = 2, 16, 4, 11, 6


def _data(seed, channels_last):
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=gen) * 3 + 1
    gy = torch.randn(N, C, H, W, generator=gen)
    w = torch.rand(C, generator=gen) + 0.5
    b = torch.randn(C, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, gy, w, b


_CUTS = {1: [0, H], 2: [0, 4, H], 4: [0, 2, 5, 9, H]}


def _rows(rank, world):
    """Uneven slabs of the H rows: rank r gets rows [lo, hi)."""
    return _CUTS[world][rank], _CUTS[world][rank + 1]


def worker(rank, world, port, outdir, layout):
    import torch
    import torch.distributed as dist
    import groupnorm.torch as gnt

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x, gy, w, b = _data(1234, layout == "cl")
        lo, hi = _rows(rank, world)
        m = gnt.SyncGroupNorm(G, C, activation="silu" if layout == "cl" else None)
        with torch.no_grad():
            m.weight.copy_(w)
            m.bias.copy_(b)
        xl = x[:, :, lo:hi].clone(memory_format=torch.preserve_format).requires_grad_()
        y = m(xl)
        assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "cl" and not y.is_contiguous())
        y.backward(gy[:, :, lo:hi])
        # bitwise the same parameter gradients on every rank
        for t in (m.weight.grad, m.bias.grad):
            parts = [torch.empty_like(t) for _ in range(world)]
            dist.all_gather(parts, t.contiguous())
            assert all(torch.equal(p, parts[0]) for p in parts), "parameter gradients differ across ranks"
        np.savez(os.path.join(outdir, f"rank{rank}.npz"), y=y.detach().numpy(), gx=xl.grad.numpy(),
                 gw=m.weight.grad.numpy(), gb=m.bias.grad.numpy(), lo=lo, hi=hi)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("layout", ["cf", "cl"])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_sync_group_norm_equals_whole_tensor(tmp_path, world, layout):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    import groupnorm.torch as gnt

    _run_workers(tmp_path, world, layout)
    res = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(world)]
    y = np.concatenate([r["y"] for r in res], axis=2)
    gx = np.concatenate([r["gx"] for r in res], axis=2)
    assert [int(r["lo"]) for r in res] == sorted(int(r["lo"]) for r in res) and int(res[-1]["hi"]) == H
    for r in res[1:]:
        assert np.array_equal(r["gw"], res[0]["gw"]) and np.array_equal(r["gb"], res[0]["gb"])

    # the reference: torch's GroupNorm of the whole tensor in float64
    x, gy, w, b = _data(1234, layout == "cl")
    act = "silu" if layout == "cl" else None
    xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
    yd = F.group_norm(xd, G, wd, bd, 1e-5)
    if act:
        yd = F.silu(yd)
    yd.backward(gy.double())
    for got, ref, name, tol in ((y, yd, "y", 2e-5), (gx, xd.grad, "grad_x", 1e-4),
                                (res[0]["gw"], wd.grad, "grad_weight", 1e-4),
                                (res[0]["gb"], bd.grad, "grad_bias", 1e-4)):
        ref = ref.detach().numpy()
        err = np.abs(got.astype(np.float64) - ref).max() / max(1.0, np.abs(ref).max())
        assert err < tol, f"{name}: error {err:.3g} against float64 torch"
    # and the single-process groupnorm of the whole tensor, within float32 rounding
    xs = x.clone().requires_grad_()
    ws, bs = w.clone().requires_grad_(), b.clone().requires_grad_()
    ys = gnt.group_norm(xs, G, ws, bs, activation=act)
    ys.backward(gy)
    assert np.abs(y - ys.detach().numpy()).max() <= 4e-6 * max(1.0, np.abs(y).max())
    assert np.abs(gx - xs.grad.numpy()).max() <= 1e-5 * max(1.0, np.abs(gx).max())
    if world == 1:  # one rank: the same computation as the one-call path
        assert np.array_equal(y, ys.detach().numpy())


def test_sync_group_norm_without_process_group_is_group_norm():
    torch = pytest.importorskip("torch")
    import groupnorm.torch as gnt

    x, gy, w, b = _data(99, True)
    m = gnt.SyncGroupNorm(G, C)
    with torch.no_grad():
        m.weight.copy_(w)
        m.bias.copy_(b)
    assert torch.equal(m(x), gnt.group_norm(x, G, w, b))
    assert isinstance(m, torch.nn.GroupNorm)
    assert list(m.state_dict()) == ["weight", "bias"]


# what differs between the 2 ranks: case -> rank -> (module kwargs, input shape, input dtype, channels_last)
_MISMATCHES = {
    "N": [(dict(num_groups=4, num_channels=8), (2, 8, 5, 3), "float32", False),
          (dict(num_groups=4, num_channels=8), (3, 8, 5, 3), "float32", False)],
    "C": [(dict(num_groups=4, num_channels=8), (2, 8, 5, 3), "float32", False),
          (dict(num_groups=4, num_channels=16), (2, 16, 5, 3), "float32", False)],
    "G": [(dict(num_groups=4, num_channels=8), (2, 8, 5, 3), "float32", False),
          (dict(num_groups=2, num_channels=8), (2, 8, 5, 3), "float32", False)],
    "dtype": [(dict(num_groups=4, num_channels=8), (2, 8, 5, 3), "float32", False),
              (dict(num_groups=4, num_channels=8, dtype="float64"), (2, 8, 5, 3), "float64", False)],
    "spatial dims": [(dict(num_groups=4, num_channels=8), (2, 8, 5, 3), "float32", False),
                     (dict(num_groups=4, num_channels=8), (2, 8, 5, 3, 1), "float32", False)],
    "layout": [(dict(num_groups=4, num_channels=8), (2, 8, 5, 3), "float32", False),
               (dict(num_groups=4, num_channels=8), (2, 8, 5, 3), "float32", True)],
    "eps": [(dict(num_groups=4, num_channels=8), (2, 8, 5, 3), "float32", False),
            (dict(num_groups=4, num_channels=8, eps=1e-3), (2, 8, 5, 3), "float32", False)],
    "affine": [(dict(num_groups=4, num_channels=8), (2, 8, 5, 3), "float32", False),
               (dict(num_groups=4, num_channels=8, affine=False), (2, 8, 5, 3), "float32", False)],
    "activation": [(dict(num_groups=4, num_channels=8), (2, 8, 5, 3), "float32", False),
                   (dict(num_groups=4, num_channels=8, activation="silu"), (2, 8, 5, 3), "float32", False)],
    "own checks": [(dict(num_groups=4, num_channels=8), (2, 8, 5, 3), "float32", False),
                   (dict(num_groups=4, num_channels=8), (2, 16, 5, 3), "float32", False)],
}


def mismatch_worker(rank, world, port, outdir):
    """Runs every case of _MISMATCHES, then one agreeing call; writes each case's error."""
    import torch
    import torch.distributed as dist
    import groupnorm.torch as gnt

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    got = {}
    try:
        for case, ranks in _MISMATCHES.items():
            kw, shape, dtype, cl = ranks[rank]
            kw = dict(kw, dtype=getattr(torch, kw.get("dtype", "float32")))
            m = gnt.SyncGroupNorm(**kw)
            x = torch.randn(shape, dtype=getattr(torch, dtype))
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            try:
                m(x.requires_grad_()).sum().backward()
                got[case] = "no error"
            except Exception as e:
                got[case] = f"{type(e).__name__}: {e}"
        # the ranks are still in step: an agreeing call works, forward and backward
        m = gnt.SyncGroupNorm(4, 8)
        x = torch.randn(2, 8, 3 + rank, 4, requires_grad=True)
        m(x).square().sum().backward()
        parts = [torch.empty_like(m.weight.grad) for _ in range(world)]
        dist.all_gather(parts, m.weight.grad)
        got["agreeing call"] = "ok" if all(torch.equal(p, parts[0]) for p in parts) else "grads differ"
    finally:
        with open(os.path.join(outdir, f"mismatch{rank}.json"), "w") as f:
            json.dump(got, f)
        dist.destroy_process_group()


def _run_workers(tmp_path, world, layout, timeout=240):
    """Runs the worker script on `world` ranks; a rank that hangs fails the test (and every rank is ended)."""
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(world), str(port), str(tmp_path), layout],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(world)]
    try:
        outs = [p.communicate(timeout=timeout)[0].decode() for p in procs]
    except subprocess.TimeoutExpired:
        pytest.fail(f"a rank did not finish in {timeout} s (hangs in a collective?)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed with exit code {p.returncode}:\n{outs[r]}"
    return outs


# case -> the error every rank raises (a regex)
_MISMATCH_ERRORS = {
    "N": r"ValueError: batch size \(N\) differs between ranks: rank 0 has 2, rank 1 has 3",
    "C": r"ValueError: num_channels differs between ranks: rank 0 has 8, rank 1 has 16",
    "G": r"ValueError: num_groups differs between ranks: rank 0 has 4, rank 1 has 2",
    "dtype": r"ValueError: dtype differs between ranks: rank 0 has float32, rank 1 has float64",
    "spatial dims": r"ValueError: number of spatial dims differs between ranks: rank 0 has 2, rank 1 has 3",
    "layout": r"ValueError: layout differs between ranks: rank 0 has channels-first, rank 1 has channels_last",
    "eps": r"ValueError: eps differs between ranks: rank 0 has 1e-05, rank 1 has 0.001",
    "affine": r"ValueError: weight differs between ranks: rank 0 has given, rank 1 has None; bias differs",
    "activation": r"ValueError: activation differs between ranks: rank 0 has None, rank 1 has 'silu'",
}


def test_ranks_that_disagree_all_raise_the_same_error(tmp_path):
    pytest.importorskip("torch")
    _run_workers(tmp_path, 2, "mismatch")
    got = [json.loads((tmp_path / f"mismatch{r}.json").read_text()) for r in range(2)]
    for case, msg in _MISMATCH_ERRORS.items():
        for r in range(2):
            assert re.match(msg, got[r].get(case, "not run")), f"{case}, rank {r}: {got[r].get(case)}"
        assert got[0][case] == got[1][case], f"{case}: the ranks raise different errors"
    # a rank whose own checks fail raises its error; the other is told and raises too, instead of waiting
    assert re.match(r"ValueError: SyncGroupNorm\(4, 8\) expects 8 channels \(dim 1\), got input of shape "
                    r"\(2, 16, 5, 3\) with 16", got[1]["own checks"]), got[1]["own checks"]
    assert re.match(r"ValueError: rank 1 of 2 failed its own argument checks in SyncGroupNorm.forward",
                    got[0]["own checks"]), got[0]["own checks"]
    assert got[0]["agreeing call"] == got[1]["agreeing call"] == "ok"


if __name__ == "__main__":
    if sys.argv[5] == "mismatch":
        mismatch_worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
