"""bench/run.py --explain: every phase of one tiny case is timed against its floor, with
the schedule each call took and the cache sizes found (the timings themselves are not
checked: this machine is shared; the numbers are checked to be there and to add up)."""
import csv
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ["moments", "apply", "moments + apply", "forward, one call", "backward sums", "dx",
          "backward sums + dx", "backward, one call"]
SCHEDULES = {"pipelined", "whole_sets", "shared_steps"}
NUM = r"(\d+(?:\.\d+)?)"


def test_explain_prints_every_phase_against_its_floor(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "run.py"), "--explain", "--quick",
                        "--shapes", "tiny", "--layouts", "cf,cl", "--threads", "1", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert re.search(r"cache sizes: L1d \d+ KB \((cpuid|sysfs|sysconf)\), L2 ", out), out
    assert "WRONG" not in out and "failed" not in out, out
    cases = out.split("\ntiny (1x64x8x8 G8) ")[1:]
    assert [c.split(",")[0] for c in cases] == ["cf float32", "cl float32"], out
    for case in cases:
        lines = case.splitlines()
        for label in LABELS:
            # phase, us, floor us, ratio, moves, share
            m = [re.match(rf"  {re.escape(label)} +{NUM} +{NUM} +{NUM} +{NUM} [KM]B +{NUM}%", ln) for ln in lines]
            m = [x for x in m if x]
            assert len(m) == 1, (label, case)
            us, floor_us, ratio = (float(v) for v in m[0].groups()[:3])
            assert us > 0 and floor_us > 0 and ratio > 0, (label, case)
            if "one call" in label:  # the schedule the one call took
                assert m[0].group(5) == "100", (label, case)
                sched = lines[[i for i, ln in enumerate(lines) if ln.startswith("  " + label)][0]]
                assert any(f"{s}/1" in sched for s in SCHEDULES), sched
        assert "furthest from its floor: forward " in case, case
        assert re.search(rf"two-pass floor .*: forward {NUM}x, backward {NUM}x", case), case
    with open(tmp_path / "explain.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(LABELS)
    for r in rows:
        assert float(r["ratio"]) > 0 and float(r["floor_us"]) > 0 and int(r["bytes"]) >= 64 * 64 * 4, r
        assert abs(float(r["ratio"]) - float(r["us"]) / float(r["floor_us"])) <= 0.01 * float(r["ratio"]), r
    one = [r for r in rows if r["phase"] in ("forward", "backward")]
    assert all(r["schedule"] in SCHEDULES and r["schedule_threads"] == "1" for r in one), one


def test_parallel_read_reads_every_byte_and_copies():
    """The benchmark's read floor (_core.parallel_read) reads all of every array (its result is
    the xor of their 8-byte words) or, given dst, copies the first there and reads the others."""
    import numpy as np
    from groupnorm import _core
    rng = np.random.default_rng()
    a, b = (rng.integers(0, 2**63, 3 * 4096 + 8 * 37, dtype=np.uint64) for _ in range(2))
    xa, xb = int(np.bitwise_xor.reduce(a)), int(np.bitwise_xor.reduce(b))
    for t in (1, 2, 3):
        assert _core.parallel_read((a,), t) == xa
        assert _core.parallel_read((a, b), t) == xa ^ xb
        dst = np.zeros_like(a)
        assert _core.parallel_read([a, b], t, dst) == xb
        np.testing.assert_array_equal(dst, a)
