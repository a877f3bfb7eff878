"""Results must not depend on how a call is scheduled.

The scheduler picks per-thread sets (pipelined or not) or shared steps from
the cache size, and streaming (non-temporal) stores from the output size. Both
are tunable by environment variables read once per process, so a child process
with a tiny cache budget and streaming always on must give bitwise the same
outputs as this process, for every layout, dtype and pass; each call reports
the schedule it took (`_core.last_schedule()`), so the test also checks that
the forced schedules ran.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import groupnorm as gn
from conftest import ALL_DTYPES, dtype_id, ref_forward

CASES = [
    # (shape, groups, channels_last)
    ((2, 32, 40, 33), 8, False),
    ((1, 16, 9000), 4, False),       # long channels: split into pieces
    ((3, 17, 19, 24), 6, True),
    ((1, 50, 40, 32), 4, True),      # many rows, few groups
    ((5, 48), 12, False),            # no spatial dims
]

SCRIPT = r"""
import json, sys
import numpy as np
import groupnorm as gn
import ml_dtypes
cases = json.loads(sys.argv[1])
out = {}
for i, (shape, groups, cl, dtype, act, threads) in enumerate(cases):
    rng = np.random.default_rng(1000 + i)
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bf16" else np.dtype({"f16": "float16", "f32": "float32", "f64": "float64"}[dtype])
    c = shape[-1] if cl else shape[1]
    x = (rng.standard_normal(shape) * 3 + 5).astype(dt)
    w = rng.standard_normal(c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    gy = rng.standard_normal(shape).astype(dt)
    y, m, r = gn.group_norm(x, groups, w, b, channels_last=cl, activation=act, return_stats=True, num_threads=threads)
    fwd = list(gn._core.last_schedule())
    gx, gw, gb = gn.group_norm_backward(gy, x, m, r, groups, w, b, channels_last=cl, activation=act, num_threads=threads)
    bwd = list(gn._core.last_schedule())
    out[str(i)] = [a.view(np.uint8).tobytes().hex() for a in (y, m, r, gx, gw, gb)] + [fwd, bwd]
np.save(sys.argv[2], np.array(json.dumps(out)))
"""


def _cases():
    cases = []
    for shape, groups, cl in CASES:
        for dtype in ALL_DTYPES:
            for act in (None, "silu"):
                cases.append((list(shape), groups, cl, dtype_id(dtype), act, 2))
    return cases


def _run(env_extra, tmp_path, name):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUPNORM_")}
    env.update(env_extra)
    path = str(tmp_path / f"{name}.npy")
    subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(_cases()), path], env=env, check=True,
                   cwd=os.path.dirname(__file__))
    return json.loads(str(np.load(path)))


def test_scheduling_does_not_change_results(tmp_path):
    plain = _run({}, tmp_path, "plain")
    # tiny cache: cooperative steps everywhere; streaming stores for every output
    forced = _run({"GROUPNORM_CACHE_BYTES": "4096", "GROUPNORM_STREAM_BYTES": "1"}, tmp_path, "forced")
    assert plain.keys() == forced.keys()
    for k in plain:
        for j, name in enumerate(("y", "mean", "rstd", "grad_x", "grad_weight", "grad_bias")):
            assert plain[k][j] == forced[k][j], f"case {_cases()[int(k)]}: {name} differs"
    # the forced schedules ran: every call planned for more than one thread took
    # shared steps (a call small enough for one thread has nothing to share), and
    # every output was planned as streaming stores, which no call of the plain run was
    plain_taken, changed = set(), 0
    for k in plain:
        for p, f, direction in zip(plain[k][6:], forced[k][6:], ("forward", "backward")):
            case = f"case {_cases()[int(k)]} {direction}"
            plain_taken.add(p[0])
            assert f[1] == 1 or f[0] == "shared_steps", f"{case}: forced run took {f[0]} on {f[1]} threads"
            assert f[2] and not p[2], f"{case}: streaming stores plain {p[2]}, forced {f[2]}"
            changed += p[0] != f[0]
    assert plain_taken >= {"pipelined", "whole_sets"}, plain_taken
    assert changed >= 10, f"only {changed} calls changed schedule"


@pytest.mark.parametrize("cl", [False, True], ids=["cf", "cl"])
def test_streamed_outputs_are_right(tmp_path, cl):
    """Outputs written with non-temporal stores (forced on) match the float64 reference."""
    script = r"""
import sys, numpy as np, groupnorm as gn
rng = np.random.default_rng(7)
cl = sys.argv[1] == "1"
shape = (2, 37, 41, 48) if cl else (2, 48, 37, 41)
x = rng.standard_normal(shape).astype(np.float32)
y = gn.group_norm(x, 8, channels_last=cl)
np.save(sys.argv[2], np.stack([x, y]))
"""
    path = str(tmp_path / "s.npy")
    env = dict(os.environ, GROUPNORM_STREAM_BYTES="1")
    subprocess.run([sys.executable, "-c", script, "1" if cl else "0", path], env=env, check=True)
    x, y = np.load(path)
    ref = ref_forward(x, 8, channels_last=cl)[0]
    np.testing.assert_allclose(y, ref, atol=2e-5, rtol=0)
