"""ExecuTorch programs with the runtime's portable GroupNorm and with groupnorm's kernels.

Two models, lowered once to .pte files with their convolutions delegated to XNNPACK (as an edge
deployment would; GroupNorm is not an XNNPACK operator, so it runs on the CPU kernels):

  - the Stable Diffusion VAE decoder (diffusers AutoencoderKL, SD 1.x config, seeded random
    weights, built as in bench/vae.py) on a (1, 4, L, L) latent (--latent, default 16),
  - a ResNet-GN basic block (conv3x3 -> GN -> ReLU -> conv3x3 -> GN, + x, ReLU) on
    (1, 256, 56, 56), contiguous and channels-last.

Every program runs in three configurations, each in its own process, at 1 and 2 threads
(ExecuTorch's thread pool, which XNNPACK and our kernels share):

  - portable: the stock program (aten::native_group_norm.out) on the runtime's own kernel,
  - ours: the same .pte with libgroupnorm_executorch.so loaded (our specialized
    aten::native_group_norm.out kernels serve the calls),
  - ours+fused: the model lowered with groupnorm.executorch.lower (groupnorm::group_norm.out,
    the following SiLU fused into the kernel).

Times come from ExecuTorch's own profiler (ETDump): the whole Method::execute and every
GroupNorm event (the portable "native_call_native_group_norm.out", our
"groupnorm::native_group_norm.out" / "groupnorm::group_norm.out"), medians over the repeats;
the event names also confirm which kernel served the calls. Output difference: max abs
difference from eager PyTorch (float32) on the same input.

    python bench/executorch.py [--latent 16] [--repeats 5] [--out bench/results/executorch.md]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# this file is bench/executorch.py: keep its folder off the import path, or `import executorch`
# would import this script instead of the ExecuTorch package
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

GN_EVENTS = {"native_call_native_group_norm.out", "groupnorm::native_group_norm.out", "groupnorm::group_norm.out"}


def build_models(latent):
    import importlib.util

    import torch
    spec = importlib.util.spec_from_file_location("gn_bench_vae", os.path.join(_HERE, "vae.py"))
    vae_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vae_mod)
    build_vae, Decoder = vae_mod.build_vae, vae_mod.decoder

    class ResNetGNBlock(torch.nn.Module):
        def __init__(self, c=256, groups=32):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.gn1 = torch.nn.GroupNorm(groups, c)
            self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.gn2 = torch.nn.GroupNorm(groups, c)
            with torch.no_grad():
                for gn in (self.gn1, self.gn2):
                    gn.weight.uniform_(0.5, 1.5)
                    gn.bias.uniform_(-0.2, 0.2)

        def forward(self, x):
            h = torch.relu(self.gn1(self.conv1(x)))
            return torch.relu(self.gn2(self.conv2(h)) + x)

    torch.manual_seed(0)
    z = torch.randn(1, 4, latent, latent)
    x = torch.randn(1, 256, 56, 56)
    block = ResNetGNBlock().eval()
    return [
        (f"vae_decoder 1x4x{latent}x{latent}", "contiguous", Decoder(build_vae()).eval(), z),
        ("resnet_gn_block 1x256x56x56", "contiguous", block, x),
        ("resnet_gn_block 1x256x56x56", "channels_last", block, x.to(memory_format=torch.channels_last)),
    ]


def lower_all(latent, workdir):
    """Lower every program (stock and groupnorm op) and save inputs and eager outputs."""
    import torch
    import groupnorm.executorch as gne

    programs = []
    for i, (name, layout, model, inp) in enumerate(build_models(latent)):
        with torch.no_grad():
            ref = model(inp)
        base = os.path.join(workdir, f"p{i}")
        torch.save({"input": inp, "ref": ref}, base + ".io.pt")
        t = time.perf_counter()
        gne.lower(model, (inp,), base + ".stock.pte", swap_group_norm=False, xnnpack=True)
        gne.lower(model, (inp,), base + ".groupnorm.pte", swap_group_norm=True, xnnpack=True)
        print(f"lowered {name} {layout} in {time.perf_counter() - t:.0f} s", flush=True)
        programs.append({"name": name, "layout": layout, "base": base})
    return programs


def run_one(base, kernel, threads, repeats):
    """One configuration in this process: ETDump medians and the output difference."""
    import torch
    import groupnorm.executorch as gne
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    if kernel != "portable":
        gne.load_kernels()
    gne.set_num_threads(threads)
    io = torch.load(base + ".io.pt")
    pte = base + (".groupnorm.pte" if kernel == "ours+fused" else ".stock.pte")
    prog = Runtime.get().load_program(pte, enable_etdump=True)
    method = prog.load_method("forward")
    (out,) = method.execute((io["input"],))  # warm-up (not profiled separately: dropped below)
    for _ in range(repeats):
        (out,) = method.execute((io["input"],))
    with tempfile.TemporaryDirectory() as d:
        prog.write_etdump_result_to_file(os.path.join(d, "run.etdp"), os.path.join(d, "debug.bin"))
        ins = Inspector(etdump_path=os.path.join(d, "run.etdp"))
    total, gn_runs, gn_names, calls = None, None, set(), 0
    for block in ins.event_blocks:
        for ev in block.events:
            if ev.perf_data is None:
                continue
            raw = list(ev.perf_data.raw)[1:]  # drop the warm-up
            if ev.name == "Method::execute":
                total = raw
            elif ev.name in GN_EVENTS:
                gn_names.add(ev.name)
                calls += 1
                gn_runs = raw if gn_runs is None else [a + b for a, b in zip(gn_runs, raw)]
    served = gne.calls() if kernel != "portable" else {}
    return {
        "total_runs": total,
        "gn_runs": gn_runs,
        "gn_calls": calls,
        "gn_events": sorted(gn_names),
        "served": served,
        "threads": gne.get_num_threads() if kernel != "portable" else threads,
        "max_abs_diff": float((out - io["ref"]).abs().max()),
    }


def fmt_ms(v):
    return f"{v / 1e3:.2f} s" if v >= 1e3 else f"{v:.1f} ms" if v >= 1 else f"{v * 1e3:.0f} us"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latent", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=2, help="processes per configuration, interleaved")
    ap.add_argument("--out", default=os.path.join("bench-results", "executorch.md"),
                    help="markdown file to write (default ./bench-results/executorch.md; the committed results are in bench/results/, pass --out bench/results/executorch.md to replace them)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--one", nargs=4, metavar=("BASE", "KERNEL", "THREADS", "REPEATS"), help=argparse.SUPPRESS)
    ap.add_argument("--lower", nargs=2, metavar=("LATENT", "WORKDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.lower:
        print("PROGRAMS " + json.dumps(lower_all(int(args.lower[0]), args.lower[1])))
        return
    if args.one:
        base, kernel, threads, repeats = args.one
        print("RESULT " + json.dumps(run_one(base, kernel, int(threads), int(repeats))))
        return

    workdir = args.workdir or tempfile.mkdtemp(prefix="gn-et-bench-")
    os.makedirs(workdir, exist_ok=True)
    load = [os.getloadavg()[0]]
    saved = os.path.join(workdir, "programs.json")
    if os.path.exists(saved):  # --workdir of an earlier run: reuse its programs
        with open(saved) as f:
            programs = json.load(f)
    else:
        programs = _lower(args, workdir)
        with open(saved, "w") as f:
            json.dump(programs, f)
    kernels = ["portable", "ours", "ours+fused"]
    rows = []
    for prog in programs:
        for threads in [int(t) for t in args.threads.split(",")]:
            res = {}
            for rnd in range(args.rounds):
                for kernel in kernels:  # interleaved: every kernel at this thread count, back to back
                    if "error" in res.get(kernel, {}):
                        continue
                    r = _run_child(prog, kernel, threads, args.repeats)
                    if "error" in r:
                        res[kernel] = r
                    elif kernel not in res:
                        res[kernel] = r
                    else:  # pool the runs of every round
                        res[kernel]["total_runs"] += r["total_runs"]
                        res[kernel]["gn_runs"] += r["gn_runs"]
                        res[kernel]["max_abs_diff"] = max(res[kernel]["max_abs_diff"], r["max_abs_diff"])
            for kernel, r in res.items():
                if "error" in r:
                    print(f"{prog['name']} {prog['layout']} {kernel} {threads}t: FAILED {r['error']}", flush=True)
                    continue
                r["total_ms"] = statistics.median(r["total_runs"])
                r["gn_ms"] = statistics.median(r["gn_runs"])
                print(f"{prog['name']} {prog['layout']} {kernel} {threads}t: total {fmt_ms(r['total_ms'])}, "
                      f"GN {fmt_ms(r['gn_ms'])} in {r['gn_calls']} calls ({', '.join(r['gn_events'])}), "
                      f"diff {r['max_abs_diff']:.1e}", flush=True)
            rows.append((prog, threads, res))
            load.append(os.getloadavg()[0])
    write_report(args, rows, load)


def _run_child(prog, kernel, threads, repeats):
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", prog["base"], kernel,
                        str(threads), str(repeats)], capture_output=True, text=True)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not line:
        err = [ln for ln in (p.stdout + p.stderr).splitlines() if "Error" in ln or "failed" in ln]
        return {"error": err[-1] if err else f"exit status {p.returncode}"}
    return json.loads(line[0][7:])


def _lower(args, workdir):
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--lower", str(args.latent), workdir],
                       capture_output=True, text=True)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("PROGRAMS ")]
    if p.returncode or not line:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
        raise SystemExit("lowering failed")
    print("\n".join(ln for ln in p.stdout.splitlines() if ln.startswith("lowered")), flush=True)
    return json.loads(line[0][9:])


def write_report(args, rows, load):
    lines = [
        "# ExecuTorch: the portable GroupNorm vs groupnorm's kernels",
        "",
        "`python bench/executorch.py --latent %d --repeats %d --rounds %d` (ExecuTorch 1.5.1, convolutions "
        "delegated to XNNPACK, float32). Times from ExecuTorch's profiler (ETDump): medians of %d runs "
        "(%d processes per configuration of %d runs each after a warm-up; the three kernels' processes "
        "interleaved at each thread count). **The machine was shared**: 2 cores with other jobs running "
        "(load average %s during the run), so absolute times are noisy; compare within a row group." % (
            args.latent, args.repeats, args.rounds, args.rounds * args.repeats, args.rounds, args.repeats,
            "-".join(f"{v:.1f}" for v in (min(load), max(load)))),
        "",
        "- portable: the stock program on the runtime's `native_group_norm.out` (scalar, "
        "E[x^2]-E[x]^2 in float);",
        "- ours: the same `.pte` with `libgroupnorm_executorch.so` loaded (our specialized "
        "`aten::native_group_norm.out` kernels served every call: event `groupnorm::native_group_norm.out`);",
        "- ours+fused: lowered with `groupnorm.executorch.lower` (`groupnorm::group_norm.out`, SiLU fused "
        "into the kernel where one follows).",
        "",
        "| program | layout | threads | kernel | program time | GroupNorm time | GN share | GN calls | "
        "time per GN call | GN speedup vs portable | program vs portable | max abs diff vs eager |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for prog, threads, res in rows:
        base = res["portable"]
        for kernel, r in res.items():
            head = f"| {prog['name']} | {prog['layout']} | {threads} | {kernel} |"
            if "error" in r:
                lines.append(head + f" fails: {r['error'][:120]} |" + " |" * 7)
                continue
            ok = "error" not in base
            gn_x = f"{base['gn_ms'] / r['gn_ms']:.2f}x" if ok else "n/a"
            total_x = f"{base['total_ms'] / r['total_ms']:.2f}x" if ok else "n/a"
            lines.append(
                head + f" {fmt_ms(r['total_ms'])} | {fmt_ms(r['gn_ms'])} | {100 * r['gn_ms'] / r['total_ms']:.1f}% | "
                f"{r['gn_calls']} | {fmt_ms(r['gn_ms'] / max(r['gn_calls'], 1))} | {gn_x} | {total_x} | "
                f"{r['max_abs_diff']:.1e} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
