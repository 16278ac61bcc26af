"""The tolerance statistics, the verdict and the contract's chunk rule, on constructed inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from verifier.chunk_rule import chunk_bad_count, chunk_bad_counts, chunk_passes
from verifier.encoding import bf16_bits, bf16_to_float
from verifier.errors import ToleranceError
from verifier.tolerance import Thresholds, judge, ordered_key, statistics, ulp_distance

ALL = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
FINITE = ALL[(ALL & 0x7F80) != 0x7F80]


def rows(seed: int = 0, shape=(16, 96)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_the_ordered_key_sorts_bf16_patterns_by_value_with_unit_steps():
    vals = bf16_to_float(FINITE)
    order = np.argsort(vals, kind="stable")
    keys = ordered_key(FINITE[order])
    assert (np.diff(keys) >= 0).all()
    distinct = np.unique(keys)
    assert (np.diff(distinct) == 1).all()  # neighbouring values are one ulp apart
    assert ordered_key(np.array([0x0000, 0x8000])).tolist() == [0x8000, 0x8000]  # +0 == -0


def test_a_rounding_flip_across_a_binade_is_one_ulp_and_nan_is_infinitely_far():
    one, below = bf16_bits(np.float32(1.0)), bf16_bits(np.float32(0.99609375))
    assert ulp_distance(one, below) == 1
    assert ulp_distance(np.uint16(0x7FC0), one) > 0xFF00


def test_identical_rows_pass_with_perfect_statistics():
    x = rows()
    v = judge(x, x.copy(), Thresholds())
    assert v.passed and v.reasons == ()
    s = v.stats
    assert s.exponent_agreement == 1.0 and s.frac_unequal == 0.0 and s.rel_err == 0.0
    assert s.worst_chunk_bad == 0 and s.scaled_frac_beyond_k == 0.0


def test_one_ulp_rounding_noise_passes_and_larger_noise_fails_with_reasons():
    x = rows(1)
    tiny = x * (1 + np.float32(1e-6) * rows(2))  # float32-level noise: at most one bf16 flip
    assert judge(tiny, x, Thresholds()).passed
    v = judge(x * (1 + np.float32(0.05) * rows(3)), x, Thresholds())
    assert not v.passed
    assert any("relative error" in r for r in v.reasons)
    assert any("chunk rule" in r for r in v.reasons)


def test_statistics_count_exactly_the_elements_moved_by_known_ulps():
    r = bf16_bits(np.full((4, 64), 1.5, dtype=np.float32))  # 0x3FC0: mantissa 64 of 127
    c = r.copy()
    c[0, :8] += 2  # 8 elements two ulps up, exponent unchanged
    c[1, 0] = bf16_bits(np.float32(3.0))  # one element a binade up
    s = statistics(c, r, ulp_k=1)
    assert s.frac_unequal == 9 / 256
    assert s.exponent_agreement == 255 / 256 and s.min_row_exponent_agreement == 63 / 64
    assert s.mantissa_mean_ulp == 16 / 255 and s.mantissa_max_ulp == 2
    assert s.frac_beyond_k == 9 / 256 and s.max_row_frac_beyond_k == 8 / 64
    assert s.max_ulp == 128  # 1.5 → 2.0 is 64 patterns, 2.0 → 3.0 another 64
    assert s.worst_chunk_bad == 8  # 2 ulps of 1.5 is 2 scale ulps in row 0 (scale 1.5 there too)


def test_forging_a_single_row_among_many_fails_on_the_per_row_statistics():
    x = rows(4, (512, 64))
    forged = x.copy()
    forged[300] = rows(5, (1, 64))[0]
    v = judge(forged, x, Thresholds())
    assert not v.passed
    s = v.stats
    assert s.scaled_frac_beyond_k < 0.01 < 0.9 < s.max_row_scaled_frac_beyond_k  # diluted overall, not per row
    assert any(r.startswith("worst row") for r in v.reasons)


def test_nan_in_claimed_rows_is_a_failed_verdict_not_a_crash():
    x = rows(6)
    claimed = bf16_bits(x)
    claimed[3, 7] = 0x7FC0
    v = judge(claimed, x, Thresholds())
    assert not v.passed and v.stats.nonfinite_claimed == 1
    assert "claimed rows hold 1 NaN or infinite values" in v.reasons


def test_rows_of_different_shapes_or_empty_rows_are_an_error():
    with pytest.raises(ToleranceError, match=r"\(16, 96\).*\(16, 95\)"):
        statistics(rows(), rows()[:, :95])
    with pytest.raises(ToleranceError, match="non-empty"):
        statistics(np.zeros((0, 8), np.float32), np.zeros((0, 8), np.float32))


def test_a_single_row_vector_is_compared_as_one_row():
    x = rows()[0]
    assert statistics(x, x).positions == 1


@pytest.mark.parametrize("field, value", [("min_exponent_agreement", 1.5), ("max_rel_err", -1.0),
                                          ("chunk_max_bad", 33), ("max_failing_chunk_frac", float("nan"))])
def test_nonsensical_thresholds_are_refused(field, value):
    with pytest.raises(ToleranceError, match=field):
        Thresholds(**{field: value})


def test_thresholds_round_trip_through_json_and_unknown_fields_are_refused():
    th = Thresholds(chunk_max_ulp=6)
    assert Thresholds.from_json(th.to_json()) == th
    with pytest.raises(ToleranceError, match="unknown threshold fields"):
        Thresholds.from_json({**th.to_json(), "typo": 1})


# ── the chunk rule ─────────────────────────────────────────────────────────────────────────────────
def chunk(values) -> np.ndarray:
    return bf16_bits(np.asarray(values, dtype=np.float32))


def test_the_chunk_rule_measures_differences_in_ulps_of_the_chunks_largest_element():
    base = np.full(32, 0.5, dtype=np.float32)
    base[0] = 4.0  # scale: exponent of 4.0, whose ulp is 2**-5
    other = base.copy()
    other[5] = 0.5 + 2**-5  # 1 scale ulp (8 of its own ulps) away
    other[6] = 0.5 + 2 * 2**-5  # 2 scale ulps away
    assert chunk_bad_count(chunk(base), chunk(other), max_ulp=1) == 1
    assert chunk_bad_count(chunk(base), chunk(other), max_ulp=2) == 0


def test_a_sign_flip_near_zero_is_not_bad_but_a_sign_flip_of_a_large_value_is():
    base = np.linspace(-1, 1, 32).astype(np.float32)
    base[10] = 1e-6
    other = base.copy()
    other[10] = -1e-6
    assert chunk_bad_count(chunk(base), chunk(other), 1) == 0
    other[20] = -other[20]
    assert chunk_bad_count(chunk(base), chunk(other), 1) == 1


def test_inflating_one_value_cannot_widen_the_tolerance_of_the_others():
    honest = np.linspace(0.1, 1.0, 32).astype(np.float32)
    cheat = honest * 1.5  # every value 50 % off...
    cheat[0] = 1e30  # ...hidden behind a huge value: the scale is the smaller side's
    assert chunk_bad_count(chunk(cheat), chunk(honest), 2) == 32
    assert chunk_bad_count(chunk(np.zeros(32)), chunk(honest), 2) == 32  # deflating fails too


def test_nan_or_infinity_on_either_side_counts_as_bad():
    x = chunk(np.ones(32))
    y = x.copy()
    y[[1, 2]] = [0x7FC0, 0xFF80]
    assert chunk_bad_count(x, y, 100) == 2 == chunk_bad_count(y, x, 100)


def test_the_chunk_rule_passes_exactly_up_to_k_bad_elements():
    x = np.ones(32, dtype=np.float32)
    for n in range(6):
        y = x.copy()
        y[:n] = 2.0
        assert chunk_passes(chunk(x), chunk(y), 1, 3) == (n <= 3)


@given(st.lists(st.integers(0, 0xFFFF), min_size=32, max_size=32))
def test_a_chunk_is_never_bad_against_itself_unless_it_holds_nan_or_infinity(values):
    c = np.array(values, dtype=np.uint16)
    assert chunk_bad_count(c, c, 0) == int(((c & 0x7F80) == 0x7F80).sum())


def test_the_vectorized_rule_equals_the_single_chunk_rule_and_ignores_padding():
    a = bf16_bits(rows(7, (5, 70)))
    b = bf16_bits(rows(7, (5, 70)) * np.float32(1.01))
    counts = chunk_bad_counts(a, b, 1)
    assert counts.shape == (5, 3)
    pa, pb = np.zeros((5, 96), np.uint16), np.zeros((5, 96), np.uint16)
    pa[:, :70], pb[:, :70] = a, b
    for p in range(5):
        for k in range(3):
            assert counts[p, k] == chunk_bad_count(pa[p, 32 * k:32 * k + 32], pb[p, 32 * k:32 * k + 32], 1)


def test_chunks_of_the_wrong_size_are_an_error():
    with pytest.raises(ToleranceError, match="32 bf16 values"):
        chunk_bad_count(np.zeros(31, np.uint16), np.zeros(31, np.uint16), 1)
