"""Property-based fuzzing of the split-phase API (hypothesis): Moments,
merge_moments, BackwardSums, merge_backward_sums, group_norm(stats=) and
group_norm_backward(sums=). Any input gives a correct result (against an
independent float64 reference, or exact integer arithmetic for counts) or a
ValueError/TypeError that names the argument; never another exception, a
crash, or a plausible wrong number.

Examples per test: GROUPNORM_FUZZ_EXAMPLES (default 150), as tests/test_fuzz.py."""
import os

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import assert_close, ref_backward, ref_forward, ref_stats
import groupnorm as gn

EXAMPLES = int(os.environ.get("GROUPNORM_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
I64_MAX = 2**63 - 1

# count entries: ints of every size and sign, floats of every kind
count_values = st.one_of(st.integers(-2**64, 2**64), st.integers(0, 1000),
                         st.floats(allow_nan=True, allow_infinity=True),
                         st.sampled_from([0.0, 3.0, 2.5, 2.0**53, 2.0**63, -0.0]))
real_values = st.floats(allow_nan=True, allow_infinity=True, width=64)


def _as_count_array(values):
    if all(isinstance(v, int) for v in values):
        if all(-2**63 <= v <= I64_MAX for v in values):
            return np.array(values, np.int64)
        if all(0 <= v < 2**64 for v in values):
            return np.array(values, np.uint64)
        return np.array(values, dtype=object)  # no integer dtype holds them: not a count array
    return np.array([float(v) for v in values])


@FUZZ
@given(st.lists(count_values, min_size=2, max_size=2), st.lists(real_values, min_size=2, max_size=2),
       st.lists(real_values, min_size=2, max_size=2))
def test_moments_accepts_exactly_the_element_counts(counts, means, m2s):
    c = _as_count_array(counts).reshape(1, 2)
    def is_count(v):
        if isinstance(v, int):
            return 0 <= v <= I64_MAX
        return bool(np.isfinite(v)) and v == np.floor(v) and 0 <= v < 2.0**63

    valid = c.dtype != object and all(is_count(v) for v in counts) and not any(v < 0 for v in m2s)
    try:
        m = gn.Moments(c, np.array([means]), np.array([m2s]))
    except (ValueError, TypeError) as e:
        assert "count" in str(e) or "m2" in str(e), str(e)
        assert not valid, f"rejected a valid input: {e}"
        return
    assert valid, f"accepted counts {counts}, m2 {m2s}"
    assert m.count.dtype == np.int64
    assert m.count[0].tolist() == [int(v) for v in counts]


@FUZZ
@given(st.lists(st.lists(st.integers(0, I64_MAX), min_size=3, max_size=3), min_size=1, max_size=4),
       st.integers(0, 2**32))
def test_merge_counts_are_exact_or_an_overflow_error(count_rows, seed):
    r = np.random.default_rng(seed)
    parts = [gn.Moments(np.array([row], np.int64), r.standard_normal((1, 3)), r.uniform(0, 10, (1, 3)))
             for row in count_rows]
    totals = [sum(col) for col in zip(*count_rows)]
    try:
        merged = gn.merge_moments(parts)
    except ValueError as e:
        assert "does not fit in int64" in str(e)
        assert max(totals) > I64_MAX, f"overflow reported for totals {totals}"
        return
    assert max(totals) <= I64_MAX
    assert merged.count[0].tolist() == totals


def _split_rows(x, channels_last, cuts):
    """Tiles of x along its first spatial axis."""
    axis = 1 if channels_last else 2
    return np.split(x, cuts, axis=axis)


@FUZZ
@given(st.integers(1, 3), st.sampled_from([(4, 2), (6, 3), (8, 8), (5, 1)]), st.integers(1, 9), st.integers(1, 3),
       st.booleans(), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32), st.floats(-1e4, 1e4))
def test_tiles_merged_normalize_like_the_whole(n, cg, rows, cols, channels_last, dtype, seed, offset):
    C, G = cg
    r = np.random.default_rng(seed)
    shape = (n, rows, cols, C) if channels_last else (n, C, rows, cols)
    x = (r.standard_normal(shape) + offset).astype(dtype)
    w, b = r.standard_normal(C).astype(dtype), r.standard_normal(C).astype(dtype)
    cuts = sorted(r.choice(np.arange(1, rows), size=min(rows - 1, int(r.integers(0, 3))), replace=False)) \
        if rows > 1 else []
    tiles = _split_rows(x, channels_last, cuts)
    merged = gn.merge_moments([gn.moments(t, G, channels_last=channels_last) for t in tiles])
    assert merged.count[0].tolist() == [C // G * rows * cols] * G
    mean_ref, rstd_ref = ref_stats(x, G, channels_last=channels_last)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    assert_close(merged.mean, mean_ref, tol, tol * (1 + abs(offset)))
    y_ref = ref_forward(x, G, w, b, channels_last=channels_last)[0]
    ys = np.concatenate([gn.group_norm(t, G, w, b, channels_last=channels_last, stats=merged) for t in tiles],
                        axis=1 if channels_last else 2)
    scale = 1 + abs(offset) * (rstd_ref.max() if rstd_ref.size else 1)
    assert_close(ys, y_ref, 1e-10 if dtype == np.float64 else 1e-5 * scale, 1e-10 if dtype == np.float64
                 else 1e-5 * scale)


STATS_MUTATIONS = ["wrong_shape", "wrong_type", "nan_mean", "negative_count", "mean_rstd_pair", "pair_wrong_shape"]


@FUZZ
@given(st.sampled_from(STATS_MUTATIONS), st.integers(0, 2**32))
def test_stats_argument_gives_a_right_result_or_a_named_error(mutation, seed):
    r = np.random.default_rng(seed)
    x = r.standard_normal((2, 8, 5)).astype(np.float32)
    m = gn.moments(x, 4)
    y_ref, mean_ref, rstd_ref = ref_forward(x, 4)
    out = np.full_like(x, np.nan)
    if mutation == "wrong_shape":
        stats = gn.Moments(np.ones((2, 2), np.int64), np.zeros((2, 2)), np.zeros((2, 2)))
    elif mutation == "wrong_type":
        stats = {"mean": m.mean}
    elif mutation == "nan_mean":
        stats = gn.Moments(m.count, np.where(np.arange(4) == 1, np.nan, m.mean), m.m2)
    elif mutation == "negative_count":
        try:
            stats = gn.Moments(-m.count, m.mean, m.m2)
        except ValueError as e:
            assert "count" in str(e)
            return
        raise AssertionError("a negative count was accepted")
    elif mutation == "mean_rstd_pair":
        stats = m.mean_rstd()
    else:
        stats = (np.zeros((3, 4), np.float32), np.ones((3, 4), np.float32))
    try:
        y = gn.group_norm(x, 4, stats=stats, out=out)
    except (ValueError, TypeError) as e:
        assert mutation in ("wrong_shape", "wrong_type", "pair_wrong_shape"), f"{mutation}: {e}"
        assert "stats" in str(e) or "mean" in str(e), str(e)
        assert np.isnan(out).all(), "an output was written before the error"
        return
    assert mutation in ("nan_mean", "mean_rstd_pair"), f"{mutation} was accepted"
    if mutation == "nan_mean":
        g = np.arange(8) // 2  # channels of group 1 are NaN, the others right
        assert np.isnan(y[:, g == 1]).all()
        assert_close(y[:, g != 1], y_ref[:, g != 1], 1e-5, 1e-5)
    else:
        assert_close(y, y_ref, 1e-5, 1e-5)


@FUZZ
@given(st.integers(1, 6), st.integers(0, 2**32), st.sampled_from(["ok", "fewer_spatial", "wrong_shape",
                                                                  "not_sums", "huge_spatial"]))
def test_sums_argument_gives_a_right_result_or_a_named_error(rows, seed, mutation):
    r = np.random.default_rng(seed)
    x = r.standard_normal((2, 6, rows, 3)).astype(np.float64)
    gy = r.standard_normal(x.shape)
    w, b = r.standard_normal(6), r.standard_normal(6)
    _, mean, rstd = gn.group_norm(x, 3, w, b, return_stats=True)
    tiles = np.split(x, [rows // 2], axis=2) if rows > 1 else [x]
    gtiles = np.split(gy, [rows // 2], axis=2) if rows > 1 else [gy]
    sums = gn.merge_backward_sums([gn.backward_sums(g, t, mean, rstd, 3, w, b) for g, t in zip(gtiles, tiles)])
    if mutation == "fewer_spatial":
        sums = gn.BackwardSums(sums.sum_dz, sums.sum_dz_xc, 0)
    elif mutation == "wrong_shape":
        sums = gn.BackwardSums(sums.sum_dz[:, :3], sums.sum_dz_xc[:, :3], sums.spatial)
    elif mutation == "not_sums":
        sums = (sums.sum_dz, sums.sum_dz_xc)
    elif mutation == "huge_spatial":
        try:
            gn.BackwardSums(sums.sum_dz, sums.sum_dz_xc, 2.0**70)
        except ValueError as e:
            assert "spatial" in str(e)
            return
        raise AssertionError("a spatial count of 2**70 was accepted")
    gx_ref, gw_ref, gb_ref = ref_backward(gy, x, 3, w, b)
    try:
        parts = [gn.group_norm_backward(g, t, mean, rstd, 3, w, b, sums=sums) for g, t in zip(gtiles, tiles)]
    except (ValueError, TypeError) as e:
        assert mutation != "ok", str(e)
        assert "sums" in str(e), str(e)
        return
    assert mutation == "ok", f"{mutation} was accepted"
    gx = np.concatenate([p[0] for p in parts], axis=2)
    assert_close(gx, gx_ref, 1e-9, 1e-9)
    assert_close(parts[0][1], gw_ref, 1e-9, 1e-9)
    assert_close(parts[0][2], gb_ref, 1e-9, 1e-9)
