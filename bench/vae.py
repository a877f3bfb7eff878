"""The Stable Diffusion VAE decoder with PyTorch's GroupNorm and with groupnorm's.

diffusers' AutoencoderKL is built from the SD 1.x VAE config by hand (no
download) with seeded random weights, and decodes (1, 4, 32, 32) and
(1, 4, 64, 64) latents on the CPU in float32, channels-first and channels-last.
Stock and swapped (groupnorm.torch.replace_group_norm) decodes alternate in
one process (the swap is undone by restoring the module class), so both see
the same machine state. For every configuration it reports:

  - end-to-end decode time (median of the repeats),
  - GroupNorm's time inside the model (torch.profiler, in the same decodes:
    aten::group_norm for stock, groupnorm::group_norm for the swap),
  - the standalone time of the same GroupNorm calls (same shapes, layouts and
    parameters, random data, called back to back outside the model),
  - the max abs difference between the decoded images.

    python bench/vae.py [--sizes 32 64] [--repeats 5] [--out bench/results/vae.md]

Each (size, layout) runs in its own process so the results of one do not
depend on the allocator or thread state left by another.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def build_vae():
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
        act_fn="silu", sample_size=512, scaling_factor=0.18215,
    )
    # seeded random weights: the default init leaves norms at 1/0; randomize those too
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, torch.nn.GroupNorm) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return vae.eval()


def decoder(vae):
    """The VAE's decode as a module of its own: latent z -> image (for exporters and runtimes that
    take a module whose forward returns a tensor)."""
    import torch

    class Decoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, z):
            return self.vae.decode(z).sample

    return Decoder(vae)


def swappers(model):
    """(stock, ours): functions that set every torch.nn.GroupNorm of model to torch's class or to
    groupnorm.torch.GroupNorm, so both run in one process on the same modules and parameters."""
    import torch
    import groupnorm.torch as gnt

    gns = [m for m in model.modules() if type(m) is torch.nn.GroupNorm]

    def stock():
        for m in gns:
            m.__class__ = torch.nn.GroupNorm

    def ours():
        for m in gns:
            m.__class__ = gnt.GroupNorm
            m.activation = None

    return stock, ours


def gn_calls(vae, z):
    """(shape, strides, num_groups, eps, weight, bias) of every GroupNorm call of one decode."""
    import torch

    calls = []

    def hook(m, inputs, output):
        x = inputs[0]
        calls.append((tuple(x.shape), x.stride(), m.num_groups, m.eps, m.weight, m.bias))

    hs = [m.register_forward_hook(hook) for m in vae.decoder.modules() if isinstance(m, torch.nn.GroupNorm)]
    with torch.no_grad():
        vae.decode(z)
    for h in hs:
        h.remove()
    return calls


def timed_decode(vae, z, op_names):
    """(wall time, GroupNorm's total time inside the decode) of one decode under torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        vae.decode(z)
        wall = time.perf_counter() - t
    gn = sum(e.cpu_time_total for e in prof.key_averages() if e.key in op_names) * 1e-6
    return wall, gn


def standalone(calls, fns, repeats):
    """For each of fns: median over repeats of the time of all the calls back to back
    (the harness's timing loop: the fns interleaved, each sample one pass over the calls)."""
    import torch

    from harness import measure

    inputs = []
    for shape, stride, g, eps, w, b in calls:
        x = torch.empty_strided(shape, stride)
        x.normal_()
        inputs.append((x, g, w, b, eps))

    def all_calls(fn):
        def run():
            for x, g, w, b, eps in inputs:
                fn(x, g, w, b, eps)
        return run

    with torch.no_grad():
        stats, errors = measure({k: all_calls(fn) for k, fn in enumerate(fns)}, repeat=repeats, target_s=0,
                                warmup_s=0, calls_per_sample=1)
    if errors:
        raise RuntimeError(f"failed: {errors}")
    return [stats[k]["us"] / 1e6 for k in range(len(fns))]


def run_config(size, channels_last, repeats, threads):
    import torch
    import torch.nn.functional as F
    import groupnorm.torch as gnt

    if threads:
        torch.set_num_threads(threads)

    vae = build_vae()
    z = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(1))
    if channels_last:
        vae = vae.to(memory_format=torch.channels_last)
        z = z.contiguous(memory_format=torch.channels_last)
    stock, ours = swappers(vae)

    calls = gn_calls(vae, z)
    with torch.no_grad():
        stock()
        img_stock = vae.decode(z).sample
        ours()
        img_ours = vae.decode(z).sample
    diff = (img_stock - img_ours).abs().max().item()
    ops = {"stock": {"aten::group_norm"}, "ours": {"groupnorm::group_norm"}}
    times = {"stock": [], "ours": []}
    prof = {"stock": [], "ours": []}
    order = [("stock", stock), ("ours", ours)]
    for r in range(repeats):  # alternate which goes first
        for name, setup in (order if r % 2 == 0 else order[::-1]):
            setup()
            wall, gn = timed_decode(vae, z, ops[name])
            times[name].append(wall)
            prof[name].append(gn)
    alone_stock, alone_ours = standalone(calls, [lambda x, g, w, b, e: F.group_norm(x, g, w, b, e),
                                                 lambda x, g, w, b, e: gnt.group_norm(x, g, w, b, e)],
                                         max(repeats, 5))
    return {
        "loadavg_1min_end": os.getloadavg()[0],
        "gn_in_model_stock_all": prof["stock"], "gn_in_model_ours_all": prof["ours"],
        "size": size, "layout": "channels_last" if channels_last else "contiguous",
        "threads": torch.get_num_threads(), "gn_calls": len(calls),
        "decode_stock": statistics.median(times["stock"]), "decode_ours": statistics.median(times["ours"]),
        "decode_stock_all": times["stock"], "decode_ours_all": times["ours"],
        "gn_in_model_stock": statistics.median(prof["stock"]), "gn_in_model_ours": statistics.median(prof["ours"]),
        "gn_alone_stock": alone_stock, "gn_alone_ours": alone_ours, "max_abs_diff": diff,
    }


def table(results):
    lines = [
        "| latent | layout | decode stock (s) | decode groupnorm (s) | end-to-end gain | GN in model stock (s) "
        "| GN in model groupnorm (s) | GN standalone groupnorm (s) | in-model / standalone | stock / groupnorm GN "
        "| max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| 1x4x{r['size']}x{r['size']} | {r['layout']} | {r['decode_stock']:.3f} | {r['decode_ours']:.3f} "
            f"| {100 * (r['decode_stock'] / r['decode_ours'] - 1):+.1f}% | {r['gn_in_model_stock']:.4f} "
            f"| {r['gn_in_model_ours']:.4f} | {r['gn_alone_ours']:.4f} "
            f"| {r['gn_in_model_ours'] / r['gn_alone_ours']:.2f}x | {r['gn_in_model_stock'] / r['gn_in_model_ours']:.1f}x "
            f"| {r['max_abs_diff']:.2e} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--layouts", nargs="+", default=["contiguous", "channels_last"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--out", default=os.path.join("bench-results", "vae.md"),
                    help="markdown file to write (default ./bench-results/vae.md; the committed results are in bench/results/, pass --out bench/results/vae.md to replace them)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = ap.parse_args()
    if args.one:
        size, layout = args.one.split(",")
        print(json.dumps(run_config(int(size), layout == "channels_last", args.repeats, args.threads)))
        return
    results = []
    for size in args.sizes:
        for layout in args.layouts:
            out = subprocess.run([sys.executable, __file__, "--one", f"{size},{layout}", "--repeats",
                                  str(args.repeats), "--threads", str(args.threads)],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(json.dumps(r), flush=True)
            results.append(r)
    import torch
    import platform
    text = (f"# Stable Diffusion VAE decode: torch GroupNorm vs groupnorm\n\n"
            f"`python bench/vae.py --repeats {args.repeats} --threads {args.threads}`; torch {torch.__version__}, "
            f"{results[0]['threads']} threads, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); "
            f"times are medians, stock and groupnorm decodes alternate in one process per configuration.\n\n"
            + table(results) + "\n\nRaw decode times (s):\n\n```\n"
            + "\n".join(f"{r['size']} {r['layout']}: stock {['%.3f' % t for t in r['decode_stock_all']]} "
                        f"groupnorm {['%.3f' % t for t in r['decode_ours_all']]}; GN in model stock "
                        f"{['%.3f' % t for t in r['gn_in_model_stock_all']]} groupnorm "
                        f"{['%.3f' % t for t in r['gn_in_model_ours_all']]}; GN standalone stock "
                        f"{r['gn_alone_stock']:.4f} s; load average at the end {r['loadavg_1min_end']:.1f}"
                        for r in results) + "\n```\n")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
