#!/usr/bin/env python
"""Benchmark groupnorm against a multi-threaded copy and against installed peers.

    python bench/run.py                       # all shapes, cf+cl, float32, threads 1 and all
    python bench/run.py --quick               # the same, with short measurements
    python bench/run.py --shapes sd_unet,tiny --layouts cl --dtypes float32,bfloat16 --threads all
    python bench/run.py --explain --shapes sd_640   # where the time goes: each phase against its floor

For every (shape, layout, dtype, threads, pass) it reports the median time of
our call, GB/s, the ratio to a same-size multi-threaded copy of x measured in
the same run (``x_copy`` = our time / copy time), and the ratio to every
installed peer (``vs_<peer>`` = peer time / our time, > 1 means we are faster).
Peers: PyTorch (forward, autograd backward, group_norm + silu), OpenVINO,
ONNX Runtime and ncnn (forward only; ncnn both through a generated net and as
its layer in place on data already in its packed layout). A peer that cannot
run a case is reported as missing with its reason.

Processes: ours and each peer are timed in separate processes (one per peer,
or one per peer and configuration with --isolate), each next to its own copy
floor: the thread pools of other runtimes (PyTorch's OpenMP, OpenVINO's TBB,
ONNX Runtime's) keep spinning after their calls and would slow whatever runs
next in the same process. vs_<peer> is then the ratio of the two processes'
time / copy time figures. --same-process times everything in one process.

Timing: each candidate (ours, the copies, the peers) is warmed up, its per-call
time estimated, and then all candidates of one (shape, layout, dtype, threads)
configuration are timed in interleaved rounds, so machine noise hits them
alike; each round times a batch of calls sized so the whole measurement of one
candidate takes about --target-time seconds; the result is the median over
rounds of the per-call time (time.perf_counter_ns). Our outputs and the copy's
destination are preallocated. The copy floor is the fastest of
groupnorm._core.parallel_copy with the case's threads, the same with one thread
(a split copy waits for its slowest thread, and on a busy machine one thread
is faster), and, in PyTorch's process, torch's Tensor.copy_ (column copy_impl).

--explain times, instead, each phase of our forward and backward (moments,
apply, backward sums, dx, and the one calls) against the measured floor of the
bytes that phase moves, in one process, and prints which phase misses and by
how much, the schedule each call took and the cache sizes found (bench/explain.py;
writes explain.csv under --out).

Writes (under --out, default ./bench-results, never the committed bench/results
unless asked): results.csv (one row per
measurement), results.png (time / copy time per shape, float32 forward, one
panel per layout and thread count; backward below), summary.md (headline
table for the README).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import peers as P  # noqa: E402
from harness import (BYTES_PER_X, DEFAULT_PASSES, DTYPES, LAYOUTS, PASSES, PEER_LABEL, SHAPES,  # noqa: E402,F401
                     CSV_FIELDS, TARGET_RATIO, _reason, args_dtype_name, check_outputs, make_data, measure, np_dtype)
from reporting import Printer, _r, make_plot, make_summary, write_csv  # noqa: E402



# ------------------------------------------------------------------------------------- arguments

def all_threads():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _list(s):
    return [p.strip() for p in s.split(",") if p.strip()]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="shapes: " + ", ".join(
                                     f"{k} {v[0]} G{v[1]}" for k, v in SHAPES.items()))
    ap.add_argument("--threads", default="1,all",
                    help='comma list of thread counts; "all" = the CPUs this process may use (default 1,all)')
    ap.add_argument("--layouts", default="cf,cl", help="cf (N,C,*spatial) and/or cl (N,*spatial,C) (default cf,cl)")
    ap.add_argument("--dtypes", default="float32", help="float32, float16, bfloat16, float64 (default float32)")
    ap.add_argument("--shapes", default="all", help='shape names (comma list) or "all" (default all)')
    ap.add_argument("--passes", default=",".join(DEFAULT_PASSES),
                    help="fwd, bwd, silu (fused GroupNorm+SiLU forward), silu_bwd, fwd_alloc (ours: "
                         "group_norm(x) without out=, a new array per call), fwd_inplace (ours: out=x) "
                         "(default fwd,bwd,silu,fwd_alloc,fwd_inplace)")
    ap.add_argument("--peers", default="torch,openvino,onnxruntime,ncnn,ncnn_packed",
                    help='peers to compare with, comma list, or "none" (default: all, those installed)')
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed samples (interleaved rounds) per measurement; the median is reported "
                         "(default 15, --quick 5)")
    ap.add_argument("--target-time", type=float, default=None,
                    help="seconds each measurement should take (default 0.3, --quick 0.04)")
    ap.add_argument("--gap-ms", type=float, default=0.0,
                    help="pause before each timed sample so other thread pools go idle (default 0)")
    ap.add_argument("--quick", action="store_true", help="short measurements (smoke test; noisier)")
    ap.add_argument("--out", default="bench-results", help="output folder (default ./bench-results; the committed "
                    "figures are bench/results: pass --out bench/results to replace them)")
    ap.add_argument("--no-plot", action="store_true", help="do not write results.png")
    ap.add_argument("--no-check", dest="check", action="store_false",
                    help="skip comparing every timed output (ours and peers) with a float64 reference")
    ap.add_argument("--isolate", action="store_true",
                    help="run each (shape, dtype, layout) in its own process, so a crash (segfault) in "
                         "our kernels or a peer is reported as missing instead of ending the run")
    ap.add_argument("--same-process", action="store_true",
                    help="time ours and every peer in one process (default: one process each)")
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)  # child: "ours" or one peer
    ap.add_argument("--child-rows", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--explain", action="store_true",
                    help="where the time goes: each phase (moments, apply, backward sums, dx, one call) against "
                         "the measured floor of the bytes it moves, the schedule it took, the cache sizes "
                         "(bench/explain.py; our library only, one process; --passes and --peers are ignored)")
    args = ap.parse_args(argv)

    n_all = all_threads()
    threads = []
    for t in _list(args.threads):
        v = n_all if t == "all" else int(t)
        if v < 1:
            ap.error(f"--threads: {t} is not a positive count")
        if v not in threads:
            threads.append(v)
    args.threads = threads
    args.layouts = _check_choice(ap, "--layouts", _list(args.layouts), LAYOUTS)
    args.dtypes = _check_choice(ap, "--dtypes", _list(args.dtypes), DTYPES)
    args.shapes = list(SHAPES) if args.shapes == "all" else _check_choice(ap, "--shapes", _list(args.shapes), SHAPES)
    args.passes = _check_choice(ap, "--passes", _list(args.passes), PASSES)
    args.peers = [] if args.peers == "none" else _check_choice(ap, "--peers", _list(args.peers), P.PEER_NAMES)
    if args.repeat is None:
        args.repeat = 5 if args.quick else 15
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.target_time is None:
        args.target_time = 0.04 if args.quick else 0.3
    args.warmup_time = min(0.1, args.target_time / 4)
    return args


def _check_choice(ap, opt, values, allowed):
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        ap.error(f"{opt}: unknown {bad or values}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(values))


# ---------------------------------------------------------------------------------------- ours

def ours_builders(gn, case):
    """{pass: builder() -> fn} for our library on this case (outputs preallocated)."""
    x, gy, w, b, g = case.x, case.grad_y, case.weight, case.bias, case.groups
    cl, t, eps = case.channels_last, case.threads, case.eps
    # 64-byte-aligned outputs, as the library allocates them (and as PyTorch's
    # allocator does for its own); NumPy's np.empty aligns to 16 bytes only
    y = gn._checks.empty_aligned(x.shape, x.dtype)
    gx = gn._checks.empty_aligned(x.shape, x.dtype)

    def fwd(act):
        def build():
            gn.group_norm(x, g, w, b, eps, channels_last=cl, activation=act, out=y, num_threads=t)
            fn = lambda: gn.group_norm(x, g, w, b, eps, channels_last=cl, activation=act,  # noqa: E731
                                       out=y, num_threads=t)
            fn.output = lambda: fn()
            return fn
        return build

    def bwd(act):
        def build():
            _, mean, rstd = gn.group_norm(x, g, w, b, eps, channels_last=cl, activation=act,
                                          return_stats=True, num_threads=t)
            try:
                gn.group_norm_backward(gy, x, mean, rstd, g, w, b, channels_last=cl, activation=act,
                                       num_threads=t, out=gx)
            except TypeError as e:  # an API without out=: allocate per call
                if "out" not in str(e):
                    raise
                gn.group_norm_backward(gy, x, mean, rstd, g, w, b, channels_last=cl, activation=act,
                                       num_threads=t)
                fn = lambda: gn.group_norm_backward(gy, x, mean, rstd, g, w, b,  # noqa: E731
                                                    channels_last=cl, activation=act, num_threads=t)
            else:
                fn = lambda: gn.group_norm_backward(gy, x, mean, rstd, g, w, b,  # noqa: E731
                                                    channels_last=cl, activation=act, num_threads=t,
                                                    out=gx)
            fn.output = lambda: fn()[0]
            return fn
        return build

    def alloc():  # the call users write: a new output every call (from the library's buffer cache)
        gn.group_norm(x, g, w, b, eps, channels_last=cl, num_threads=t)
        fn = lambda: gn.group_norm(x, g, w, b, eps, channels_last=cl, num_threads=t)  # noqa: E731
        fn.output = fn
        return fn

    def inplace():  # out=x, on an aligned copy of x (normalized again on every call)
        xi = gn._checks.empty_aligned(x.shape, x.dtype)
        xi[...] = x
        fn = lambda: gn.group_norm(xi, g, w, b, eps, channels_last=cl, out=xi, num_threads=t)  # noqa: E731

        def output():  # one call on fresh data
            xo = gn._checks.empty_aligned(x.shape, x.dtype)
            xo[...] = x
            return gn.group_norm(xo, g, w, b, eps, channels_last=cl, out=xo, num_threads=t)
        fn()
        fn.output = output
        return fn

    return {"fwd": fwd(None), "silu": fwd("silu"), "bwd": bwd(None), "silu_bwd": bwd("silu"),
            "fwd_alloc": alloc, "fwd_inplace": inplace}


def call_overhead_builders(gn, case):
    """Extra candidate for the tiny shape: the simplest call, group_norm(x, G), which allocates y.

    (The tiny "fwd" row itself is the cost of one Python call with out= and weight/bias.)
    """
    x, g, cl, t = case.x, case.groups, case.channels_last, case.threads

    def alloc():
        gn.group_norm(x, g, channels_last=cl, num_threads=t)
        return lambda: gn.group_norm(x, g, channels_last=cl, num_threads=t)

    return {"call_alloc": alloc}


def run_config(args, gn, case, peers_avail, isa, rows, printer, refs):
    """Measure everything for one (shape, layout, dtype, threads) case; append CSV rows."""
    torch = None
    if "torch" in peers_avail:
        import torch
        torch.set_num_threads(case.threads)
    cands, notes, build_errors = {}, {}, {}

    def add(key, builder):
        try:
            fn, note = builder()
        except Exception as e:  # noqa: BLE001
            build_errors[key] = _reason(e)
            if os.environ.get("GN_BENCH_DEBUG"):
                traceback.print_exc()
            return
        cands[key] = fn
        if note:
            notes[key] = note

    # copies
    if gn is not None:
        add("copy:parallel_copy", lambda: P.parallel_copy(case, gn._core))
        if case.threads > 1:  # on a busy machine one thread copies faster than a split copy
            add("copy:parallel_copy_1", lambda: P.parallel_copy(case, gn._core, threads=1))
    if torch is not None:
        add("copy:torch", lambda: P.torch_copy(case))
    if not any(k.startswith("copy:") for k in cands):
        add("copy:numpy", lambda: P.numpy_copy(case))
    # ours
    with_ours = args.only in (None, "ours")
    if not with_ours:
        pass
    elif gn is None:
        for p in list(args.passes) + (["call_alloc"] if case.shape_name == "tiny" else []):
            build_errors[f"ours:{p}"] = args.gn_error
    else:
        ob = ours_builders(gn, case)
        for p in args.passes:
            add(f"ours:{p}", lambda p=p: (ob[p](), ""))
        if case.shape_name == "tiny":
            for k, bld in call_overhead_builders(gn, case).items():
                add(f"ours:{k}", lambda bld=bld: (bld(), ""))
    # peers
    for peer in args.peers:
        for p in args.passes:
            builder = P.PEERS[peer].get(p)
            if builder is None:
                continue  # forward-only peer: not applicable, not "missing"
            if peer not in peers_avail:
                build_errors[f"{peer}:{p}"] = peers_avail.get("_why", {}).get(peer, "not installed")
                continue
            add(f"{peer}:{p}", lambda b=builder: b(case))

    checks = check_outputs(args, case, cands, refs) if args.check else {}
    stats, run_errors = measure(cands, args.repeat, args.target_time, args.warmup_time,
                                  args.gap_ms / 1e3)
    errors = {**build_errors, **run_errors}

    # the copy floor: fastest copy that ran
    copies = {k: v for k, v in stats.items() if k.startswith("copy:")}
    copy_key = min(copies, key=lambda k: copies[k]["us"]) if copies else None
    copy_us = copies[copy_key]["us"] if copy_key else None
    copy_impl = copy_key.split(":", 1)[1] if copy_key else ""
    if copy_key and len(copies) > 1:
        copy_impl += " (" + ", ".join(f"{k.split(':', 1)[1]} {v['us']:.1f}us" for k, v in copies.items()) + ")"
    xbytes = case.x.nbytes
    dims_s = "x".join(map(str, case.dims))

    def base_row(pass_name):
        return {"shape": case.shape_name, "dims": dims_s, "groups": case.groups, "layout": case.layout,
                "dtype": str(args_dtype_name(case.dtype)), "pass": pass_name, "threads": case.threads,
                "copy_us": _r(copy_us, 2), "copy_gbps": _r(2 * xbytes / (copy_us * 1e3), 2) if copy_us else None,
                "copy_impl": copy_impl, "isa": isa}

    for p in args.passes:
        row = base_row(p)
        ours = stats.get(f"ours:{p}")
        missing, row_notes = [], []
        if ours:
            us = ours["us"]
            row.update(median_us=_r(us, 2), min_us=_r(ours["min_us"], 2), gbps=_r(BYTES_PER_X[p] * xbytes / (us * 1e3), 2),
                       spread_pct=_r(ours["spread_pct"], 1), samples=ours["samples"],
                       calls_per_sample=ours["inner"])
            if copy_us:
                row["x_copy"] = _r(us / copy_us, 3)
                row["x_copy_bytes"] = _r(us / (copy_us * BYTES_PER_X[p] / 2), 3)
        elif f"ours:{p}" in errors and with_ours:
            missing.append(f"ours: {errors[f'ours:{p}']}")
        for peer in P.PEER_NAMES:
            key = f"{peer}:{p}"
            if P.PEERS[peer].get(p) is None or peer not in args.peers:
                continue
            st = stats.get(key)
            if st:
                row[f"{peer}_us"] = _r(st["us"], 2)
                if copy_us:
                    row[f"{peer}_x_copy"] = _r(st["us"] / copy_us, 3)
                if ours:
                    row[f"vs_{peer}"] = _r(st["us"] / ours["us"], 3)
                if key in notes:
                    row_notes.append(f"{peer}: {notes[key]}")
            else:
                missing.append(f"{peer}: {errors.get(key, 'no result')}")
        bad = [f"{k.split(':')[0]}: {v}" for k, v in checks.items() if k.endswith(f":{p}") and v != "ok"]
        row["check"] = ("WRONG " + " | ".join(bad)) if bad else (
            "ok" if any(k.endswith(f":{p}") for k in checks) else "")
        row["missing"] = " | ".join(missing)
        row["notes"] = " | ".join(row_notes)
        rows.append(row)
        printer.row(row)

    if case.shape_name == "tiny" and with_ours:
        for k in ("call_alloc",):
            st = stats.get(f"ours:{k}")
            row = base_row(k)
            if st:
                row.update(median_us=_r(st["us"], 3), spread_pct=_r(st["spread_pct"], 1),
                           samples=st["samples"], calls_per_sample=st["inner"])
            else:
                row["missing"] = f"ours: {errors.get(f'ours:{k}', 'no result')}"
            row["notes"] = ("us per Python call of group_norm(x, G, channels_last=.., num_threads=t): "
                            "no weight/bias, allocates y (the fwd row is the call with w, b, out=y)")
            rows.append(row)
            printer.row(row)
    del cands
    gc.collect()


def detect_peers(wanted):
    avail, why = {}, {}
    versions = P.peer_versions()
    for p in wanted:
        if versions.get(p):
            avail[p] = versions[p]
        else:
            why[p] = "not installed (" + versions.get(p + "_error", "import failed") + ")"
    avail["_why"] = why
    return avail, versions


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    args = parse_args(argv)
    if args.explain:
        import explain
        return explain.run_explain(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import groupnorm as gn
        isa = gn.active_isa()
    except Exception as e:  # noqa: BLE001 - still run the copies/peers, say why ours is missing
        print(f"warning: groupnorm is not importable ({_reason(e)}); timing only copies and peers",
              file=sys.stderr)
        gn, isa = None, ""
        args.gn_error = f"groupnorm not importable ({_reason(e)})"
    peers_avail, versions = detect_peers(args.peers)
    meta = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_name(), "cpus": all_threads(), "isa": isa,
        "groupnorm": getattr(gn, "__version__", "?") if gn else "not importable",
        "python": platform.python_version(), "numpy": np.__version__,
        **{k: v for k, v in versions.items() if not k.endswith("_error")},
        "quick": args.quick, "repeat": args.repeat, "target_time": args.target_time,
    }
    print("groupnorm benchmark: " + ", ".join(f"{k}={v}" for k, v in meta.items()))
    for p, why in peers_avail["_why"].items():
        print(f"peer {p}: {why}")
    print("us = median per call; x_copy = us / copy us (copy of x with the same threads; "
          "floor 1.0 fwd, 1.5 bwd); vs_* = peer us / our us (>1: we are faster)\n")

    rows = []
    t_start = time.perf_counter()
    if args.child_rows or (args.same_process and not args.isolate):
        run_all(args, gn, peers_avail, isa, rows)
    else:
        run_isolated(args, rows)
    print(f"\n{len(rows)} rows in {time.perf_counter() - t_start:.1f} s")
    if args.child_rows:
        return 0

    write_csv(out / "results.csv", rows)
    summary = make_summary(rows, meta, args)
    (out / "summary.md").write_text(summary)
    written = [out / "results.csv", out / "summary.md"]
    if not args.no_plot:
        try:
            make_plot(rows, out / "results.png", meta, args)
            written.append(out / "results.png")
        except Exception as e:  # noqa: BLE001
            print(f"plot failed: {_reason(e)}", file=sys.stderr)
    print("\n" + summary)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def run_all(args, gn, peers_avail, isa, rows):
    rng = np.random.default_rng(args.seed)
    printer = Printer()
    sink = open(args.child_rows, "a") if args.child_rows else None
    partial = None if sink else Path(args.out) / "results.partial.csv"
    for shape_name in args.shapes:
        dims, groups = SHAPES[shape_name]
        for dtype_name in args.dtypes:
            dtype = np_dtype(dtype_name)
            for layout in args.layouts:
                x, gy, w, b = make_data(dims, layout, dtype, rng)
                refs = {}  # float64 reference outputs, shared by the thread counts
                for t in args.threads:
                    case = P.Case(shape_name, dims, groups, layout, dtype, t, x, w, b, gy)
                    n0 = len(rows)
                    try:
                        run_config(args, gn, case, peers_avail, isa, rows, printer, refs)
                    except Exception as e:  # noqa: BLE001 - one bad case never ends the run
                        print(f"{shape_name} {layout} {dtype_name} threads={t}: failed: {_reason(e)}",
                              file=sys.stderr)
                        traceback.print_exc()
                    if sink:  # rows reach the parent even if a later case kills this process
                        for r in rows[n0:]:
                            sink.write(json.dumps(r) + "\n")
                        sink.flush()
                    else:     # so does a partial CSV for a plain run
                        write_csv(partial, rows)
                del x, gy, w, b, refs
                gc.collect()
    if sink:
        sink.close()
    elif partial.exists():
        partial.unlink()


def run_isolated(args, rows):
    """Child processes: one per timed group (ours, each peer) -- or all in one with --same-process --
    and, with --isolate, one per (shape, dtype, layout) too, so a crash (e.g. a segfault in a kernel
    or a peer) loses only what that child had not yet measured, and is reported as missing."""
    import subprocess
    import tempfile
    passthrough = ["--threads", ",".join(map(str, args.threads)), "--passes", ",".join(args.passes),
                   "--repeat", str(args.repeat),
                   "--target-time", str(args.target_time), "--gap-ms", str(args.gap_ms),
                   "--seed", str(args.seed), "--no-plot"]
    if args.quick:
        passthrough.append("--quick")
    if not args.check:
        passthrough.append("--no-check")
    groups = [None] if args.same_process else ["ours"] + list(args.peers)
    if args.isolate:
        units = [([s], [d], [lo]) for s in args.shapes for d in args.dtypes for lo in args.layouts]
    else:
        units = [(args.shapes, args.dtypes, args.layouts)]
    by_group = {}
    with tempfile.TemporaryDirectory() as tmp:
        for group in groups:
            peers = args.peers if group is None else ([] if group == "ours" else [group])
            if group is not None:
                print(f"\n== {PEER_LABEL.get(group, group)} (own process{'es' if args.isolate else ''})")
            got_all = by_group.setdefault(group, [])
            for k, (shapes, dtypes, layouts) in enumerate(units):
                sink = Path(tmp) / f"{group}-{k}.jsonl"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--shapes", ",".join(shapes),
                       "--dtypes", ",".join(dtypes), "--layouts", ",".join(layouts), "--out", tmp,
                       "--peers", ",".join(peers) or "none", "--child-rows", str(sink)] + passthrough
                if group is not None:
                    cmd += ["--only", group]
                rc = subprocess.call(cmd)
                got = [json.loads(line) for line in sink.read_text().splitlines()] if sink.exists() else []
                got_all.extend(got)
                if rc != 0:
                    why = f"process died ({'signal ' + str(-rc) if rc < 0 else 'exit ' + str(rc)})"
                    print(f"{group or 'all'} {shapes} {layouts} {dtypes}: {why}; the rows it had not written "
                          "are reported as missing", file=sys.stderr)
                    have = {(r["shape"], r["dtype"], r["layout"], r["threads"], r["pass"]) for r in got}
                    for shape_name in shapes:
                        dims, g = SHAPES[shape_name]
                        for dtype_name in dtypes:
                            for layout in layouts:
                                for t in args.threads:
                                    for p in args.passes:
                                        if (shape_name, dtype_name, layout, t, p) not in have:
                                            got_all.append({
                                                "shape": shape_name, "dims": "x".join(map(str, dims)),
                                                "groups": g, "layout": layout, "dtype": dtype_name,
                                                "pass": p, "threads": t,
                                                "missing": f"{group or 'all'}: {why} while measuring this "
                                                           "configuration (rerun it alone to see which call)"})
    if args.same_process:
        rows.extend(by_group[None])
    else:
        rows.extend(merge_group_rows(by_group.pop("ours", []), by_group))


def merge_group_rows(base_rows, by_peer):
    """Our rows, with each peer's figures (measured in its own process) added: <peer>_us and
    <peer>_x_copy from the peer's process, vs_<peer> = <peer>_x_copy / our x_copy (each against
    the copy floor measured in its own process, so a slower or faster phase of the machine
    cancels out)."""
    key = lambda r: (r["shape"], r["layout"], r["dtype"], r["threads"], r["pass"])  # noqa: E731
    base = {key(r): r for r in base_rows}
    out = list(base_rows)
    for peer, prs in by_peer.items():
        for pr in prs:
            r = base.get(key(pr))
            if r is None:  # ours did not produce this row: keep the peer's alone
                r = {k: pr.get(k) for k in ("shape", "dims", "groups", "layout", "dtype", "pass", "threads",
                                             "copy_us", "copy_gbps", "copy_impl", "isa")}
                r["missing"] = "ours: no row"
                base[key(pr)] = r
                out.append(r)
            for f in (f"{peer}_us", f"{peer}_x_copy"):
                if pr.get(f) is not None:
                    r[f] = pr[f]
            if r.get(f"{peer}_x_copy") is not None and r.get("x_copy"):
                r[f"vs_{peer}"] = _r(r[f"{peer}_x_copy"] / r["x_copy"], 3)
            for f, sep in (("missing", " | "), ("notes", " | ")):
                if pr.get(f):
                    r[f] = (r.get(f) + sep if r.get(f) else "") + pr[f]
            if (pr.get("check") or "").startswith("WRONG"):
                bad = pr["check"][len("WRONG "):]
                r["check"] = (r["check"] + " | " + bad) if (r.get("check") or "").startswith("WRONG") \
                    else "WRONG " + bad
    return out


if __name__ == "__main__":
    sys.exit(main())
