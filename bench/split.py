#!/usr/bin/env python
"""Split-phase timings against a copy and against the one-call group_norm.

    python bench/split.py                           # DRAM-sized shapes, cf and cl, float32
    python bench/split.py --baseline /tmp/gn_main   # also the one-call path of another build (repeatable)

For each shape and layout, in interleaved rounds (machine noise hits all alike),
the median per-call time of:

  copy        groupnorm._core.parallel_copy of x (the memory floor: read x, write y)
  one_call    group_norm(x, G, w, b, out=y)
  moments     groupnorm.moments(x, G)                        (target <= 0.6x copy: reads x only)
  apply       group_norm(x, G, w, b, stats=m, out=y)         (target <= 1.1x copy)
  mom+apply   moments then apply                             (target within 10% of one_call)
  baseline    one_call of the build under --baseline (a directory holding an installed
              groupnorm package, e.g. pip install --target DIR of another checkout):
              the same C++ entry point, so one_call/baseline shows whether the one-call
              path got slower.

Prints a table of times and ratios; --csv writes the rows.
"""
import argparse
import csv
import glob
import importlib.machinery
import importlib.util
import os
import sys

import numpy as np

import groupnorm
from groupnorm import _core

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import measure  # noqa: E402

SHAPES = {
    "vae_512": ((1, 512, 128, 128), 32),
    "vae_256": ((1, 256, 256, 256), 32),
    "resnet_gn": ((8, 256, 56, 56), 32),
    "vol3d": ((1, 32, 32, 128, 128), 8),
}


def load_baseline_core(path):
    """The _core extension of another build, loaded under its own module name."""
    files = glob.glob(os.path.join(path, "groupnorm", "_core*.so")) + glob.glob(os.path.join(path, "_core*.so"))
    if not files:
        raise SystemExit(f"--baseline: no groupnorm/_core*.so under {path}")
    loader = importlib.machinery.ExtensionFileLoader("_core", files[0])
    spec = importlib.util.spec_from_file_location("_core", files[0], loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def time_rounds(cands, rounds, target):
    """Median seconds per call and relative spread (interquartile range / median) of each candidate:
    the harness's one timing loop (calibrated batches, candidates interleaved round by round)."""
    stats, errors = measure(cands, repeat=rounds, target_s=target, warmup_s=0.05)
    if errors:
        raise RuntimeError(f"failed: {errors}")
    return {n: (st["us"] / 1e6, st["spread_pct"] / 100) for n, st in stats.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--layouts", default="cf,cl")
    ap.add_argument("--threads", type=int, default=0, help="0: groupnorm.get_num_threads()")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--target-time", type=float, default=1.0, help="seconds per candidate per configuration")
    ap.add_argument("--baseline", action="append", default=[], metavar="DIR[=LABEL]")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    nt = args.threads or groupnorm.get_num_threads()
    bases = {}
    for i, b in enumerate(args.baseline):
        path, _, label = b.partition("=")
        bases[label or f"base{i}"] = load_baseline_core(path)
    print(f"groupnorm {groupnorm.__version__}, isa {groupnorm.active_isa()}, {nt} threads, "
          f"median of {args.rounds} interleaved rounds")
    rows = []
    hdr = (f"{'shape':10} {'layout':6} {'copy us':>9} {'moments':>8} {'apply':>8} {'mom+apply':>9} "
           f"{'one_call':>8} {'(m+a)/1c':>8}" + "".join(f" {'1c/' + k:>10}" for k in bases) + "  spread")
    print(hdr)
    for name in args.shapes.split(","):
        dims, G = SHAPES[name]
        for layout in args.layouts.split(","):
            cl = layout == "cl"
            shape = (dims[0],) + dims[2:] + (dims[1],) if cl else dims
            rng = np.random.default_rng(0)
            x = rng.standard_normal(shape, dtype=np.float32)
            C = dims[1]
            w = rng.uniform(0.5, 1.5, C).astype(np.float32)
            b = rng.normal(0, 0.5, C).astype(np.float32)
            y = groupnorm._checks.empty_aligned(shape, np.float32)
            dst = groupnorm._checks.empty_aligned(shape, np.float32)
            m = groupnorm.moments(x, G, channels_last=cl, num_threads=nt)
            cands = {
                "copy": lambda: _core.parallel_copy(dst, x, nt),
                "one_call": lambda: groupnorm.group_norm(x, G, w, b, 1e-5, channels_last=cl, out=y, num_threads=nt),
                "moments": lambda: groupnorm.moments(x, G, channels_last=cl, num_threads=nt),
                "apply": lambda: groupnorm.group_norm(x, G, w, b, 1e-5, channels_last=cl, out=y, num_threads=nt,
                                                      stats=m),
                "mom+apply": lambda: groupnorm.group_norm(
                    x, G, w, b, 1e-5, channels_last=cl, out=y, num_threads=nt,
                    stats=groupnorm.moments(x, G, channels_last=cl, num_threads=nt)),
            }
            for k, core in bases.items():
                cands[k] = (lambda core: lambda: core.forward_fast(x, G, w, b, 1e-5, cl, 0, y, nt))(core)
            t = time_rounds(cands, args.rounds, args.target_time)
            cp = t["copy"][0]
            row = dict(shape=name, layout=layout, threads=nt, copy_us=cp * 1e6,
                       moments_x_copy=t["moments"][0] / cp, apply_x_copy=t["apply"][0] / cp,
                       mom_apply_x_copy=t["mom+apply"][0] / cp, one_call_x_copy=t["one_call"][0] / cp,
                       mom_apply_vs_one_call=t["mom+apply"][0] / t["one_call"][0],
                       **{f"one_call_vs_{k}": t["one_call"][0] / t[k][0] for k in bases},
                       max_spread_pct=100 * max(s for _, s in t.values()))
            rows.append(row)
            line = (f"{name:10} {layout:6} {cp * 1e6:9.1f} {row['moments_x_copy']:8.2f} {row['apply_x_copy']:8.2f} "
                    f"{row['mom_apply_x_copy']:9.2f} {row['one_call_x_copy']:8.2f} "
                    f"{row['mom_apply_vs_one_call']:8.3f}")
            for k in bases:
                line += f" {row[f'one_call_vs_{k}']:10.3f}"
            print(line + f"  {row['max_spread_pct']:.0f}%", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
