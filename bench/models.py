"""Real models where GroupNorm matters: stock torch GroupNorm vs groupnorm's, in one process.

Models (random weights, built locally, no download):
  - MONAI SegResNet (3D segmentation; init_filters 16, 8 groups), inputs (1, 1, D, D, D) for
    D in --volumes (default 96 and 128): forward, and a training step (forward + backward of a
    mean-squared loss).
  - the Stable Diffusion VAE decoder (bench/vae.py's model), latents (1, 4, L, L) for L in
    --latents: forward (decode).
Both memory formats (contiguous, channels_last / channels_last_3d) and each of --threads.

Stock and swapped (``groupnorm.torch.replace_group_norm``; undone by restoring the module class)
runs alternate inside one process per configuration, so both see the same machine state. Per
configuration it reports:
  - the whole step's time (median of --repeats unprofiled runs),
  - GroupNorm's time inside the step (torch.profiler, separate profiled runs: forward and backward
    GroupNorm ops, stock ``aten::native_group_norm(_backward)`` vs ``groupnorm::*``),
  - GroupNorm's share of the stock step and what the swap saved, against that share,
  - the max abs difference of the outputs (and of the input gradient for the training step).

    python bench/models.py [--models segresnet vae] [--repeats 5] [--out bench/results/models.md]

Each configuration runs in its own process (--one, internal).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STOCK_OPS = {"aten::native_group_norm", "aten::native_group_norm_backward"}
OURS_OPS = {"groupnorm::group_norm", "groupnorm::group_norm_backward"}


def build(model, size, channels_last):
    """(module, input, is_3d) with seeded random weights."""
    import torch

    torch.manual_seed(0)
    if model == "segresnet":
        from monai.networks.nets import SegResNet

        net = SegResNet(spatial_dims=3, in_channels=1, out_channels=2, init_filters=16)
        x = torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(1))
        fmt = torch.channels_last_3d
    else:
        sys.path.insert(0, HERE)
        from vae import build_vae

        vae = build_vae()
        net = vae.decoder
        x = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(1))
        fmt = torch.channels_last
    with torch.no_grad():  # affine parameters away from 1/0 so they matter
        for m in net.modules():
            if isinstance(m, torch.nn.GroupNorm) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    if channels_last:
        net = net.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
    return net, x


def step_fn(net, x, train):
    import torch

    if not train:
        def forward():
            with torch.no_grad():
                out = net(x)
            return out, None
        return forward

    xg = x.detach().clone().requires_grad_()

    def train_step():
        net.zero_grad(set_to_none=True)
        xg.grad = None
        out = net(xg)
        out.float().pow(2).mean().backward()
        return out.detach(), xg.grad.detach().clone()
    return train_step


def run_config(model, size, layout, mode, threads, repeats):
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    net, x = build(model, size, layout == "channels_last")
    if mode == "train":
        net.train()
    else:
        net.eval()
    gns = [m for m in net.modules() if type(m) is torch.nn.GroupNorm]
    sys.path.insert(0, HERE)
    from vae import swappers

    stock, ours = swappers(net)

    step = step_fn(net, x, mode == "train")
    variants = [("stock", stock), ("ours", ours)]
    outputs = {}
    for name, setup in variants:  # warm up, and the outputs to compare
        setup()
        step()
        outputs[name] = step()
    diff = (outputs["stock"][0].float() - outputs["ours"][0].float()).abs().max().item()
    gdiff = None
    if mode == "train":
        gdiff = (outputs["stock"][1] - outputs["ours"][1]).abs().max().item()
    times = {"stock": [], "ours": []}
    for r in range(repeats):  # interleaved, alternating which goes first
        for name, setup in (variants if r % 2 == 0 else variants[::-1]):
            setup()
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    gn_time = {"stock": [], "ours": []}
    ops = {"stock": STOCK_OPS, "ours": OURS_OPS}
    for r in range(2):
        for name, setup in (variants if r % 2 == 0 else variants[::-1]):
            setup()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            gn_time[name].append(sum(e.cpu_time_total for e in prof.key_averages() if e.key in ops[name]) * 1e-6)
    stock()
    return {
        "model": model, "size": size, "layout": layout, "mode": mode, "threads": torch.get_num_threads(),
        "gn_modules": len(gns),
        "step_stock": statistics.median(times["stock"]), "step_ours": statistics.median(times["ours"]),
        "step_stock_all": times["stock"], "step_ours_all": times["ours"],
        "gn_stock": min(gn_time["stock"]), "gn_ours": min(gn_time["ours"]),
        "max_abs_diff": diff, "max_abs_grad_diff": gdiff, "loadavg_end": os.getloadavg()[0],
    }


def table(results):
    lines = ["| model | input | layout | step | threads | step stock (s) | step groupnorm (s) | step gain "
             "| GN in step stock (s) | GN in step groupnorm (s) | GN stock / groupnorm | GN share of stock step "
             "| saved / GN share | max abs diff (out; grad x) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        dims = f"{r['size']}^3" if r["model"] == "segresnet" else f"4x{r['size']}x{r['size']}"
        share = r["gn_stock"] / r["step_stock"]
        saved = (r["step_stock"] - r["step_ours"]) / r["step_stock"]
        g = "" if r["max_abs_grad_diff"] is None else f"; {r['max_abs_grad_diff']:.1e}"
        lines.append(
            f"| {r['model']} | {dims} | {r['layout']} | {r['mode']} | {r['threads']} | {r['step_stock']:.3f} "
            f"| {r['step_ours']:.3f} | {100 * (r['step_stock'] / r['step_ours'] - 1):+.1f}% | {r['gn_stock']:.3f} "
            f"| {r['gn_ours']:.3f} | {r['gn_stock'] / max(r['gn_ours'], 1e-9):.1f}x | {100 * share:.1f}% "
            f"| {saved / share:.2f} | {r['max_abs_diff']:.1e}{g} |")
    return "\n".join(lines)


def configs(args):
    for model in args.models:
        sizes = args.volumes if model == "segresnet" else args.latents
        modes = ["forward", "train"] if model == "segresnet" else ["forward"]
        for size in sizes:
            for mode in modes:
                for layout in args.layouts:
                    for threads in args.threads:
                        yield model, size, layout, mode, threads


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["segresnet", "vae"], choices=["segresnet", "vae"])
    ap.add_argument("--volumes", type=int, nargs="+", default=[96, 128])
    ap.add_argument("--latents", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--layouts", nargs="+", default=["contiguous", "channels_last"],
                    choices=["contiguous", "channels_last"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.one:
        model, size, layout, mode, threads = args.one.split(",")
        print(json.dumps(run_config(model, int(size), layout, mode, int(threads), args.repeats)))
        return
    results = []
    for model, size, layout, mode, threads in configs(args):
        one = ",".join(map(str, (model, size, layout, mode, threads)))
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", one, "--repeats", str(args.repeats)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"configuration {one} failed:\n{p.stderr}")
        r = json.loads(p.stdout.strip().splitlines()[-1])
        print(json.dumps(r), flush=True)
        results.append(r)
    import torch
    cmd = "python bench/models.py " + " ".join(sys.argv[1:])
    text = (f"# GroupNorm in real models: stock torch vs groupnorm\n\n`{cmd}`; torch {torch.__version__}, "
            f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}). Step times are medians of "
            f"{args.repeats} interleaved runs; GroupNorm's time comes from separate profiled runs (the best of 2); "
            "'saved / GN share' is the step time the swap saved as a fraction of GroupNorm's share of the stock "
            "step (1.0: the whole share saved).\n\n" + table(results) + "\n\nRaw step times (s) and load:\n\n```\n"
            + "\n".join(f"{r['model']} {r['size']} {r['layout']} {r['mode']} t={r['threads']}: stock "
                        f"{['%.3f' % t for t in r['step_stock_all']]} groupnorm "
                        f"{['%.3f' % t for t in r['step_ours_all']]}; load {r['loadavg_end']:.1f}"
                        for r in results) + "\n```\n")
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
