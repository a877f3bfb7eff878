#!/usr/bin/env python
"""A 2-thread call on a busy machine: its time next to the 1-thread call.

    python bench/contention.py                      # vae_512 and resnet_gn, both layouts
    python bench/contention.py --shapes vae_512 --layouts cf --rounds 30

A busy process (a pure-Python loop, a separate process) spins on one CPU for
the whole run, as another program on a shared machine would. Then, on the same
data, the 1-thread call and the all-threads call of group_norm (forward, out=)
are timed in interleaved rounds; the report is the median of the per-round
ratio all-threads / 1-thread (target: at most 1.25) with its quartiles. With
--static it also times the same calls with GROUPNORM_STATIC_SCHEDULE=1 (each
thread a fixed share of the work, the schedule before run_dynamic), in a
child process measured in the same rounds' conditions.

The machine's other load is not controlled: the figures are only comparable
within one run.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import SHAPES, batch_ns  # noqa: E402


def spin(stop, cpu):
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except (AttributeError, OSError):
            pass
    x = 0
    while not stop.is_set():
        for _ in range(100000):
            x += 1


def per_call_us(fn, k):
    return batch_ns(fn, k) / k / 1e3  # the harness's timing loop


def measure(args):
    import groupnorm as gn
    nt = args.threads or len(os.sched_getaffinity(0))
    rng = np.random.default_rng(0)
    out = []
    for name in args.shapes:
        dims, g = SHAPES[name]
        for lay in args.layouts:
            shape = dims if lay == "cf" else (dims[0],) + tuple(dims[2:]) + (dims[1],)
            cl = lay == "cl"
            x = rng.standard_normal(shape, dtype=np.float32)
            w = np.ones(dims[1], np.float32)
            b = np.zeros(dims[1], np.float32)
            y = gn._checks.empty_aligned(x.shape, x.dtype)
            one = lambda: gn.group_norm(x, g, w, b, channels_last=cl, out=y, num_threads=1)  # noqa: E731
            many = lambda: gn.group_norm(x, g, w, b, channels_last=cl, out=y, num_threads=nt)  # noqa: E731
            for f in (one, many, one, many):
                f()
            t0 = time.perf_counter()
            one()
            k = max(1, int(args.batch_s / max(time.perf_counter() - t0, 1e-6)))
            t1, tn = [], []
            for r in range(args.rounds):
                if r % 2:
                    t1.append(per_call_us(one, k))
                    tn.append(per_call_us(many, k))
                else:
                    tn.append(per_call_us(many, k))
                    t1.append(per_call_us(one, k))
            ratio = np.sort(np.array(tn) / np.array(t1))
            out.append((name, lay, nt, float(np.median(t1)), float(np.median(tn)), float(np.median(ratio)),
                        float(ratio[len(ratio) // 4]), float(ratio[(3 * len(ratio)) // 4])))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="vae_512,resnet_gn")
    ap.add_argument("--layouts", default="cf,cl")
    ap.add_argument("--threads", type=int, default=0, help="threads of the busy-machine call (default: all)")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--batch-s", type=float, default=0.02, help="seconds per timed batch (default 0.02)")
    ap.add_argument("--busy-cpu", type=int, default=-1,
                    help="CPU the busy process is pinned to (default: the last one; -2: not pinned)")
    ap.add_argument("--no-busy", action="store_true", help="no busy process (the quiet baseline)")
    ap.add_argument("--static", action="store_true", help="also measure GROUPNORM_STATIC_SCHEDULE=1")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.layouts = [s for s in args.layouts.split(",") if s]
    if args.child:
        for row in measure(args):
            print(" ".join(map(str, row)))
        return 0
    cpus = sorted(os.sched_getaffinity(0))
    cpu = None if args.busy_cpu == -2 else (cpus[-1] if args.busy_cpu == -1 else args.busy_cpu)
    stop = mp.Event()
    busy = None
    if not args.no_busy:
        busy = mp.Process(target=spin, args=(stop, cpu), daemon=True)
        busy.start()
        time.sleep(0.2)
    try:
        runs = [("dynamic", {})] + ([("static", {"GROUPNORM_STATIC_SCHEDULE": "1"})] if args.static else [])
        print(f"busy process: {'none' if args.no_busy else f'spinning on CPU {cpu}'}; "
              f"{len(cpus)} CPUs; median of {args.rounds} interleaved rounds")
        print(f"{'schedule':8s} {'shape':9s} {'lay':3s} {'thr':>3s} {'1-thr us':>10s} {'n-thr us':>10s} "
              f"{'n/1':>6s} {'q1':>6s} {'q3':>6s}")
        for label, env in runs:
            cmd = [sys.executable, __file__, "--child", "--shapes", ",".join(args.shapes), "--layouts",
                   ",".join(args.layouts), "--threads", str(args.threads), "--rounds", str(args.rounds),
                   "--batch-s", str(args.batch_s)]
            res = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True)
            for line in res.stdout.split("\n"):
                if not line.strip():
                    continue
                name, lay, nt, t1, tn, rm, q1, q3 = line.split()
                print(f"{label:8s} {name:9s} {lay:3s} {nt:>3s} {float(t1):10.1f} {float(tn):10.1f} "
                      f"{float(rm):6.2f} {float(q1):6.2f} {float(q3):6.2f}", flush=True)
    finally:
        stop.set()
        if busy is not None:
            busy.join(timeout=5)
            if busy.is_alive():
                busy.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
