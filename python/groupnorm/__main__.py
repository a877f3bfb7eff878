"""Demo: python -m groupnorm

Normalizes a Stable-Diffusion-sized activation in both layouts, checks it
against a float64 NumPy reference, and prints the speed as a ratio to a
same-size multi-threaded copy measured in the same run.
"""
import argparse
import time

import numpy as np

import groupnorm
from groupnorm import _core


def reference(x, num_groups, weight, bias, eps, channels_last):
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


def median_time(fn, seconds=0.3):
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    times = []
    for _ in range(max(5, min(1000, int(seconds / once)))):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="2,320,64,64", help="N,C,*spatial (default: Stable Diffusion UNet block)")
    ap.add_argument("--groups", type=int, default=32)
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
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
        t_gn = median_time(lambda: groupnorm.group_norm(x, args.groups, weight, bias, channels_last=channels_last,
                                                         out=out))
        t_copy = median_time(lambda: _core.parallel_copy(out, x))
        gbps = 2 * x.nbytes / t_gn / 1e9
        layout = "channels-last " if channels_last else "channels-first"
        print(f"{layout} x{shape if not channels_last else x.shape} float32 (mean 1e4): max |err| vs float64 "
              f"{err:.2e}; {t_gn * 1e6:8.1f} us, {gbps:5.1f} GB/s, {t_gn / t_copy:4.2f}x a same-size copy")
        ok &= err < 5e-3
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
