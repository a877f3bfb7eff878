"""Kernel against kernel: groupnorm's forward and backward against PyTorch's own CPU kernels.

    python bench/kernels.py [--shapes sd_unet,sd_640,sd_1280] [--threads 1,2] [--out FILE.md]

PyTorch's side calls ``torch.ops.aten.native_group_norm`` and ``native_group_norm_backward``
directly (no autograd, no module: the per-call overhead that hides the kernels' difference in an
autograd timing is gone); ours calls ``group_norm(..., out=)`` and ``group_norm_backward(..., out=)``
on the same data (channels-last: the same memory, viewed (N, *spatial, C)). Each side runs in its
own process (PyTorch's thread pool keeps spinning after its calls) and times a same-size copy of x
(the same multi-threaded memcpy in both) in the same interleaved rounds (bench/harness.measure: medians); the speedup is PyTorch's
time / ours, each taken as a multiple of its own process's copy, so that the two processes' machine
states cancel. Every output is checked against a float64 reference first.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SHAPES, measure, reference  # noqa: E402

PASSES = ("fwd", "bwd")


class _Case:  # what harness.reference reads
    def __init__(self, dims, groups, cl, rng):
        self.dims, self.groups, self.channels, self.channels_last, self.eps = dims, groups, dims[1], cl, 1e-5
        shape = dims if not cl else (dims[0],) + tuple(dims[2:]) + (dims[1],)
        self.x = (rng.standard_normal(shape, dtype=np.float32) * 1.5 + 0.25)
        self.grad_y = rng.standard_normal(shape, dtype=np.float32)
        self.weight = (1.0 + 0.1 * rng.standard_normal(dims[1], dtype=np.float32))
        self.bias = 0.1 * rng.standard_normal(dims[1], dtype=np.float32)


def _check(name, got, want):
    err = float(np.max(np.abs(got.astype(np.float64) - want)))
    if not err <= 2e-3 * (4 if name == "bwd" else 1):
        raise SystemExit(f"{name}: max error {err:.3g} against the float64 reference")


def _one(side, shape_name, cl, threads, repeat, target):
    """In a child process: {'copy': us, 'fwd': us, 'bwd': us} of one side."""
    dims, groups = SHAPES[shape_name]
    case = _Case(dims, groups, cl, np.random.default_rng(0))
    refs = {}
    x, gy, w, b = case.x, case.grad_y, case.weight, case.bias
    n, c = dims[0], dims[1]
    hw = int(np.prod(dims[2:]))
    if side == "torch":
        import torch
        torch.set_num_threads(threads)
        fmt = torch.channels_last if len(dims) == 4 else torch.channels_last_3d

        def logical(a):  # (N, *spatial, C) memory as a channels-last (N, C, *spatial) tensor
            t = torch.from_numpy(a)
            return t.permute(0, t.dim() - 1, *range(1, t.dim() - 1)) if cl else t
        tx, tgy, tw, tb = logical(x), logical(gy), torch.from_numpy(w), torch.from_numpy(b)
        if cl:
            assert tx.is_contiguous(memory_format=fmt)
        y, mean, rstd = torch.ops.aten.native_group_norm(tx, tw, tb, n, c, hw, groups, 1e-5)
        dx = torch.ops.aten.native_group_norm_backward(tgy, tx, mean, rstd, tw, n, c, hw, groups,
                                                       [True, True, True])[0]
        as_np = (lambda t: t.permute(0, *range(2, t.dim()), 1).numpy()) if cl else (lambda t: t.numpy())
        _check("fwd", as_np(y), reference(case, "fwd", refs))
        _check("bwd", as_np(dx), reference(case, "bwd", refs))
        import groupnorm as gn  # the same copy floor in both processes
        dst = gn._checks.empty_aligned(x.shape, x.dtype)
        cands = {
            "copy": lambda: gn._core.parallel_copy(dst, x, threads),
            "copy_1": lambda: gn._core.parallel_copy(dst, x, 1),
            "fwd": lambda: torch.ops.aten.native_group_norm(tx, tw, tb, n, c, hw, groups, 1e-5),
            "bwd": lambda: torch.ops.aten.native_group_norm_backward(tgy, tx, mean, rstd, tw, n, c, hw, groups,
                                                                     [True, True, True]),
        }
    else:
        import groupnorm as gn
        y = gn._checks.empty_aligned(x.shape, x.dtype)
        dx = gn._checks.empty_aligned(x.shape, x.dtype)
        dst = gn._checks.empty_aligned(x.shape, x.dtype)
        _, mean, rstd = gn.group_norm(x, groups, w, b, channels_last=cl, out=y, return_stats=True,
                                      num_threads=threads)
        gn.group_norm_backward(gy, x, mean, rstd, groups, w, b, channels_last=cl, out=dx, num_threads=threads)
        _check("fwd", y, reference(case, "fwd", refs))
        _check("bwd", dx, reference(case, "bwd", refs))
        cands = {
            "copy": lambda: gn._core.parallel_copy(dst, x, threads),
            "copy_1": lambda: gn._core.parallel_copy(dst, x, 1),
            "fwd": lambda: gn.group_norm(x, groups, w, b, channels_last=cl, out=y, num_threads=threads),
            "bwd": lambda: gn.group_norm_backward(gy, x, mean, rstd, groups, w, b, channels_last=cl, out=dx,
                                                  num_threads=threads),
        }
    stats, errors = measure(cands, repeat, target, warmup_s=0.05)
    if errors:
        raise SystemExit(f"{side}: {errors}")
    out = {k: v["us"] for k, v in stats.items()}
    # the floor: the faster of the copy on the case's threads and on one (a split copy waits
    # for its slowest thread; on a busy machine one thread copies faster), as bench/run.py
    out["copy"] = min(out["copy"], out.pop("copy_1"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="sd_unet,sd_640,sd_1280")
    ap.add_argument("--layouts", default="cf,cl")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--target-time", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=2, help="processes per side, alternating (the median is kept)")
    ap.add_argument("--out", help="markdown file to write (default: print only)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        side, shape, layout, threads = args.one.split(":")
        print(json.dumps(_one(side, shape, layout == "cl", int(threads), args.repeat, args.target_time)))
        return
    rows = []
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            ap.error(f"--shapes: unknown shape {shape!r} (known: {', '.join(SHAPES)})")
        for layout in args.layouts.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                got = {"torch": [], "ours": []}
                for _ in range(args.rounds):
                    for side in ("torch", "ours"):
                        cmd = [sys.executable, __file__, "--one", f"{side}:{shape}:{layout}:{threads}",
                               "--repeat", str(args.repeat), "--target-time", str(args.target_time)]
                        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                        got[side].append(json.loads(out.strip().splitlines()[-1]))
                med = {s: {k: float(np.median([r[k] for r in got[s]])) for k in ("copy",) + PASSES} for s in got}
                row = {"shape": shape, "layout": layout, "threads": threads}
                for p in PASSES:
                    for s in got:
                        row[f"{s}_{p}_x_copy"] = med[s][p] / med[s]["copy"]
                        row[f"{s}_{p}_us"] = med[s][p]
                    row[f"speedup_{p}"] = row[f"torch_{p}_x_copy"] / row[f"ours_{p}_x_copy"]
                row["copy_us"] = med["ours"]["copy"]
                rows.append(row)
                print(f"{shape} {layout} t{threads}: fwd {row['speedup_fwd']:.2f}x, bwd {row['speedup_bwd']:.2f}x "
                      f"PyTorch's kernel time", flush=True)
    import torch
    lines = [
        "# groupnorm against PyTorch's CPU kernels, kernel against kernel",
        "",
        f"`python bench/kernels.py --shapes {args.shapes} --layouts {args.layouts} --threads {args.threads}`; "
        f"float32, torch {torch.__version__}, {os.cpu_count()} CPUs ({platform.machine()}), load average "
        f"{os.getloadavg()[0]:.1f} at the end. Times are medians of interleaved rounds, as a multiple of a "
        "same-size copy of x timed in the same process (the faster of the case's threads and one: a split copy waits for its slowest thread); 'speedup' is PyTorch's multiple / ours "
        f"(median of {args.rounds} alternating processes per side). PyTorch: `aten::native_group_norm` and "
        "`aten::native_group_norm_backward` called directly; ours: `group_norm(out=)` and "
        "`group_norm_backward(out=)` through the Python API (a few us of argument checks included).",
        "",
        "| shape | layout | threads | copy us | fwd ours | fwd PyTorch | fwd speedup | bwd ours | bwd PyTorch "
        "| bwd speedup |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        dims, g = SHAPES[r["shape"]]
        lines.append(
            f"| {r['shape']} ({'x'.join(map(str, dims))} G{g}) | {r['layout']} | {r['threads']} | {r['copy_us']:.1f} "
            f"| {r['ours_fwd_x_copy']:.2f} | {r['torch_fwd_x_copy']:.2f} | **{r['speedup_fwd']:.2f}x** "
            f"| {r['ours_bwd_x_copy']:.2f} | {r['torch_bwd_x_copy']:.2f} | **{r['speedup_bwd']:.2f}x** |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
