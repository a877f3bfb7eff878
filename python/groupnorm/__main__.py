"""python -m groupnorm [demo|bench|info] [--version]

  demo   (the default) normalizes a Stable-Diffusion-sized activation in both
         layouts, checks it against float64 NumPy, and prints the speed as a
         ratio to a same-size copy timed in the same run (or says the machine
         was too busy to time).
  bench  times your shapes against a same-size copy and, when PyTorch is
         installed, torch.nn.functional.group_norm (optionally plots them).
  info   version, instruction set, threads, OpenMP runtime, caches, worker pool.
"""
import argparse
import importlib.metadata
import os
import re
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import NDArray

import groupnorm
from groupnorm import _core
from groupnorm._timing import interleaved_times, median_time, speed_verdict  # noqa: F401 (re-exported)

PROG = "python -m groupnorm"
COMMANDS = ("demo", "bench", "info")


def reference(x: NDArray[Any], num_groups: int, weight: NDArray[Any], bias: NDArray[Any], eps: float,
              channels_last: bool) -> NDArray[np.float64]:
    """float64 NumPy group norm, written independently of the library."""
    x = x.astype(np.float64)
    if channels_last:
        x = np.moveaxis(x, -1, 1)
    n, c = x.shape[:2]
    xg = x.reshape(n, num_groups, -1)
    mean = xg.mean(-1, keepdims=True)
    var = ((xg - mean) ** 2).mean(-1, keepdims=True)
    y = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    y = y * weight.reshape(shape) + bias.reshape(shape)
    return np.moveaxis(y, 1, -1) if channels_last else y


def _shape(text: str) -> Tuple[int, ...]:
    """argparse type: 'N,C,*spatial' -> a tuple of positive ints."""
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be comma-separated integers N,C,*spatial, got {text!r}")
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape needs N,C and optional spatial sizes, all >= 1, got {text!r}")
    return shape


def _check_groups(ap: argparse.ArgumentParser, shapes: Sequence[Tuple[int, ...]], groups: int) -> None:
    if groups < 1:
        ap.error(f"--groups must be >= 1, got {groups}")
    for s in shapes:
        if s[1] % groups:
            ap.error(f"num_channels {s[1]} (shape {','.join(map(str, s))}) is not divisible by --groups {groups}")


# --------------------------------------------------------------------------- demo

def demo(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    shape: Tuple[int, ...] = args.shape
    _check_groups(ap, [shape], args.groups)
    rng = np.random.default_rng(0)
    c = shape[1]
    weight = rng.standard_normal(c).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    print(f"groupnorm {groupnorm.__version__}: isa={groupnorm.active_isa()} threads={groupnorm.get_num_threads()}")
    ok = True
    for channels_last in (False, True):
        x = (1e4 + rng.standard_normal(shape)).astype(np.float32)  # a large offset, on purpose
        if channels_last:
            x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        y = groupnorm.group_norm(x, args.groups, weight, bias, channels_last=channels_last)
        err = float(np.abs(y - reference(x, args.groups, weight, bias, 1e-5, channels_last)).max())
        out = np.empty_like(x)
        t_gns, t_copies = interleaved_times(
            [lambda: groupnorm.group_norm(x, args.groups, weight, bias, channels_last=channels_last, out=out),
             lambda: _core.parallel_copy(out, x)])
        t_gn = float(np.median(t_gns))
        gbps = 2 * x.nbytes / t_gn / 1e9
        _, speed = speed_verdict(t_gns, t_copies)
        layout = "channels-last " if channels_last else "channels-first"
        print(f"{layout} x{x.shape} float32 (mean 1e4): max |err| vs float64 "
              f"{err:.2e}; {t_gn * 1e6:8.1f} us, {gbps:5.1f} GB/s, {speed}")
        ok &= err < 5e-3
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


# --------------------------------------------------------------------------- bench

def _progress(done: int, total: int, label: str) -> None:
    if not sys.stderr.isatty() and done not in (0, total):
        return
    width = 30
    fill = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} {label:<40}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _torch_group_norm(shape: Tuple[int, ...], dtype: np.dtype[Any], channels_last: bool,
                      groups: int) -> Optional[Callable[[], object]]:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    tdt = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
           np.dtype(np.float16): torch.float16}.get(dtype, torch.bfloat16)
    torch.set_num_threads(groupnorm.get_num_threads())
    x = torch.randn(shape, dtype=tdt)
    if channels_last and len(shape) in (4, 5):
        x = x.contiguous(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
    w = torch.randn(shape[1], dtype=tdt)
    b = torch.randn(shape[1], dtype=tdt)

    def run() -> object:
        with torch.no_grad():
            return F.group_norm(x, groups, w, b, 1e-5)
    return run


def bench(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    shapes: List[Tuple[int, ...]] = args.shape or [(2, 320, 64, 64), (1, 512, 128, 128), (8, 128, 32, 32)]
    _check_groups(ap, shapes, args.groups)
    dtype = np.dtype(groupnorm.bfloat16 if args.dtype == "bfloat16" else args.dtype)
    if args.threads:
        groupnorm.set_num_threads(args.threads)
    layouts = [False, True] if args.layout == "both" else [args.layout == "channels-last"]
    cases = [(s, cl) for s in shapes for cl in layouts]
    rows: List[Dict[str, Any]] = []
    torch_seen = False
    print(f"groupnorm {groupnorm.__version__}: isa={groupnorm.active_isa()} threads={groupnorm.get_num_threads()} "
          f"dtype={dtype} groups={args.groups}; each case {args.rounds} interleaved rounds")
    _progress(0, len(cases), "")
    for k, (shape, cl) in enumerate(cases):
        rng = np.random.default_rng(k)
        x = rng.standard_normal(shape).astype(dtype)
        if cl:
            x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        w = rng.standard_normal(shape[1]).astype(np.float32)
        b = rng.standard_normal(shape[1]).astype(np.float32)
        out = np.empty_like(x)
        fns: List[Callable[[], object]] = [
            lambda: groupnorm.group_norm(x, args.groups, w, b, channels_last=cl, out=out),
            lambda: _core.parallel_copy(out, x)]
        tfn = None if args.no_torch else _torch_group_norm(shape, dtype, cl, args.groups)
        if tfn is not None:
            fns.append(tfn)
            torch_seen = True
        times = interleaved_times(fns, rounds=args.rounds, seconds=args.seconds)
        t_gn = float(np.median(times[0]))
        ratio, verdict = speed_verdict(times[0], times[1])
        rows.append({"shape": shape, "layout": "channels-last" if cl else "channels-first", "us": t_gn * 1e6,
                     "gbps": 2 * x.nbytes / t_gn / 1e9, "copy_ratio": ratio, "verdict": verdict,
                     "torch_us": float(np.median(times[2])) * 1e6 if tfn is not None else None})
        _progress(k + 1, len(cases), f"{','.join(map(str, shape))} {rows[-1]['layout']}")
    head = f"{'shape':<18} {'layout':<15} {'groupnorm us':>12} {'GB/s':>6} {'vs copy':>8}"
    if torch_seen:
        head += f" {'torch us':>10} {'speedup':>8}"
    print(head)
    busy = False
    for r in rows:
        line = (f"{','.join(map(str, r['shape'])):<18} {r['layout']:<15} {r['us']:12.1f} {r['gbps']:6.1f} "
                f"{(format(r['copy_ratio'], '7.2f') + 'x') if r['copy_ratio'] is not None else '   busy'}")
        busy |= r["copy_ratio"] is None
        if r["torch_us"] is not None:
            line += f" {r['torch_us']:10.1f} {r['torch_us'] / r['us']:7.2f}x"
        print(line)
    print("vs copy: groupnorm's time / a same-size multi-threaded copy's (1.0 is the memory floor);"
          + (" speedup: torch's time / groupnorm's." if torch_seen else " (PyTorch not installed: no torch column)"))
    if busy:
        print("busy: the machine was too busy to time those cases against a copy; rerun on an idle machine")
    if args.plot:
        _plot(rows, args.plot)
        print(f"plot: {args.plot}")
    return 0


def _plot(rows: List[Dict[str, Any]], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(f"{PROG} bench: --plot needs matplotlib (pip install matplotlib)")
    labels = [f"{','.join(map(str, r['shape']))}\n{r['layout']}" for r in rows]
    pos = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows)), 4))
    ax.bar(pos - 0.2, [r["us"] for r in rows], 0.4, label="groupnorm")
    if any(r["torch_us"] is not None for r in rows):
        ax.bar(pos + 0.2, [r["torch_us"] or 0 for r in rows], 0.4, label="torch")
    ax.set_xticks(pos, labels, fontsize=7)
    ax.set_ylabel("microseconds (median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------- info

def openmp_runtime() -> str:
    """The OpenMP runtime libraries mapped in this process (Linux), or a note."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if len(line.split()) >= 6}
    except OSError:
        return "unknown (no /proc/self/maps)"
    libs = sorted({os.path.realpath(p) for p in paths if re.search(r"/lib(gomp|iomp5|omp)[-.][^/]*so", p)})
    return ", ".join(libs) if libs else "none loaded"


def _cache_sizes() -> str:
    """The caches the kernels' schedules are planned for, and where each was read (the core's own view:
    CPUID, then sysfs, then sysconf), with the per-thread budget at the default thread count."""
    c = _core.cache_sizes()
    found = ", ".join(f"{name} {c[key] >> 10} KiB ({c[key + '_source']})"
                      for name, key in (("L1d", "l1d"), ("L2", "l2"), ("L3", "l3")) if c[key] > 0)
    budget = _core.cache_budget(groupnorm.get_num_threads()) >> 10
    forced = " (GROUPNORM_CACHE_BYTES)" if c["forced_budget"] else ""
    return f"{found or 'unknown'}; budget per thread {budget} KiB{forced}"


def info(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "not installed"
    cache = groupnorm.buffer_cache_info()
    rows = [
        ("version", groupnorm.__version__),
        ("package", os.path.dirname(groupnorm.__file__)),
        ("instruction set", f"{groupnorm.active_isa()} (available: {', '.join(groupnorm.available_isas())})"),
        ("threads", f"{groupnorm.get_num_threads()} (cap {_core.max_threads()}; os.cpu_count {os.cpu_count()})"),
        ("OpenMP runtime", openmp_runtime()),
        ("worker pool", "on" if groupnorm.worker_pool() else "off (OpenMP regions)"),
        ("CPU caches", _cache_sizes()),
        ("buffer cache", f"{cache['cached_bytes']} of {cache['limit_bytes']} bytes held"),
        ("CUDA backend", "built" if _core.HAS_CUDA else "not built"),
        ("torch", torch_version),
    ]
    for k, v in rows:
        print(f"{k + ':':<17}{v}")
    return 0


# --------------------------------------------------------------------------- entry

def parser() -> Tuple[argparse.ArgumentParser, Dict[str, argparse.ArgumentParser]]:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"groupnorm {groupnorm.__version__}")
    sub = ap.add_subparsers(dest="command", metavar="{demo,bench,info}")
    d = sub.add_parser("demo", help="check and time one shape (the default)")
    d.add_argument("--shape", type=_shape, default=(2, 320, 64, 64),
                   help="N,C,*spatial (default: 2,320,64,64, a Stable Diffusion UNet block)")
    d.add_argument("--groups", type=int, default=32, help="number of groups (default 32)")
    b = sub.add_parser("bench", help="time your shapes against a copy and PyTorch",
                       description="Times groupnorm on your shapes against a same-size multi-threaded copy "
                       "(the memory floor) and torch.nn.functional.group_norm when PyTorch is installed: "
                       "interleaved rounds, medians. For the full benchmark see bench/run.py.")
    b.add_argument("--shape", type=_shape, action="append",
                   help="N,C,*spatial; repeat for several (default: three UNet/VAE shapes)")
    b.add_argument("--groups", type=int, default=32, help="number of groups (default 32)")
    b.add_argument("--dtype", choices=["float32", "float64", "float16", "bfloat16"], default="float32")
    b.add_argument("--layout", choices=["channels-first", "channels-last", "both"], default="both")
    b.add_argument("--threads", type=int, default=0, help="threads (default: groupnorm's default)")
    b.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case (default 5)")
    b.add_argument("--seconds", type=float, default=0.5, help="timing budget per case (default 0.5)")
    b.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when installed")
    b.add_argument("--plot", metavar="FILE.png", help="also save a bar chart (needs matplotlib)")
    i = sub.add_parser("info", help="version, ISA, threads, OpenMP runtime, caches, worker pool")
    return ap, {"demo": d, "bench": b, "info": i}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    # the demo is the default command: `python -m groupnorm --shape ...` runs it
    if not args_in or (args_in[0] not in COMMANDS and args_in[0] not in ("-h", "--help", "--version")):
        args_in.insert(0, "demo")
    ap, subs = parser()
    args = ap.parse_args(args_in)
    run: Dict[str, Callable[[argparse.ArgumentParser, argparse.Namespace], int]] = {
        "demo": demo, "bench": bench, "info": info}
    return run[args.command](subs[args.command], args)


if __name__ == "__main__":
    raise SystemExit(main())
