"""The sequential test: e-values with honest mean <= 1, the ledger's boundaries, the lifetime bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.verification import SUSPECT_WEIGHT
from verifier.errors import ToleranceError
from verifier.sprt import (
    EvidenceScale,
    Ledger,
    SprtParams,
    Standing,
    checks_to_jail,
    cusum_bound,
    cusum_excursion,
    suspect_rule,
)

SCALE = EvidenceScale(levels=(1.0, 2.0, 3.0), null_tails=(0.3, 0.05, 0.001), alt_tails=(0.9, 0.6, 0.3))


def test_evalues_rise_with_the_score_and_average_to_one_at_the_null_tails():
    e = SCALE.evalues
    assert all(b >= a for a, b in zip(e, e[1:], strict=False))
    assert e[0] < 1 < e[-1]
    assert SCALE.honest_mean_bound() == pytest.approx(1.0)
    assert SCALE.evalue(0.5) == e[0] and SCALE.evalue(2.5) == e[2] and SCALE.evalue(9.0) == e[3]
    assert SCALE.evalue(float("nan")) == e[3]  # a NaN score is the top bin, never the bottom


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3))
def test_any_honest_distribution_within_the_tail_bounds_has_mean_evalue_at_most_one(weights):
    # honest tails below the stated bounds: P(S > t_j) = lambda_j * beta_j with lambda_j in [0, 1]
    tails = sorted((w * b for w, b in zip(weights, SCALE.null_tails, strict=False)), reverse=True)
    probs = [1 - tails[0], tails[0] - tails[1], tails[1] - tails[2], tails[2]]
    mean = sum(p * e for p, e in zip(probs, SCALE.evalues, strict=False))
    assert mean <= 1 + 1e-12


def test_a_scale_whose_evalues_fall_is_refused():
    with pytest.raises(ToleranceError, match="nondecreasing"):
        EvidenceScale((1.0, 2.0), (0.5, 0.1), (0.9, 0.1))
    with pytest.raises(ToleranceError, match="increase"):
        EvidenceScale((2.0, 1.0), (0.5, 0.1), (0.9, 0.5))
    with pytest.raises(ToleranceError, match="> 0"):
        EvidenceScale((1.0,), (0.0,), (0.5,))


def test_the_boundaries_give_the_stated_lifetime_bound():
    p = SprtParams.for_bound(1e-6, 1_000_000)
    assert p.false_ejection_bound() == pytest.approx(1e-6)
    assert p.jail_at == pytest.approx(math.log(2e6)) and p.floor == pytest.approx(math.log(1e6))
    with pytest.raises(ToleranceError):
        SprtParams.for_bound(0.0)


def test_a_cheat_above_the_benign_scores_is_jailed_in_a_few_checks_and_never_slashed():
    p = SprtParams.for_bound(1e-6, 1_000_000)
    n = checks_to_jail(SCALE, p, [3.5] * 50)
    assert n is not None and n <= math.ceil(p.jail_at / math.log(SCALE.evalues[-1]))
    led = Ledger(SCALE, p)
    states = [led.record("op", 3.5) for _ in range(n)]
    assert Standing.FLAGGED in states and states[-1] is Standing.JAILED
    assert led.sample_multiplier("op") == 1.0  # jailed: no more sampling needed
    assert led.record("op", 0.0) is Standing.JAILED  # stays jailed


def test_honest_wealth_sits_at_the_floor_and_a_late_cheat_still_climbs_out():
    p = SprtParams.for_bound(1e-6, 1_000_000)
    led = Ledger(SCALE, p)
    for _ in range(10_000):
        led.record("op", 0.1)
    assert led.operators["op"].log_wealth == pytest.approx(-p.floor)
    n = checks_to_jail(SCALE, p, [0.1] * 10_000 + [3.5] * 100)
    assert n is not None and n - 10_000 <= math.ceil((p.jail_at + p.floor) / math.log(SCALE.evalues[-1]))


def test_honest_operators_drawn_at_the_null_tails_are_almost_never_flagged_and_never_jailed():
    rng = np.random.default_rng(0)
    p = SprtParams.for_bound(1e-6, 1_000_000)
    # scores exactly at the stated honest tails: the worst honest distribution the scale allows
    b = (1.0, *SCALE.null_tails, 0.0)
    probs = [b[j] - b[j + 1] for j in range(4)]
    reps = np.array([0.5, 1.5, 2.5, 3.5])
    flagged = jailed = 0
    for _ in range(300):
        led = Ledger(SCALE, p)
        for s in rng.choice(reps, size=500, p=probs):
            st_ = led.record("op", float(s))
            flagged += st_ is Standing.FLAGGED
        jailed += led.operators["op"].standing is Standing.JAILED
    assert jailed == 0


def test_the_onchain_suspect_rule_meets_its_bound():
    rule = suspect_rule(SCALE, 1e-6, 100_000)
    assert rule.bound <= 1e-6 and rule.weight == SUSPECT_WEIGHT
    assert cusum_bound(rule.tail, rule.weight, rule.count, 100_000) == rule.bound
    # the least threshold for that level: one fewer would break the bound
    assert rule.count == 1 or cusum_bound(rule.tail, rule.weight, rule.count - 1, 100_000) > 1e-6
    # for a deployed threshold the rule picks a level that is safe at it, or never suspects
    for t in (1, 2, rule.count, rule.count + 3):
        r = suspect_rule(SCALE, 1e-6, 100_000, threshold=t)
        assert r.count == t and r.bound <= 1e-6
        assert r.level == math.inf or r.level in SCALE.levels


def test_the_cusum_excursion_matches_a_simulation():
    """The banded solve against the walk itself: +w with chance beta, else -1, from w until 0 or w*T."""
    rng = np.random.default_rng(3)
    for beta, w, t in ((0.05, 4, 3), (0.1, 3, 4)):
        n, hits = 40_000, 0
        for _ in range(n):
            s = w
            while 0 < s < w * t:
                s = s + w if rng.random() < beta else s - 1
            hits += s >= w * t
        p = cusum_excursion(beta, w, t)
        assert abs(hits / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-4


