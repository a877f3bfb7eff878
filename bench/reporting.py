"""Benchmark reporting: the console table, the CSV, the markdown summary and the plot."""
from __future__ import annotations

import csv
import sys

import numpy as np

import peers as P
from harness import CSV_FIELDS, PASSES, PEER_LABEL, SHAPES, TARGET_RATIO, args_dtype_name  # noqa: F401

def fmt_ratio(v):
    return "-" if v is None else f"{v:.2f}"


def fmt_num(v, nd=1):
    if v is None:
        return ""
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _r(v, nd):
    return None if v is None else round(float(v), nd)


class Printer:
    COLS = [("shape", 9), ("layout", 3), ("dtype", 8), ("thr", 3), ("pass", 10), ("us", 10), ("GB/s", 7),
            ("x_copy", 6), ("copy_us", 9), ("vs_torch", 8), ("vs_ov", 6), ("vs_ort", 6), ("vs_ncnn", 7),
            ("vs_ncpk", 7), ("±%", 5)]

    def __init__(self):
        self.n = 0

    def header(self):
        line = " ".join(f"{n:>{w}}" for n, w in self.COLS)
        print(line)
        print("-" * len(line))
        sys.stdout.flush()

    def row(self, r):
        if self.n % 25 == 0:
            self.header()
        self.n += 1
        vals = [r["shape"], r["layout"], r["dtype"], r["threads"], r["pass"],
                fmt_num(r.get("median_us"), 2), fmt_num(r.get("gbps"), 1), fmt_ratio(r.get("x_copy")),
                fmt_num(r.get("copy_us"), 1), fmt_ratio(r.get("vs_torch")), fmt_ratio(r.get("vs_openvino")),
                fmt_ratio(r.get("vs_onnxruntime")), fmt_ratio(r.get("vs_ncnn")), fmt_ratio(r.get("vs_ncnn_packed")),
                fmt_num(r.get("spread_pct"), 0)]
        print(" ".join(f"{str(v):>{w}}" for v, (_, w) in zip(vals, self.COLS)))
        if r.get("missing"):
            print(f"{'':>12}missing: {r['missing']}")
        if (r.get("check") or "").startswith("WRONG"):
            print(f"{'':>12}check: {r['check']}")
        sys.stdout.flush()


# ---------------------------------------------------------------------------------------- outputs

def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})


def _pick(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def _main_dtype(args):
    return "float32" if "float32" in args.dtypes else args.dtypes[0]


def make_summary(rows, meta, args):
    dt = _main_dtype(args)
    lines = ["# groupnorm benchmark", ""]
    lines.append(f"{meta['cpu']}, {meta['cpus']} CPUs, ISA {meta['isa']}; {meta['date']}; "
                 + ", ".join(f"{k} {meta[k]}" for k in ("groupnorm", "torch", "openvino", "onnxruntime", "ncnn")
                             if meta.get(k))
                 + ("; **--quick run (short, noisy measurements)**" if args.quick else ""))
    lines.append("")
    lines.append(f"Time divided by the time of the fastest same-size copy of x with at most the same threads "
                 f"(a split copy waits for its slowest thread: on a busy machine one thread copies faster), {dt}, "
                 f"median of {args.repeat} interleaved samples. Forward: 1.0 is the memory floor, "
                 f"the target is {TARGET_RATIO}. Backward reads x and grad_y and writes grad_x, so its "
                 "floor is 1.5. Lower is better. OpenVINO and ONNX Runtime channels-last rows run "
                 "Transpose -> GroupNormalization -> Transpose (they have no channels-last GroupNorm). "
                 "\"allocating / out=\": time of `y = group_norm(x, ...)` (a new array every call) over the "
                 "`out=` call's (target 1.15); \"in place\": `out=x`, time / copy time (target 1.0 where "
                 "a group fits in L2). "
                 "ncnn runs one sample per call (no batch): its net takes channels-first data only; "
                 "\"ncnn packed in place\" is its layer alone on data already in its own packed layout "
                 "(shown on both layouts' rows). "
                 + ("Ours and each peer ran in separate processes, each against its own copy floor."
                    if not args.same_process else "Everything ran in one process."))
    have_peer = {p: any(r.get(f"{p}_us") is not None for r in rows) for p in P.PEER_NAMES}
    for t in sorted({r["threads"] for r in rows}, reverse=True):
        fwd = {(r["shape"], r["layout"]): r for r in _pick(rows, dtype=dt, threads=t) if r["pass"] == "fwd"}
        bwd = {(r["shape"], r["layout"]): r for r in _pick(rows, dtype=dt, threads=t) if r["pass"] == "bwd"}
        silu = {(r["shape"], r["layout"]): r for r in _pick(rows, dtype=dt, threads=t) if r["pass"] == "silu"}
        alloc = {(r["shape"], r["layout"]): r for r in _pick(rows, dtype=dt, threads=t) if r["pass"] == "fwd_alloc"}
        inpl = {(r["shape"], r["layout"]): r for r in _pick(rows, dtype=dt, threads=t)
                if r["pass"] == "fwd_inplace"}
        keys = list(dict.fromkeys(list(fwd) + list(bwd)))
        if not keys:
            continue
        lines += ["", f"### {t} thread{'s' if t > 1 else ''}" + (" (all)" if t == meta["cpus"] else ""), ""]
        head = ["shape", "layout", "copy us", "fwd ours"]
        head += [f"fwd {PEER_LABEL[p]}" for p in P.PEER_NAMES if have_peer[p]]
        if alloc:
            head += ["fwd ours, allocating / out="]
        if inpl:
            head += ["fwd ours in place"]
        if silu:
            head += ["fwd+silu ours"] + (["fwd+silu PyTorch"] if have_peer["torch"] else [])
        if bwd:
            head += ["bwd ours"] + (["bwd PyTorch"] if have_peer["torch"] else [])
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
        for key in keys:
            f, b, s = fwd.get(key, {}), bwd.get(key, {}), silu.get(key, {})
            any_row = f or b or s
            dims = any_row.get("dims", "")
            cells = [f"{key[0]} ({dims} G{any_row.get('groups', '')})", key[1], fmt_num(any_row.get("copy_us"), 1),
                     _cell(f.get("x_copy"), bold=True)]
            cells += [_cell(f.get(f"{p}_x_copy"), missing=bool(f)) for p in P.PEER_NAMES if have_peer[p]]
            if alloc:
                al = alloc.get(key, {})
                cells += [_cell(al["x_copy"] / f["x_copy"]) if al.get("x_copy") and f.get("x_copy") else ""]
            if inpl:
                cells += [_cell(inpl.get(key, {}).get("x_copy"), bold=True)]
            if silu:
                cells += [_cell(s.get("x_copy"), bold=True)]
                cells += [_cell(s.get("torch_x_copy"), missing=bool(s))] if have_peer["torch"] else []
            if bwd:
                cells += [_cell(b.get("x_copy"), bold=True)]
                cells += [_cell(b.get("torch_x_copy"), missing=bool(b))] if have_peer["torch"] else []
            lines.append("| " + " | ".join(cells) + " |")
    tiny = {}
    for r in rows:
        if r["shape"] == "tiny" and r["pass"] in ("fwd", "call_alloc"):
            tiny.setdefault((r["layout"], r["dtype"], r["threads"]), {})[r["pass"]] = r.get("median_us")
    if tiny:
        lines += ["", "### Python call cost, tiny (1x64x8x8, G8), target < 3 us", "",
                  "| layout | dtype | threads | `group_norm(x, 8, w, b, eps, out=y, num_threads=t)` us "
                  "| `group_norm(x, 8, num_threads=t)` us |",
                  "|---|---|---:|---:|---:|"]
        for (layout, dtype, t), v in tiny.items():
            if v.get("fwd") is None and v.get("call_alloc") is None:
                continue
            lines.append(f"| {layout} | {dtype} | {t} | {_cell(v.get('fwd'), bold=True)} | {_cell(v.get('call_alloc'))} |")
    missing = sorted({m for r in rows for m in (r.get("missing") or "").split(" | ") if m})
    if missing:
        lines += ["", "### Missing measurements", ""]
        lines += [f"- {m}" for m in _collapse_missing(rows)]
    lines.append("")
    return "\n".join(lines)


def _collapse_missing(rows):
    """'peer: reason' -> which (shape/layout/dtype/pass) rows it hit, compactly."""
    by = {}
    for r in rows:
        for m in (r.get("missing") or "").split(" | "):
            if not m:
                continue
            by.setdefault(m, set()).add(f"{r['shape']}/{r['layout']}/{r['dtype']}/{r['pass']}")
    out = []
    for m, where in sorted(by.items()):
        where = sorted(where)
        w = ", ".join(where[:6]) + (f" and {len(where) - 6} more" if len(where) > 6 else "")
        out.append(f"{m} ({w})")
    return out


def _cell(v, bold=False, missing=False):
    if v is None:
        return "missing" if missing else ""
    s = f"{v:.2f}"
    return f"**{s}**" if bold else s


def make_plot(rows, path, meta, args):
    """Grouped bars of time / copy time per shape: one panel per (pass, layout) row and thread count
    column; forward on top (target line at 1.25), backward below (ours vs PyTorch)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    dt = _main_dtype(args)
    sel = [r for r in rows if r["dtype"] == dt and r["pass"] in ("fwd", "bwd")]
    row_keys = [(p, lo) for p in ("fwd", "bwd") for lo in args.layouts
                if any(r["pass"] == p and r["layout"] == lo for r in sel)]
    if not row_keys:
        raise RuntimeError(f"nothing to plot for {dt} fwd/bwd")
    threads = [t for t in args.threads if any(r["threads"] == t for r in sel)]
    shapes = [s for s in args.shapes if any(r["shape"] == s for r in sel)]
    ncols, nrows = len(threads), len(row_keys)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(6.0, 1.05 * len(shapes) + 1.5) * ncols, 3.6 * nrows + 0.9),
                             squeeze=False)
    colors = {"ours": "#d62728", "torch": "#1f77b4", "openvino": "#9467bd", "onnxruntime": "#2ca02c",
              "ncnn": "#ff7f0e", "ncnn_packed": "#8c564b"}
    ymax, ymin, handles = 1.0, 1.0, {}
    for i, (p, layout) in enumerate(row_keys):
        for j, t in enumerate(threads):
            ax = axes[i][j]
            cell = {r["shape"]: r for r in sel if r["pass"] == p and r["layout"] == layout and r["threads"] == t}
            series = ["ours"] + [pe for pe in P.PEER_NAMES if P.PEERS[pe].get(p) and pe in args.peers]
            series = [s for s in series if any(_ratio(r, s) is not None for r in cell.values())] or ["ours"]
            width = 0.8 / len(series)
            xs = np.arange(len(shapes))
            for k, s in enumerate(series):
                vals = [_ratio(cell[sh], s) if sh in cell else None for sh in shapes]
                pos = xs - 0.4 + width * (k + 0.5)
                bars = ax.bar(pos, [min(v or 0, CLIP) for v in vals], width, color=colors[s],
                              edgecolor="white", linewidth=0.5)
                handles.setdefault(PEER_LABEL[s], bars)
                for bar, v in zip(bars, vals):
                    cx = bar.get_x() + bar.get_width() / 2
                    if v is None:
                        ax.text(cx, 0.03, "n/a", rotation=90, ha="center", va="bottom", fontsize=7,
                                color="gray", transform=ax.get_xaxis_transform())
                    elif v > CLIP:  # off the chart: say how far
                        ax.text(cx, CLIP * 0.93, f"{v:.0f}", rotation=90, ha="center", va="top", fontsize=7,
                                color="white", fontweight="bold")
                    elif s == "ours":
                        ax.text(cx, v * 1.04, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
                good = [v for v in vals if v is not None and v > 0]
                ymax = max(ymax, min(CLIP, max(good, default=1.0)))
                ymin = min(ymin, min(good, default=1.0))
            if p == "fwd":
                h = ax.axhline(TARGET_RATIO, color="black", ls="--", lw=1)
                handles.setdefault(f"target: {TARGET_RATIO}x copy (forward)", h)
            else:
                h = ax.axhline(1.5, color="black", ls=":", lw=1)
                handles.setdefault("1.5x copy: backward's bytes floor", h)
            ax.axhline(1.0, color="gray", lw=0.8)
            ax.set_xticks(xs)
            ax.set_xticklabels(shapes, rotation=20, ha="right", fontsize=9)
            ax.set_title(f"{'forward' if p == 'fwd' else 'backward'}, "
                         f"{'channels-first (cf)' if layout == 'cf' else 'channels-last (cl)'}, "
                         f"{t} thread{'s' if t > 1 else ''}", fontsize=10)
            if j == 0:
                ax.set_ylabel("time / copy time\n(lower is better)", fontsize=9)
            ax.grid(axis="y", which="major", alpha=0.3)
    log = ymax > 8
    for ax in axes.flat:
        if log:
            ax.set_yscale("log")
            ax.set_ylim(min(0.5, ymin * 0.7), ymax * (1.1 if ymax >= CLIP else 1.8))
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        else:
            ax.set_ylim(0, ymax * 1.15)
    fig.suptitle(f"groupnorm vs a same-size copy and peers, {dt}: median time / copy time "
                 f"({meta['cpu']}, {meta['cpus']} CPUs, ISA {meta['isa']})"
                 f"{'  [--quick]' if args.quick else ''}", fontsize=11)
    fig.legend(list(handles.values()), list(handles.keys()), loc="upper center", ncol=min(6, len(handles)),
               fontsize=9, frameon=False, bbox_to_anchor=(0.5, 1 - 0.35 / fig.get_figheight()))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.8 / fig.get_figheight()))
    fig.savefig(path, dpi=100)
    plt.close(fig)


CLIP = 50.0  # bars above this ratio are cut at the top of the chart and labelled with their value


def _ratio(row, series):
    return row.get("x_copy") if series == "ours" else row.get(f"{series}_x_copy")

