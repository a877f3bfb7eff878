"""How a call is scheduled: the cache sizes the plan reads, where they come from,
the budget override, and every schedule forced and checked to have run, with
the same bits as the default. (Bitwise independence of thread count, batch size
and instruction set is tests/test_determinism.py's.)"""
import os
import pickle
import subprocess
import sys

import numpy as np

from conftest import (ALL_DTYPES, F32, F64, assert_bitwise_equal, assert_close, dtype_id, ref_backward,
                      ref_forward)


def _sysfs_caches():
    """{level: bytes} of cpu0's data/unified caches, read independently of the library."""
    import glob
    found = {}
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            level = int(open(os.path.join(d, "level")).read())
            kind = open(os.path.join(d, "type")).read().strip()
            size = open(os.path.join(d, "size")).read().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
        found[level] = int(size.rstrip("KMG")) * scale
    return found


def test_cache_sizes_come_from_a_truthful_source():
    from groupnorm import _core
    c = _core.cache_sizes()
    assert c["l2"] > 0 and c["l2_source"] in ("cpuid", "sysfs", "sysconf", "default")
    sysfs = _sysfs_caches()
    for level, key in ((1, "l1d"), (2, "l2"), (3, "l3")):
        if level in sysfs:  # the kernel's view: the library never plans for more than it
            assert 0 < c[key] <= sysfs[level], (key, c, sysfs)
            assert c[key + "_source"] in ("cpuid", "sysfs"), c
    threads = 2
    assert _core.cache_budget(threads) == c["l2"] * 3 // 4 + c["l3"] // 2 // threads


def test_cache_budget_override_is_read():
    code = ("from groupnorm import _core; c = _core.cache_sizes(); "
            "print(c['forced_budget'], _core.cache_budget(1), _core.cache_budget(2))")
    env = dict(os.environ, GROUPNORM_CACHE_BYTES="262144")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["262144", "262144", "262144"]


# ------------------------------------------------------------------- forced schedules
# Every schedule of the walk (cpp/src/cpu/walk.hpp: pipelined, whole sets, shared
# steps), and non-temporal stores, forced through the environment, checked to
# have run (_core.last_schedule() after each call), and checked to give bitwise
# the default schedule's results (and the 1-thread default's), which are close
# to the float64 reference. The knobs are read once per process (static locals
# in walk.cpp and cache.cpp), so each forced configuration runs in a child.
#
# The configurations and what each forces:
#   default       no knob: what the plan picks on this machine (recorded, and the bits to match)
#   pipelined     GROUPNORM_CACHE_BYTES=64 MB: every set fits the budget, so the plan takes
#                 whole sets, and the walk pipelines channels-first one calls (forward and
#                 backward) whose sets are at most a quarter of the L2
#   whole_sets    the same budget and GROUPNORM_PIPELINE=0
#   shared_steps  GROUPNORM_CACHE_BYTES=1: no set fits, threads share every set's tiles
# and every forced run sets GROUPNORM_STREAM_BYTES=1 (every output written with
# non-temporal stores, which no default forward here is: all are far below half the L3).
#
# What cannot be forced, and what the plan takes instead (asserted below):
# - at 1 thread, and for calls too small to wake a second thread (under 96 KB
#   moved, plan.hpp's kSerialBytes): no shared steps (one worker has nothing to
#   share); whole sets, or pipelined where the walk pipelines;
# - channels-last: never pipelined (a set is a whole sample); whole sets;
# - one channels-last sample (N=1) is one set: at 2 threads it is always shared steps;
# - pipelining needs a set of at most a quarter of the L2 (walk.hpp): asserted where
#   a group is at most 64 KB (plan.hpp's kSetBytes caps the set then) and the L2 holds
#   four such sets; for bigger groups whether the plan pipelines is its own call on
#   this machine's L2, so either pipelined or whole sets is accepted there.
MB = 1 << 20
FORCED = {
    "default": {},
    "pipelined": {"GROUPNORM_CACHE_BYTES": str(64 * MB), "GROUPNORM_STREAM_BYTES": "1"},
    "whole_sets": {"GROUPNORM_CACHE_BYTES": str(64 * MB), "GROUPNORM_PIPELINE": "0", "GROUPNORM_STREAM_BYTES": "1"},
    "shared_steps": {"GROUPNORM_CACHE_BYTES": "1", "GROUPNORM_STREAM_BYTES": "1"},
}
# (shape in memory order, groups, channels_last, skip): each is over 96 KB in every dtype (but
# the last), and its sets have 2+ tiles, so that 2 threads share them
FORCED_CASES = [
    ((2, 32, 48, 48), 4, False, False),   # groups of 2 tiles, one group a set
    ((4, 64, 11, 13), 32, False, True),   # tiny groups, many a set, rows not whole vectors; x + skip
    ((1, 8, 20000), 2, False, False),     # long channels: a channel in pieces; groups over 64 KB
    ((2, 41, 39, 60), 15, True, True),    # channels-last, 2 row tiles a sample, odd rows; x + skip
    ((1, 72, 40, 32), 4, True, False),    # one channels-last sample: one set
    ((5, 48), 12, False, False),          # (N, C), no spatial dims (run as channels-last); serial
]
SERIAL_BYTES = 96 << 10  # plan.hpp kSerialBytes
SET_BYTES = 64 << 10     # plan.hpp kSetBytes

_FORCED_CODE = r"""
import pickle, sys
import ml_dtypes, numpy as np, groupnorm as gn
with open(sys.argv[1], "rb") as f:
    cases = pickle.load(f)
out = []
for c in cases:
    x, G, cl, w, b, gy, skip, act = (c[k] for k in ("x", "G", "cl", "w", "b", "gy", "skip", "act"))
    res = {}
    for t in (1, 2):
        y = np.full(x.shape, np.nan, x.dtype)
        gn.group_norm(x, G, w, b, channels_last=cl, activation=act, skip=skip, out=y, num_threads=t)
        fwd = gn._core.last_schedule()
        # the statistics, and the backward's x (x + skip, as the forward normalized it)
        xs = np.full(x.shape, np.nan, x.dtype) if skip is not None else x
        _, m, r = gn.group_norm(x, G, w, b, channels_last=cl, activation=act, skip=skip, return_stats=True,
                                sum_out=xs if skip is not None else None, num_threads=t)
        gx = np.full(x.shape, np.nan, x.dtype)
        _, gw, gb = gn.group_norm_backward(gy, xs, m, r, G, w, b, channels_last=cl, activation=act, out=gx,
                                           num_threads=t)
        bwd = gn._core.last_schedule()
        res[t] = {"y": y, "mean": m, "rstd": r, "x_sum": xs, "grad_x": gx, "grad_weight": gw, "grad_bias": gb,
                  "forward": tuple(fwd), "backward": tuple(bwd)}
    out.append(res)
with open(sys.argv[2], "wb") as f:
    pickle.dump(out, f)
"""


def _forced_cases(rng):
    cases = []
    for shape, groups, cl, skip in FORCED_CASES:
        for dtype in ALL_DTYPES:
            for act in (None, "silu"):
                c = shape[-1] if cl else shape[1]
                w, b = rng.params(c, F64 if dtype == F64 else np.float32)
                cases.append({"x": rng.x(shape, dtype, loc=3.0), "G": groups, "cl": cl, "w": w, "b": b,
                              "gy": rng.normal(shape, dtype), "act": act,
                              "skip": rng.normal(shape, dtype) if skip else None})
    return cases


def _run_forced(config, cases, tmp_path):
    src, dst = tmp_path / "cases.pkl", tmp_path / f"{config}.pkl"
    if not src.exists():
        with open(src, "wb") as f:
            pickle.dump(cases, f)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUPNORM_")}
    env.update(FORCED[config])
    p = subprocess.run([sys.executable, "-c", _FORCED_CODE, str(src), str(dst)], env=env, capture_output=True,
                       text=True, timeout=300, cwd=str(tmp_path))
    assert p.returncode == 0, f"{config}: {p.stderr}"
    with open(dst, "rb") as f:
        return pickle.load(f)


def _expected(config, case, threads, direction, l2):
    """The schedules that may run: a set of names (see the table above)."""
    x, cl = case["x"], case["cl"] or case["x"].ndim == 2
    streams = 1 if direction == "forward" else 2
    serial = x.nbytes * (streams + 1) < SERIAL_BYTES
    one = threads == 1 or serial
    group_bytes = x.nbytes // x.shape[0] // case["G"] * streams
    one_set = cl and x.shape[0] == 1
    if config == "default":  # whatever this machine's caches make of it (the bits are checked)
        return {"pipelined", "whole_sets", "shared_steps"}
    if not one and (config == "shared_steps" or one_set):
        return {"shared_steps"}
    # whole sets (one worker, or a budget every set fits): pipelined where the walk pipelines
    if config == "whole_sets" or cl:
        return {"whole_sets"}
    if group_bytes <= SET_BYTES and 4 * SET_BYTES <= l2:
        return {"pipelined"}
    return {"pipelined", "whole_sets"}


def test_forced_schedules_run_and_give_the_same_bits(gn, rng, tmp_path):
    cases = _forced_cases(rng)
    runs = {config: _run_forced(config, cases, tmp_path) for config in FORCED}
    l2 = gn._core.cache_sizes()["l2"]
    taken = {config: set() for config in FORCED}
    shared_on_two = set()
    for i, case in enumerate(cases):
        x, G, cl, w, b, gy, act = (case[k] for k in ("x", "G", "cl", "w", "b", "gy", "act"))
        what = f"{x.shape} G{G} {'cl' if cl else 'cf'} {dtype_id(x.dtype)} {act or 'plain'}"
        base = runs["default"][i][1]
        # the default at 1 thread against the float64 reference
        xs = base["x_sum"]
        if case["skip"] is not None:  # x + skip, rounded to x's dtype as the forward normalizes it
            assert_close(xs, x.astype(np.float64) + case["skip"].astype(np.float64), rtol=1e-2 if x.itemsize < 4
                         else 1e-6, atol=0, what=f"{what}: x + skip")
        y_ref, m_ref, r_ref = ref_forward(xs, G, w, b, channels_last=cl, activation=act)
        tol = {F64: 1e-10, F32: 3e-5}.get(x.dtype, 2e-2)
        assert_close(base["y"], y_ref, rtol=tol, atol=tol, what=f"{what}: y")
        assert_close(base["mean"], m_ref, rtol=tol, atol=tol, what=f"{what}: mean")
        assert_close(base["rstd"], r_ref, rtol=tol, atol=0, what=f"{what}: rstd")
        gx_ref, gw_ref, gb_ref = ref_backward(gy, xs, G, w, b, channels_last=cl, activation=act)
        tol = {F64: 1e-8, F32: 2e-4}.get(x.dtype, 6e-2)
        assert_close(base["grad_x"], gx_ref, rtol=tol, atol=tol * max(1.0, float(np.abs(gx_ref).max())),
                     what=f"{what}: grad_x")
        for name, ref in (("grad_weight", gw_ref), ("grad_bias", gb_ref)):
            assert_close(base[name], ref, rtol=tol, atol=tol * float(np.abs(ref).max()), what=f"{what}: {name}")
        for config, run in runs.items():
            for t in (1, 2):
                got = run[i][t]
                for name in ("y", "mean", "rstd", "x_sum", "grad_x", "grad_weight", "grad_bias"):
                    assert_bitwise_equal(got[name], base[name], f"{what}: {name}, {config} at {t} threads vs "
                                                                "the default at 1")
                for direction in ("forward", "backward"):
                    name, threads, streaming = got[direction]
                    where = f"{what}: {direction}, {config} at {t} threads took {name} on {threads}"
                    taken[config].add(name)
                    assert name in _expected(config, case, t, direction, l2), where
                    assert 1 <= threads <= t, where
                    # forced: every output; default: no forward here (outputs far below half the L3), the
                    # backward where x, grad_y and grad_x outgrow the threads' L2s (walk.cpp)
                    assert streaming == (config != "default") or (config, direction) == ("default", "backward"), \
                        f"{where}, streaming stores {streaming}"
                    if name == "shared_steps" and threads == 2:
                        shared_on_two.add("cl" if cl or x.ndim == 2 else "cf")
    # each forced schedule ran, and the default run took more than one (the forcing changed something)
    for config in FORCED:
        if config != "default":
            assert config in taken[config], (config, taken[config])
    assert len(taken["default"]) >= 2, taken["default"]
    assert shared_on_two == {"cf", "cl"}, shared_on_two  # tiles of one set really were shared by 2 threads
