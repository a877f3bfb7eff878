"""The SD VAE decoder exported to ONNX, compiled by OpenVINO with and without groupnorm's extension.

The decoder of diffusers' AutoencoderKL (SD 1.x config, seeded random weights: bench/vae.py's
build_vae) is exported with torch's TorchScript ONNX exporter, its GroupNorms written as
GroupNormalization nodes (the exporter's own translation is InstanceNormalization + Mul + Add):

  - opset 18: GroupNormalization with per-group scale 1 and bias 0, followed by the per-channel
    Mul and Add (per-group parameters cannot hold the model's per-channel weights);
  - opset 21: GroupNormalization with the per-channel scale and bias.

Each (opset, stock or extension) configuration runs in its own process: read the model, compile
it for the CPU (f32 inference precision), time whole decodes (median of the repeats), then compile
it again with PERF_COUNT and sum OpenVINO's per-node counters over one decode: GroupNorm's nodes
(named gn_*: the normalization, and for opset 18 its Mul/Add), the layout reorders and precision
converts the plugin inserts, and everything else. Outputs are compared with PyTorch's float32
decode of the same latent.

    python bench/openvino.py [--latent 32] [--repeats 3] [--out bench/results/openvino.md]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# this file is named openvino.py: its folder must not shadow the openvino package
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]


# ----------------------------------------------------------------------------- export


def export(latent, workdir):
    import numpy as np
    import onnx
    import torch
    from onnx import helper, numpy_helper
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx.symbolic_helper import parse_args

    sys.path.append(HERE)
    from vae import build_vae, gn_calls
    from vae import decoder as Decoder

    vae = build_vae()

    @parse_args("v", "i", "v", "v", "f", "b")
    def group_norm_symbolic(g, x, num_groups, weight, bias, eps, cudnn):
        return g.op("gnbench::GN", x, weight, bias, num_groups_i=num_groups, epsilon_f=eps)

    register_custom_op_symbolic("aten::group_norm", group_norm_symbolic, 18)
    torch.manual_seed(1)
    z = torch.randn(1, 4, latent, latent)
    ranks = [len(c[0]) for c in gn_calls(vae, z)]  # (N, C, H, W), or (N, C, H*W) in the attention block
    with torch.no_grad():
        reference = Decoder(vae)(z).numpy()
    raw = os.path.join(workdir, "raw.onnx")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Decoder(vae).eval(), (z,), raw, opset_version=18, dynamo=False,
                          custom_opsets={"gnbench": 1}, input_names=["z"], output_names=["image"])
    np.save(os.path.join(workdir, "z.npy"), z.numpy())
    np.save(os.path.join(workdir, "reference.npy"), reference)

    base = onnx.load(raw)
    inits = {t.name: t for t in base.graph.initializer}
    consts = {}
    for n in base.graph.node:  # weights the exporter made Constant nodes
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t

    def value(name):
        t = inits.get(name) or consts.get(name)
        return numpy_helper.to_array(t)

    paths = {}
    for opset in (18, 21):
        m = onnx.ModelProto()
        m.CopyFrom(base)
        nodes, new_inits, k = [], [], 0
        for n in m.graph.node:
            if n.domain != "gnbench":
                nodes.append(n)
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            G, eps = attrs["num_groups"], attrs["epsilon"]
            w, b = value(n.input[1]).astype(np.float32), value(n.input[2]).astype(np.float32)
            C = w.shape[0]
            out = f"gn_{k}"
            if opset == 21:
                new_inits += [numpy_helper.from_array(w, out + "_scale"), numpy_helper.from_array(b, out + "_bias")]
                nodes.append(helper.make_node("GroupNormalization", [n.input[0], out + "_scale", out + "_bias"],
                                              [n.output[0]], name=out, num_groups=G, epsilon=eps))
            else:
                new_inits += [numpy_helper.from_array(np.ones(G, np.float32), out + "_ones"),
                              numpy_helper.from_array(np.zeros(G, np.float32), out + "_zeros"),
                              numpy_helper.from_array(w.reshape((C,) + (1,) * (ranks[k] - 2)), out + "_w"),
                              numpy_helper.from_array(b.reshape((C,) + (1,) * (ranks[k] - 2)), out + "_b")]
                nodes += [helper.make_node("GroupNormalization", [n.input[0], out + "_ones", out + "_zeros"],
                                           [out + "_norm"], name=out, num_groups=G, epsilon=eps),
                          helper.make_node("Mul", [out + "_norm", out + "_w"], [out + "_mul"], name=out + "_mul"),
                          helper.make_node("Add", [out + "_mul", out + "_b"], [n.output[0]], name=out + "_add")]
            k += 1
        assert k == len(ranks), (k, len(ranks))
        del m.graph.node[:]
        m.graph.node.extend(nodes)
        m.graph.initializer.extend(new_inits)
        del m.opset_import[:]
        m.opset_import.extend([helper.make_opsetid("", opset)])
        # name each GroupNorm's output tensors gn_* too: the ONNX frontend names nodes by their outputs
        rename = {}
        for n in m.graph.node:
            if n.name.startswith("gn_") and n.output[0] not in (o.name for o in m.graph.output):
                if not n.output[0].startswith("gn_"):
                    rename[n.output[0]] = n.name + "_out"
        for n in m.graph.node:
            n.input[:] = [rename.get(i, i) for i in n.input]
            n.output[:] = [rename.get(o, o) for o in n.output]
        if opset == 21:  # the checker rejects GroupNormalization-18 as deprecated; 21 is checked
            onnx.checker.check_model(m)
        path = os.path.join(workdir, f"vae_decoder_opset{opset}.onnx")
        onnx.save(m, path)
        paths[opset] = path
    return paths, k


# ----------------------------------------------------------------------------- one configuration


def run_config(model_path, with_extension, repeats, workdir, tag):
    import numpy as np
    import openvino as ov

    core = ov.Core()
    if with_extension:
        import groupnorm.openvino as gov
        core.add_extension(gov.extension_path())
    model = core.read_model(model_path)
    types = {}
    for op in model.get_ordered_ops():
        types[op.get_type_name()] = types.get(op.get_type_name(), 0) + 1
    z = np.load(os.path.join(workdir, "z.npy"))
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    t = time.perf_counter()
    compiled = core.compile_model(model, "CPU", config)
    compile_s = time.perf_counter() - t
    request = compiled.create_infer_request()
    out = np.array(request.infer({0: z})[0])  # warm-up
    # the harness's timing loop: `repeats` samples of one decode each
    if HERE not in sys.path:
        sys.path.append(HERE)  # after site-packages: openvino stays the package
    from harness import measure
    stats, errors = measure({"decode": lambda: request.infer({0: z})}, repeat=repeats, target_s=0, warmup_s=0,
                            calls_per_sample=1)
    if errors:
        raise RuntimeError(errors["decode"])
    times = [us / 1e6 for us in stats["decode"]["times_us"]]
    np.save(os.path.join(workdir, f"out_{tag}.npy"), out)
    # per-node counters of one decode (a separate compile with PERF_COUNT), read from the runtime
    # model: each executed node lists the original layers it runs (fused ones included)
    compiled = core.compile_model(model, "CPU", dict(config, PERF_COUNT=True))
    request = compiled.create_infer_request()
    request.infer({0: z})
    request.infer({0: z})
    runtime = compiled.get_runtime_model()
    gn_name = re.compile(r"^gn_\d+(_mul|_add)?$")

    def info(op, key):
        return op.get_rt_info()[key].astype(str)

    def is_gn(op):
        return any(gn_name.match(n.strip()) for n in info(op, "originalLayersNames").split(","))

    buckets = {"gn": 0.0, "gn_reorder": 0.0, "reorder": 0.0, "other": 0.0}
    gn_types, fused = {}, 0
    for op in runtime.get_ordered_ops():
        t = info(op, "execTimeMcs")
        us = float(t) if t.replace(".", "", 1).isdigit() else 0.0
        kind = info(op, "layerType")
        if kind == "Const":
            continue
        if is_gn(op):
            key = "gn"
            label = kind + "/" + info(op, "primitiveType")
            gn_types[label] = gn_types.get(label, 0) + 1
            names = [n.strip() for n in info(op, "originalLayersNames").split(",")]
            fused += any(not gn_name.match(n) for n in names)
        elif kind in ("Reorder", "Convert"):
            producers = [i.get_source_output().get_node() for i in op.inputs()]
            consumers = [c.get_node() for o in op.outputs() for c in o.get_target_inputs()]
            key = "gn_reorder" if any(is_gn(n) for n in producers + consumers) else "reorder"
        else:
            key = "other"
        buckets[key] += us
    return {"decode_s": statistics.median(times), "decodes": times, "compile_s": compile_s,
            "perf_us": buckets, "gn_node_types": gn_types, "gn_fused_with_others": fused, "ops": types}


# ----------------------------------------------------------------------------- driver


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="each configuration's process runs this many times, "
                    "alternating with the others; decodes pooled, counters from the fastest round")
    ap.add_argument("--out", default=os.path.join("bench-results", "openvino.md"),
                    help="markdown file to write (default ./bench-results/openvino.md; the committed results are in bench/results/, pass --out bench/results/openvino.md to replace them)")
    ap.add_argument("--_export", help=argparse.SUPPRESS)
    ap.add_argument("--_config", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._export:
        paths, n_gn = export(args.latent, args._export)
        print(json.dumps({"paths": paths, "n_gn": n_gn}))
        return
    if args._config:
        path, ext, workdir, tag = args._config
        print(json.dumps(run_config(path, ext == "1", args.repeats, workdir, tag)))
        return

    import numpy as np
    import openvino as ov

    workdir = tempfile.mkdtemp(prefix="gn-ov-bench-")
    me = [sys.executable, os.path.abspath(__file__), "--latent", str(args.latent), "--repeats", str(args.repeats)]
    exported = json.loads(subprocess.run(me + ["--_export", workdir], check=True, capture_output=True,
                                         text=True).stdout.strip().splitlines()[-1])
    results = {}
    rounds = {}
    for rnd, opset, ext in [(r, o, e) for r in range(args.rounds) for o in (18, 21) for e in (0, 1)]:
        tag = f"{opset}_{'ext' if ext else 'stock'}"
        print(f"== opset {opset}, {'with' if ext else 'without'} the extension", flush=True)
        proc = subprocess.run(me + ["--_config", exported["paths"][str(opset)], str(ext), workdir, tag],
                              capture_output=True, text=True)
        if proc.returncode:
            why = [ln.strip() for ln in proc.stderr.splitlines() if "Check" in ln or "--" in ln or "failed" in ln]
            results[tag] = {"error": " ".join(why[-3:])[:400] or proc.stderr[-400:]}
            print("   failed:", results[tag]["error"], flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rounds.setdefault(tag, []).append(r)
        print("  ", r["decode_s"], r["perf_us"], flush=True)
    for tag, rs in rounds.items():
        best = dict(min(rs, key=lambda r: r["decode_s"]))
        best["decodes"] = [t for r in rs for t in r["decodes"]]
        best["decode_s"] = statistics.median(best["decodes"])
        results[tag] = best
    reference = np.load(os.path.join(workdir, "reference.npy"))
    for tag in results:
        if "error" in results[tag]:
            continue
        out = np.load(os.path.join(workdir, f"out_{tag}.npy"))
        results[tag]["max_abs_diff_vs_torch"] = float(np.abs(out - reference).max())
    load = os.getloadavg()
    lines = [
        "# SD VAE decoder in OpenVINO, with and without groupnorm's extension",
        "",
        f"`python bench/openvino.py --latent {args.latent} --repeats {args.repeats} --rounds {args.rounds}`: the decoder of diffusers' "
        f"AutoencoderKL (SD 1.x config, seeded random weights) decoding a (1, 4, {args.latent}, {args.latent}) latent "
        f"to a {8 * args.latent}x{8 * args.latent} image, exported to ONNX with {exported['n_gn']} GroupNormalization "
        f"nodes; OpenVINO {ov.get_version()} on the CPU device, f32 inference precision, default threads. "
        f"Each configuration runs in its own process, {args.rounds} times, alternating with the others. "
        "Decode: median of all its decodes (each process warms up first). "
        "Per-node times: OpenVINO's performance counters (PERF_COUNT) of one decode, in a second compile, "
        "from the configuration's fastest round; "
        "'GN' is every executed node that runs a GroupNorm layer (the runtime model's originalLayersNames: "
        "the normalization and, at opset 18, its Mul/Add, with whatever the plugin fused into the same node; "
        "with the extension the 'Reference' node that runs our kernel), 'reorders around GN' the "
        "Reorder/Convert nodes whose producer or consumer is such a node, 'reorders elsewhere' the rest.",
        "",
        f"**The machine was shared** with other jobs (2 cores; load average at the end of the run "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}): single decodes move by tens of percent; compare the rows "
        "of one run only.",
        "",
        "| opset | GroupNorm | decode (s) | decodes (s) | GN (ms) | reorders around GN (ms) | reorders elsewhere (ms) "
        "| rest (ms) | GN share | GN node types | max abs diff vs torch |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for opset in (18, 21):
        for ext in ("stock", "ext"):
            r = results[f"{opset}_{ext}"]
            if "error" in r:
                lines.append(f"| {opset} | {'groupnorm extension' if ext == 'ext' else 'OpenVINO stock'} | fails: "
                             f"{r['error'].replace('|', '/')} | | | | | | | | |")
                continue
            p = r["perf_us"]
            total = sum(p.values())
            share = (p["gn"] + p["gn_reorder"]) / total if total else float("nan")
            types = ", ".join(f"{k} x{v}" for k, v in sorted(r["gn_node_types"].items()))
            if r["gn_fused_with_others"]:
                types += f" ({r['gn_fused_with_others']} fused with other ops)"
            lines.append(
                f"| {opset} | {'groupnorm extension' if ext == 'ext' else 'OpenVINO stock'} | {r['decode_s']:.3f} | "
                f"{', '.join(f'{t:.2f}' for t in r['decodes'])} | {p['gn'] / 1e3:.1f} | {p['gn_reorder'] / 1e3:.1f} | "
                f"{p['reorder'] / 1e3:.1f} | {p['other'] / 1e3:.1f} | {100 * share:.1f}% | {types} | "
                f"{r['max_abs_diff_vs_torch']:.2e} |")
    lines.append("")
    for opset in (18, 21):
        s, e = results[f"{opset}_stock"], results[f"{opset}_ext"]
        if "error" in s or "error" in e:
            continue
        gs = s["perf_us"]["gn"] + s["perf_us"]["gn_reorder"]
        ge = e["perf_us"]["gn"] + e["perf_us"]["gn_reorder"]
        lines.append(f"- opset {opset}: decode stock / extension = {s['decode_s'] / e['decode_s']:.2f}x; GroupNorm "
                     f"time, reorders included, stock / extension = {gs / ge:.2f}x.")
    lines.append("")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
