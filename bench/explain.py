"""Where a call's time goes: ``bench/run.py --explain``.

For each (shape, layout, dtype, threads) it times every phase of the forward
and the backward on its own, through the split-phase entry points, next to the
memory floor of the bytes that phase moves, all in interleaved rounds of the
harness's ``measure`` (medians), in one process:

  phase              moves (x's bytes)          floor: a pass moving the same bytes
  moments            read x               1x    read x
  apply              read x, write y      2x    copy x
  forward, one call  read x, write y      2x    copy x
  backward sums      read x, grad_y       2x    read x and grad_y
  dx                 read x, grad_y,      3x    copy x, read grad_y
                     write grad_x
  backward, one call as dx                3x    copy x, read grad_y

and two sums: moments + apply and backward sums + dx, the phases run one
after the other (as the split-phase API runs them), against the sum of their
floors. ``share`` is a row's time over its direction's one-call time.

The floors are measured, not derived: ``_core.parallel_copy`` (memcpy per
thread) and ``_core.parallel_read`` (every byte loaded once, and the copy plus
read for dx), each with the row's threads and with one thread, the faster
taken (a split pass waits for its slowest thread; on a busy machine one thread
can be faster), as bench/run.py takes its copy floor.

The phases call the core entry points the public split-phase API calls
(``groupnorm.moments`` -> ``_core.moments``, ``group_norm(..., stats=)`` ->
``_core.forward_given``, ``groupnorm.backward_sums`` -> ``_core.backward_sums``,
``group_norm_backward(..., sums=)`` -> ``_core.backward_given``; the one calls
``_core.forward`` and ``_core.backward``) with every output preallocated and the
Python argument checks done once before timing, so a phase's time is the core's
and not the wrapper's; before timing, each is checked to give the bits the
public API gives, and the split phases the one call's. ``schedule`` is the walk
each call took (``_core.last_schedule()``: name / threads, "nt" for
non-temporal stores).
"""
from __future__ import annotations

import csv
import sys

import numpy as np

import groupnorm as gn
from groupnorm import _checks as checks
from groupnorm import _core

from harness import SHAPES, _reason, args_dtype_name, make_data, measure, np_dtype

# (key, label, direction, bytes moved in units of x.nbytes, floor key)
PHASES = [
    ("moments", "moments", "fwd", 1, "read_x"),
    ("apply", "apply", "fwd", 2, "copy_x"),
    ("moments+apply", "moments + apply", "fwd", 3, "read_x+copy_x"),
    ("forward", "forward, one call", "fwd", 2, "copy_x"),
    ("backward_sums", "backward sums", "bwd", 2, "read_x_gy"),
    ("dx", "dx", "bwd", 3, "copy_x_read_gy"),
    ("sums+dx", "backward sums + dx", "bwd", 5, "read_x_gy+copy_x_read_gy"),
    ("backward", "backward, one call", "bwd", 3, "copy_x_read_gy"),
]
ONE_CALL = {"fwd": "forward", "bwd": "backward"}
FLOORS = {"read_x": "read x", "copy_x": "copy x", "read_x_gy": "read x, grad_y",
          "copy_x_read_gy": "copy x, read grad_y"}
NOISY_PCT = 25  # a case whose samples spread more than this is flagged
CSV_FIELDS = ["shape", "dims", "groups", "layout", "dtype", "threads", "phase", "us", "floor_us", "ratio", "bytes",
              "share", "floor", "schedule", "schedule_threads", "streaming_stores", "spread_pct", "floor_impl",
              "isa"]


def _mb(n):
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def _us(v):
    return f"{v:9.2f}" if v < 10 else f"{v:9.1f}"


def cache_line():
    """What the plan found: cache sizes, their sources, the per-thread budget."""
    c = _core.cache_sizes()
    parts = [f"{k.upper() if k != 'l1d' else 'L1d'} {_mb(c[k])} ({c[k + '_source']})" for k in ("l1d", "l2", "l3")
             if c.get(k)]
    forced = c.get("forced_budget") or 0
    return ("cache sizes: " + ", ".join(parts)
            + ("; GROUPNORM_CACHE_BYTES=" + str(forced) if forced else ""))


def _schedule():
    name, threads, nt = _core.last_schedule()
    return name, threads, bool(nt)


def _bytes_view(a):
    return a.view(np.uint8).reshape(-1)


class Phases:
    """The timed calls of one case, their outputs preallocated."""

    def __init__(self, x, gy, w, b, groups, channels_last, threads, eps=1e-5):
        self.x, self.gy, self.groups, self.cl, self.t, self.eps = x, gy, groups, channels_last, threads, eps
        c = checks.channels_of(x, channels_last)
        self.n, self.c = x.shape[0], c
        self.spatial = checks.geometry(x.shape, channels_last)[2]
        self.w, self.b, self.pcode = checks.weight_bias(w, b, x.dtype, c)
        self.dcode = checks.DTYPE_CODES[x.dtype]
        sd = checks.stats_dtype(x.dtype)
        n, g = self.n, groups
        self.y = checks.empty_aligned(x.shape, x.dtype)
        self.y1 = checks.empty_aligned(x.shape, x.dtype)
        self.gx = checks.empty_aligned(x.shape, x.dtype)
        self.gx1 = checks.empty_aligned(x.shape, x.dtype)
        self.mean, self.rstd = np.empty((n, g), sd), np.empty((n, g), sd)
        self.count, self.gmean, self.gm2 = np.empty((n, g), np.int64), np.empty((n, g)), np.empty((n, g))
        self.sum_dz, self.sum_dz_xc = np.empty((n, c)), np.empty((n, c))
        pw = None if self.w is None else np.empty(c, self.w.dtype)
        self.gw, self.gb = pw, None if self.b is None else np.empty(c, self.b.dtype)
        self.gw1 = None if self.w is None else np.empty(c, self.w.dtype)
        self.gb1 = None if self.b is None else np.empty(c, self.b.dtype)
        # the statistics the backward phases take: the forward's
        self.forward()

    # positional on purpose, in the binding's order (_core.pyi): keyword matching costs ~1.5 us a call
    def moments(self):
        _core.moments(self.x, self.groups, self.cl, self.dcode, self.pcode, None, None, self.count, self.gmean,
                      self.gm2, self.t)

    def apply(self):
        _core.forward_given(self.x, self.groups, self.w, self.b, self.eps, self.cl, 0, self.dcode, self.pcode, self.y,
                            None, None, None, None, None, self.count, self.gmean, self.gm2, None, None, self.t)

    def forward(self):
        _core.forward(self.x, self.groups, self.w, self.b, self.eps, self.cl, 0, self.dcode, self.pcode, self.y1,
                      self.mean, self.rstd, None, None, None, self.t)

    def backward_sums(self):
        _core.backward_sums(self.gy, self.x, self.mean, self.rstd, self.groups, self.w, self.b, self.cl, 0,
                            self.dcode, self.pcode, self.sum_dz, self.sum_dz_xc, self.t)

    def dx(self):
        _core.backward_given(self.gy, self.x, self.mean, self.rstd, self.groups, self.w, self.b, self.cl, 0,
                             self.dcode, self.pcode, self.gx, self.gw, self.gb, self.sum_dz, self.sum_dz_xc,
                             self.spatial, self.t)

    def backward(self):
        _core.backward(self.gy, self.x, self.mean, self.rstd, self.groups, self.w, self.b, self.cl, 0, self.dcode,
                       self.pcode, self.gx1, self.gw1, self.gb1, self.t)

    def calls(self):
        return {"moments": self.moments, "apply": self.apply, "forward": self.forward,
                "backward_sums": self.backward_sums, "dx": self.dx, "backward": self.backward}

    def check(self, w, b):
        """Runs every phase once; returns ({key: schedule}, [problems]): the phases' outputs against the public
        API's (the same bits) and the split phases' against the one call's."""
        sched, bad = {}, []
        for key, fn in self.calls().items():
            fn()
            sched[key] = _schedule()

        def same(a, ref, what):
            if a is None and ref is None:
                return
            if not np.array_equal(_bytes_view(np.ascontiguousarray(a)), _bytes_view(np.ascontiguousarray(ref))):
                bad.append(what)

        x, g, cl, t = self.x, self.groups, self.cl, self.t
        m = gn.moments(x, g, channels_last=cl, num_threads=t)
        same(self.count, m.count, "moments: count differs from groupnorm.moments")
        same(self.gmean, m.mean, "moments: mean differs from groupnorm.moments")
        same(self.gm2, m.m2, "moments: m2 differs from groupnorm.moments")
        y, mean, rstd = gn.group_norm(x, g, w, b, self.eps, channels_last=cl, return_stats=True, num_threads=t)
        same(self.y1, y, "forward: y differs from group_norm")
        same(self.mean, mean, "forward: mean differs from group_norm")
        same(self.rstd, rstd, "forward: rstd differs from group_norm")
        same(self.y, gn.group_norm(x, g, w, b, self.eps, channels_last=cl, stats=m, num_threads=t),
             "apply: y differs from group_norm(stats=)")
        same(self.y, self.y1, "moments + apply: y differs from the one call's")
        s = gn.backward_sums(self.gy, x, mean, rstd, g, w, b, channels_last=cl, num_threads=t)
        same(self.sum_dz, s.sum_dz, "backward sums: sum_dz differs from groupnorm.backward_sums")
        same(self.sum_dz_xc, s.sum_dz_xc, "backward sums: sum_dz_xc differs from groupnorm.backward_sums")
        ref = gn.group_norm_backward(self.gy, x, mean, rstd, g, w, b, channels_last=cl, num_threads=t, sums=s)
        for name, a, r in zip(("grad_x", "grad_weight", "grad_bias"), (self.gx, self.gw, self.gb), ref):
            same(a, r, f"dx: {name} differs from group_norm_backward(sums=)")
        ref = gn.group_norm_backward(self.gy, x, mean, rstd, g, w, b, channels_last=cl, num_threads=t)
        for name, a, r in zip(("grad_x", "grad_weight", "grad_bias"), (self.gx1, self.gw1, self.gb1), ref):
            same(a, r, f"backward: {name} differs from group_norm_backward")
        for name, a, r in zip(("grad_x", "grad_weight", "grad_bias"), (self.gx, self.gw, self.gb),
                              (self.gx1, self.gw1, self.gb1)):
            same(a, r, f"backward sums + dx: {name} differs from the one call's")
        return sched, bad


def floor_calls(x, gy, threads):
    """{floor key @ threads: fn}: the measured memory floors, with the case's threads and with one."""
    xb, gb = _bytes_view(x), _bytes_view(gy)
    dst = _bytes_view(checks.empty_aligned(x.shape, x.dtype))
    out = {}
    for t in dict.fromkeys((threads, 1)):
        out[f"copy_x@{t}"] = lambda t=t: _core.parallel_copy(dst, xb, t)
        out[f"read_x@{t}"] = lambda t=t: _core.parallel_read((xb,), t)
        out[f"read_x_gy@{t}"] = lambda t=t: _core.parallel_read((xb, gb), t)
        out[f"copy_x_read_gy@{t}"] = lambda t=t: _core.parallel_read((xb, gb), t, dst)
    return out


def explain_case(shape_name, layout, dtype_name, threads, args, rng, isa):
    """Times one case; returns its rows (dicts) and the lines to print."""
    dims, groups = SHAPES[shape_name]
    dtype = np_dtype(dtype_name)
    x, gy, w, b = make_data(dims, layout, dtype, rng)
    ph = Phases(x, gy, w, b, groups, layout == "cl", threads)
    sched, bad = ph.check(w, b)
    calls = ph.calls()
    cands = dict(calls)
    cands["moments+apply"] = lambda: (ph.moments(), ph.apply())
    cands["sums+dx"] = lambda: (ph.backward_sums(), ph.dx())
    cands.update(floor_calls(x, gy, threads))
    stats, errors = measure(cands, args.repeat, args.target_time, args.warmup_time)
    if errors:
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in errors.items()))
    floors, impl = {}, {}
    for key in FLOORS:
        best = min((k for k in stats if k.split("@")[0] == key), key=lambda k: stats[k]["us"])
        floors[key], impl[key] = stats[best]["us"], f"{best.split('@')[1]} thr"
    xbytes = x.nbytes
    dims_s = "x".join(map(str, dims))
    rows = []
    for key, label, direction, nbytes, floor_key in PHASES:
        parts = floor_key.split("+")
        floor_us = sum(floors[p] for p in parts)
        st = stats[key]
        s = sched.get(key)
        rows.append({
            "shape": shape_name, "dims": dims_s, "groups": groups, "layout": layout, "dtype": args_dtype_name(dtype),
            "threads": threads, "phase": key, "label": label, "us": round(st["us"], 3),
            "floor_us": round(floor_us, 3), "ratio": round(st["us"] / floor_us, 3), "bytes": nbytes * xbytes,
            "share": round(st["us"] / stats[ONE_CALL[direction]]["us"], 3),
            "floor": FLOORS[parts[0]] if len(parts) == 1 else "both phases' floors",
            "schedule": s[0] if s else "", "schedule_threads": s[1] if s else "",
            "streaming_stores": s[2] if s else "", "spread_pct": round(st["spread_pct"], 1),
            "floor_impl": " + ".join(dict.fromkeys(impl[p] for p in parts)), "isa": isa})
    lines = [f"\n{shape_name} ({dims_s} G{groups}) {layout} {args_dtype_name(dtype)}, {threads} thread"
             f"{'s' if threads > 1 else ''}: x {_mb(xbytes)}; budget per thread "
             f"{_mb(_core.cache_budget(threads))}"]
    hdr = (f"  {'phase':20} {'us':>9} {'floor us':>9} {'ratio':>6} {'moves':>9} {'share':>6}  "
           f"{'floor (measured pass)':29} {'schedule':18} {'±%':>3}")
    lines += [hdr, "  " + "-" * (len(hdr) - 2)]
    for r in rows:
        sch = (f"{r['schedule']}/{r['schedule_threads']}{' nt' if r['streaming_stores'] else ''}"
               if r["schedule"] else "")
        lines.append(f"  {r['label']:20} {_us(r['us'])} {_us(r['floor_us'])} {r['ratio']:6.2f} "
                     f"{_mb(r['bytes']):>9} {100 * r['share']:5.0f}%  {r['floor'] + ', ' + r['floor_impl']:29} "
                     f"{sch:18} {r['spread_pct']:3.0f}")
    worst = {d: max((r for r, p in zip(rows, PHASES) if p[2] == d and "+" not in p[0]
                     and p[0] != ONE_CALL[d]), key=lambda r: r["ratio"]) for d in ("fwd", "bwd")}
    lines.append("  furthest from its floor: " + "; ".join(
        f"{'forward' if d == 'fwd' else 'backward'} {r['label']} {r['ratio']:.2f}x" for d, r in worst.items()))
    two_pass = {d: next(r for r in rows if r["phase"] == ONE_CALL[d])["us"]
                / next(r for r in rows if r["phase"] == pair)["floor_us"]
                for d, pair in (("fwd", "moments+apply"), ("bwd", "sums+dx"))}
    lines.append(f"  one call against the two-pass floor (its phases' floors added): forward {two_pass['fwd']:.2f}x, "
                 f"backward {two_pass['bwd']:.2f}x (below 1: the call gains from reusing cache between its phases)")
    spread = max(st["spread_pct"] for st in stats.values())
    if spread > NOISY_PCT:
        lines.append(f"  noisy: a spread up to {spread:.0f}% (interquartile range / median, floors included): "
                     "these ratios are not settled; rerun on a quieter machine or with more --repeat")
    for problem in bad:
        lines.append(f"  WRONG {problem}")
    return rows, lines, bad


def run_explain(args):
    """bench/run.py --explain: prints a table per case, writes explain.csv under args.out."""
    from pathlib import Path
    isa = gn.active_isa()
    print(f"groupnorm {gn.__version__}, isa {isa}; {cache_line()}")
    print("us: median per call of interleaved rounds; floor: the same bytes moved by a measured copy/read "
          "pass (the faster of the row's threads and 1); ratio = us / floor us; share = us / the one call's us; "
          "schedule: the walk the call took (name/threads, nt: streaming stores)")
    rng = np.random.default_rng(args.seed)
    rows, failed = [], 0
    for shape_name in args.shapes:
        for dtype_name in args.dtypes:
            for layout in args.layouts:
                for t in args.threads:
                    try:
                        r, lines, bad = explain_case(shape_name, layout, dtype_name, t, args, rng, isa)
                    except Exception as e:  # noqa: BLE001 - one bad case never ends the run
                        print(f"\n{shape_name} {layout} {dtype_name} threads={t}: failed: {_reason(e)}")
                        failed += 1
                        continue
                    failed += bool(bad)
                    rows += r
                    print("\n".join(lines), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "explain.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        wr.writeheader()
        wr.writerows(rows)
    print(f"\nwrote {out / 'explain.csv'}")
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it as: python bench/run.py --explain [--shapes ...]")
