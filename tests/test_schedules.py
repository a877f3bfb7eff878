"""How a call is scheduled follows the machine: the cache sizes the plan reads,
where they come from, and the budget override. (That a schedule does not change
the results, and that forced schedules run, is tests/test_determinism.py's.)"""


def _sysfs_caches():
    """{level: bytes} of cpu0's data/unified caches, read independently of the library."""
    import glob
    import os
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
    import subprocess
    import sys
    code = ("from groupnorm import _core; c = _core.cache_sizes(); "
            "print(c['forced_budget'], _core.cache_budget(1), _core.cache_budget(2))")
    env = dict(__import__("os").environ, GROUPNORM_CACHE_BYTES="262144")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["262144", "262144", "262144"]
