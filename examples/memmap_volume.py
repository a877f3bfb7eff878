"""Normalize a volume on disk that is bigger than a memory budget, in slabs.

GroupNorm needs the statistics of a whole group before it can write any of
it. With the split-phase API a volume that does not fit in memory takes two
streaming passes over slabs along the depth axis:

  pass 1: moments of every slab, merged in slab order (groupnorm.merge_moments);
  pass 2: every slab normalized with the merged statistics (group_norm(stats=)).

Only one slab (plus its output) is in memory at a time. The result is the one
that group_norm would give with the whole volume in memory (within float32
rounding: only the order of the summation differs; --check compares them).

    python examples/memmap_volume.py                      # 1 x 16 x 64 x 192 x 192 float32 (151 MB), 16 MB budget
    python examples/memmap_volume.py --shape 1 8 32 64 64 --budget 1e6 --check
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

import groupnorm


def slab_bounds(depth, plane_bytes, budget):
    """[d0, d1) slabs along depth: an input slab and its output fit in the budget."""
    planes = max(1, int(budget // (2 * plane_bytes)))
    return [(d, min(depth, d + planes)) for d in range(0, depth, planes)]


def progress(name, i, n, t0):
    sys.stdout.write(f"\r{name}: slab {i}/{n} ({time.perf_counter() - t0:.1f} s)")
    if i == n:
        sys.stdout.write("\n")
    sys.stdout.flush()


def normalize_volume(src, dst, num_groups, weight, bias, eps, budget, channels_last=False, quiet=False):
    """dst = group_norm(src) for a volume src (N, C, D, H, W), or (N, D, H, W, C)
    when channels_last, with at most about `budget` bytes of it in memory."""
    axis = 1 if channels_last else 2
    depth = src.shape[axis]
    plane_bytes = src.nbytes // max(depth, 1)
    slabs = slab_bounds(depth, plane_bytes, budget)

    def part(a, d0, d1):
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(d0, d1)
        return tuple(idx)

    # pass 1: moments of each slab; merged in slab order (deterministic)
    t0 = time.perf_counter()
    parts = []
    for i, (d0, d1) in enumerate(slabs):
        parts.append(groupnorm.moments(np.asarray(src[part(src, d0, d1)]), num_groups, channels_last=channels_last))
        if not quiet:
            progress("pass 1 (moments)", i + 1, len(slabs), t0)
    stats = groupnorm.merge_moments(parts)

    # pass 2: apply with the whole volume's statistics
    t0 = time.perf_counter()
    for i, (d0, d1) in enumerate(slabs):
        idx = part(src, d0, d1)
        dst[idx] = groupnorm.group_norm(np.asarray(src[idx]), num_groups, weight, bias, eps,
                                        channels_last=channels_last, stats=stats)
        if not quiet:
            progress("pass 2 (apply)", i + 1, len(slabs), t0)
    dst.flush()
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=5, default=[1, 16, 64, 192, 192], metavar=("N", "C", "D", "H", "W"))
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--budget", type=float, default=16e6, help="bytes of the volume held in memory at once")
    ap.add_argument("--channels-last", action="store_true", help="store the volume as (N, D, H, W, C)")
    ap.add_argument("--dir", default=None, help="where to put the memmap files (default: a temporary directory)")
    ap.add_argument("--check", action="store_true", help="compare with group_norm on the volume in memory")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    n, c, d, h, w = args.shape
    shape = (n, d, h, w, c) if args.channels_last else (n, c, d, h, w)
    rng = np.random.default_rng(0)
    weight = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bias = rng.normal(0.0, 0.5, c).astype(np.float32)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        src = np.lib.format.open_memmap(os.path.join(tmp, "volume.npy"), "w+", np.float32, shape)
        dst = np.lib.format.open_memmap(os.path.join(tmp, "normalized.npy"), "w+", np.float32, shape)
        # the volume is written slab by slab too (a stand-in for data that arrives on disk)
        axis = 4 if args.channels_last else 1
        for k in range(shape[0]):
            for j in range(shape[axis]):
                idx = (k, Ellipsis, j) if args.channels_last else (k, j)
                src[idx] = rng.normal(10.0 + j, 1.0 + j % 3, size=src[idx].shape).astype(np.float32)
        src.flush()
        mb = src.nbytes / 1e6
        if not args.quiet:
            print(f"volume {shape} float32: {mb:.1f} MB on disk, budget {args.budget / 1e6:.1f} MB")
        t0 = time.perf_counter()
        stats = normalize_volume(src, dst, args.groups, weight, bias, 1e-5, args.budget,
                                 channels_last=args.channels_last, quiet=args.quiet)
        dt = time.perf_counter() - t0
        if not args.quiet:
            mean, rstd = stats.mean_rstd()
            print(f"normalized in {dt:.2f} s; group means {np.round(mean[0], 3)}, rstd {np.round(rstd[0], 4)}")
        if args.check:
            ref = groupnorm.group_norm(np.asarray(src), args.groups, weight, bias, 1e-5,
                                       channels_last=args.channels_last)
            err = float(np.abs(np.asarray(dst, dtype=np.float64) - ref).max())
            ok = err <= 2e-5 * max(1.0, float(np.abs(ref).max()))
            print(f"max |slabs - in memory| = {err:.3e}: {'ok' if ok else 'MISMATCH'}")
            del src, dst
            return 0 if ok else 1
        del src, dst
    return 0


if __name__ == "__main__":
    sys.exit(main())
