"""SyncGroupNorm over torch.distributed (gloo): 1, 2 and 4 processes spawned here.

Each rank takes a slab of rows of one tensor (uneven slabs); the ranks' y and
gradients, put back together, must equal the single-process GroupNorm of the
whole tensor (float64 autograd of torch's own GroupNorm as the reference, and
groupnorm.torch.group_norm), and the statistics and parameter gradients must be
bitwise the same on every rank. This file is also the worker script:
``python test_torch_sync.py RANK WORLD PORT OUTDIR LAYOUT``.
"""
import os
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

    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(world), str(port), str(tmp_path), layout],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(world)]
    outs = [p.communicate(timeout=240)[0].decode() for p in procs]
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{outs[r]}"
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


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
