"""The output-buffer cache: outputs the library allocates reuse the memory of
dead outputs (no fresh pages per call), the cache stays within its limit, can be
emptied, and a reused block never leaks old contents into a result."""
import threading

import numpy as np
import pytest

from conftest import F32, assert_close, make_shape, ref_forward

MB = 1 << 20


@pytest.fixture(autouse=True)
def _fresh_cache(gn):
    limit = gn.buffer_cache_info()["limit_bytes"]
    gn.release_memory()
    yield
    gn.set_buffer_cache_limit(limit)
    gn.release_memory()


def _x(rng, C=64, S=(64, 64), N=1, channels_last=False):
    return rng.x(make_shape(N, C, S, channels_last), F32)  # 1 MiB with the defaults


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
def test_dead_output_is_reused_and_fully_rewritten(gn, rng, channels_last):
    x = _x(rng, channels_last=channels_last)
    w, b = rng.params(64, F32)
    y1 = gn.group_norm(x, 8, w, b, channels_last=channels_last)
    addr = y1.ctypes.data
    assert addr % 64 == 0
    y1[...] = np.nan  # poison the block before it goes back
    del y1
    info = gn.buffer_cache_info()
    assert info["cached_blocks"] == 1 and info["cached_bytes"] >= x.nbytes
    y2 = gn.group_norm(x, 8, w, b, channels_last=channels_last)
    assert y2.ctypes.data == addr  # the same memory, already mapped
    assert gn.buffer_cache_info()["cached_bytes"] == 0
    assert not np.isnan(y2).any()
    assert_close(y2, ref_forward(x, 8, w, b, channels_last=channels_last)[0], 1e-5, 1e-5)


def test_layer_and_backward_outputs_come_from_the_cache(gn, rng):
    x = _x(rng)
    layer = gn.GroupNorm(8, 64)
    y = layer(x)
    addr = y.ctypes.data
    del y
    assert gn.buffer_cache_info()["cached_blocks"] == 1
    y = layer(x)
    assert y.ctypes.data == addr
    y2, mean, rstd = gn.group_norm(x, 8, return_stats=True)
    gy = rng.x(x.shape, F32)
    gx = gn.group_norm_backward(gy, x, mean, rstd, 8)[0]
    gaddr = gx.ctypes.data
    assert gaddr % 64 == 0
    del gx
    gx = gn.group_norm_backward(gy, x, mean, rstd, 8)[0]
    assert gx.ctypes.data == gaddr


def test_smaller_request_reuses_a_bigger_block_but_not_a_much_bigger_one(gn, rng):
    big = gn._checks.empty_aligned((3 * MB // 4,), F32)  # 3 MiB
    addr = big.ctypes.data
    del big
    small = gn._checks.empty_aligned((5 * MB // 8,), F32)  # 2.5 MiB: same block
    assert small.ctypes.data == addr
    del small
    tiny = gn._checks.empty_aligned((MB // 8,), F32)  # 0.5 MiB: would waste 5/6 of it
    assert tiny.ctypes.data != addr
    assert gn.buffer_cache_info()["cached_blocks"] == 1


def test_a_view_keeps_the_block_alive(gn, rng):
    x = _x(rng)
    y = gn.group_norm(x, 8)
    v = y[0, :4]
    want = v.copy()
    del y
    assert gn.buffer_cache_info()["cached_blocks"] == 0
    z = gn.group_norm(x * 2 + 1, 8)  # must not get v's memory
    assert np.array_equal(v, want)
    del v
    assert gn.buffer_cache_info()["cached_blocks"] == 1
    del z


def test_cache_stays_within_its_limit_and_evicts_the_oldest(gn, rng):
    gn.set_buffer_cache_limit(3 * MB)
    arrays = [gn._checks.empty_aligned((MB // 4,), F32) for _ in range(5)]  # 1 MiB each
    addrs = [a.ctypes.data for a in arrays]
    while arrays:
        del arrays[0]  # returned in allocation order
        assert gn.buffer_cache_info()["cached_bytes"] <= 3 * MB
    info = gn.buffer_cache_info()
    assert info["cached_blocks"] == 3 and info["cached_bytes"] == 3 * MB
    # the three returned last are the ones kept
    again = [gn._checks.empty_aligned((MB // 4,), F32) for _ in range(3)]
    assert sorted(a.ctypes.data for a in again) == sorted(addrs[2:])
    # a block bigger than the limit is never kept
    del again
    big = gn._checks.empty_aligned((MB,), F32)  # 4 MiB
    del big
    assert gn.buffer_cache_info()["cached_bytes"] <= 3 * MB
    # lowering the limit evicts at once
    gn.set_buffer_cache_limit(MB)
    assert gn.buffer_cache_info()["cached_bytes"] <= MB


def test_limit_zero_turns_the_cache_off(gn, rng):
    gn.set_buffer_cache_limit(0)
    x = _x(rng)
    y = gn.group_norm(x, 8)
    del y
    assert gn.buffer_cache_info()["cached_bytes"] == 0


def test_release_memory_frees_everything(gn, rng):
    arrays = [gn._checks.empty_aligned((MB // 4 * (i + 1),), F32) for i in range(3)]
    total = sum(a.nbytes for a in arrays)
    del arrays
    cached = gn.buffer_cache_info()["cached_bytes"]
    assert cached >= total
    assert gn.release_memory() == cached
    info = gn.buffer_cache_info()
    assert info["cached_bytes"] == 0 and info["cached_blocks"] == 0
    assert gn.release_memory() == 0


def test_small_outputs_are_not_cached(gn, rng):
    x = _x(rng, C=16, S=(8, 8))  # 4 KiB
    y = gn.group_norm(x, 4)
    del y
    assert gn.buffer_cache_info()["cached_bytes"] == 0


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (1.5, TypeError), ("1", TypeError), (True, TypeError)])
def test_bad_limit_is_rejected_and_changes_nothing(gn, bad, exc):
    before = gn.buffer_cache_info()["limit_bytes"]
    with pytest.raises(exc, match="nbytes"):
        gn.set_buffer_cache_limit(bad)
    assert gn.buffer_cache_info()["limit_bytes"] == before


def test_concurrent_calls_share_the_cache_safely(gn, rng):
    gn.set_buffer_cache_limit(8 * MB)
    xs = [_x(rng, C=32, S=(32 + 8 * i, 64)) for i in range(4)]
    refs = [ref_forward(x, 8)[0] for x in xs]
    errors = []

    def work(k):
        try:
            for it in range(30):
                i = (k + it) % len(xs)
                y = gn.group_norm(xs[i], 8, num_threads=1)
                assert_close(y, refs[i], 1e-5, 1e-5)
                y[...] = np.nan
                del y
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    info = gn.buffer_cache_info()
    assert info["cached_bytes"] <= 8 * MB
    assert info["hits"] > 0


# ----------------------------------------------------------------- the limit's spelling
@pytest.mark.parametrize("text,limit", [("1048576", 1 << 20), ("512MiB", 512 << 20), ("512M", 512 << 20),
                                        ("2g", 2 << 30), ("64KiB", 64 << 10), ("1GB", 10**9), (" 0 ", 0),
                                        ("300kb", 300000), ("7B", 7)])
def test_buffer_cache_env_accepts_byte_counts(text, limit):
    import subprocess, sys
    code = ("import warnings; warnings.simplefilter('error'); import groupnorm; "
            "print(groupnorm.buffer_cache_info()['limit_bytes'])")
    env = dict(__import__("os").environ, GROUPNORM_BUFFER_CACHE_BYTES=text)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout.split()[-1]) == limit


@pytest.mark.parametrize("text", ["-1", "1e9", "abc", "512 MiBs", "1.5G", "99999999999999999999", "0x10"])
def test_buffer_cache_env_rejects_other_values_with_a_warning(text):
    import subprocess, sys
    code = ("import warnings\nwith warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n    import groupnorm\n"
            "print(groupnorm.buffer_cache_info()['limit_bytes'])\nprint([str(x.message) for x in w])")
    env = dict(__import__("os").environ, GROUPNORM_BUFFER_CACHE_BYTES=text)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    limit, messages = p.stdout.strip().splitlines()
    assert int(limit) == 512 << 20  # the default, not a misread value
    assert "GROUPNORM_BUFFER_CACHE_BYTES" in messages and repr(text)[1:-1] in messages


@pytest.mark.parametrize("n,kind", [(2**64, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_set_buffer_cache_limit_rejects_bad_sizes_by_name(gn, n, kind):
    before = gn.buffer_cache_info()["limit_bytes"]
    with pytest.raises(kind, match="nbytes"):
        gn.set_buffer_cache_limit(n)
    assert gn.buffer_cache_info()["limit_bytes"] == before
