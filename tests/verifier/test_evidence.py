"""Measurements, the proof-grade verdict, profiles (JSON, hash) and the referee, on constructed rows."""

from __future__ import annotations

import numpy as np
import pytest

from verifier.calibrate import D_CANDIDATES, fit_depth_exponent, fit_profile
from verifier.chunk_rule import chunk_bad_mask, chunk_scaled_distance, worst_chunk_counts
from verifier.encoding import bf16_bits
from verifier.errors import ToleranceError
from verifier.evidence import Profile, ProofLimits, assess, measure, proof_verdict
from verifier.profiles import SHIPPED
from verifier.referee import INCONCLUSIVE, STAGE_GUILTY, VERIFIER_WRONG, referee


def rows(seed: int = 0, shape=(24, 128), massive: bool = False) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    if massive:
        x[:, 3] = 300.0  # a massive-activation channel, as trained models have
    return x


def noisy(x: np.ndarray, rel: float, seed: int = 1) -> np.ndarray:
    g = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    return x + rel * g * np.sqrt((x**2).mean(axis=1, keepdims=True))


def test_the_relative_error_is_per_row_and_ignores_massive_channels():
    x = rows(massive=True)
    c = x + 0.01 * rows(1)  # 1 % of the ordinary channels' scale
    c[:, 3] = x[:, 3]  # the cheat leaves the massive channel alone
    m = measure(c, x, 1, ProofLimits(trim=4))
    untrimmed = measure(c, x, 1, ProofLimits(trim=0))
    assert m.rms_rel_err == pytest.approx(0.01, rel=0.15)
    assert untrimmed.rms_rel_err < m.rms_rel_err / 5  # without trimming the massive channel hides it


def test_scores_are_normalized_by_depth():
    x = rows()
    c = noisy(x, 0.02)
    one, deep = measure(c, x, 1, ProofLimits(), 0.5), measure(c, x, 16, ProofLimits(), 0.5)
    assert deep.score == pytest.approx(one.score / 4)


def test_the_proof_verdict_names_each_violation():
    x = rows()
    lim = ProofLimits(max_row_err=0.05, max_score=0.02, chunk_max_ulp=6, chunk_max_bad=4)
    assert not proof_verdict(measure(noisy(x, 0.001), x, 1, lim), lim).failed
    forged = x.copy()
    forged[5] = rows(9)[5]
    v = proof_verdict(measure(forged, x, 1, lim), lim)
    assert v.failed and any(r.startswith("row 5 ") for r in v.reasons)
    nan = x.copy()
    nan[2, 2] = np.nan
    v = proof_verdict(measure(nan, x, 1, lim), lim)
    assert v.failed and "NaN" in v.reasons[0]


def test_the_chunk_distance_agrees_with_the_chunk_rule_for_every_d():
    a, b = bf16_bits(rows(3, (6, 70))), bf16_bits(noisy(rows(3, (6, 70)), 0.05))
    dist = chunk_scaled_distance(a, b)
    for d in D_CANDIDATES:
        assert ((dist > d << 8) == chunk_bad_mask(a, b, d)).all()
    worst = worst_chunk_counts(a, b, D_CANDIDATES)
    assert list(worst) == sorted(worst, reverse=True)


def test_profiles_round_trip_through_json_and_hash_what_they_judge_by():
    for prof in SHIPPED.values():
        again = Profile.from_json(prof.to_json())
        assert again == prof and again.hash == prof.hash and len(prof.hash) == 32
    p = SHIPPED["bf16"]
    other = Profile.from_json({**p.to_json(), "note": "a different note"})
    assert other.hash == p.hash  # the note is not judged by
    tighter = Profile.from_json({**p.to_json(), "logit_tol": p.logit_tol / 2})
    assert tighter.hash != p.hash
    with pytest.raises(ToleranceError, match="unknown profile fields"):
        Profile.from_json({**p.to_json(), "typo": 1})
    with pytest.raises(ToleranceError, match="precision"):
        Profile.from_json({**p.to_json(), "precision": "int3"})


def test_fitting_on_benign_measurements_gives_a_profile_they_all_pass():
    ms = []
    for n in (1, 2, 4, 8):
        for s in range(6):
            x = rows(s)
            ms.append(measure(noisy(x, 0.002 * n**0.5, s + 10), x, n, ProofLimits(), 0.0, D_CANDIDATES))
    prof = fit_profile(ms, "bf16")
    assert 0.3 < prof.depth_exponent < 0.7  # the noise was made to grow as sqrt(depth)
    for s in range(6):
        x = rows(s + 100)
        for n in (1, 8):
            a = assess(noisy(x, 0.002 * n**0.5, s + 200), x, n, prof)
            assert not a.proof.failed, a.proof.reasons
    cheat = assess(noisy(rows(50), 0.2), rows(50), 1, prof)
    assert cheat.proof.failed and cheat.evalue > 1
    assert fit_depth_exponent([1, 1], [0.1, 0.2]) == 0.0  # one depth: nothing to fit


def test_the_referee_upholds_the_claim_near_the_fp32_reference():
    ref = rows(7)
    honest_bf16, other_bf16 = noisy(ref, 0.003, 1), noisy(ref, 0.003, 2)
    cheat = noisy(ref, 0.5, 3)
    prof = SHIPPED["bf16"]
    assert referee(cheat, honest_bf16, ref, 4, prof).outcome == STAGE_GUILTY
    r = referee(honest_bf16, cheat, ref, 4, prof)
    assert r.outcome == VERIFIER_WRONG and r.closer == "stage"
    assert referee(honest_bf16, other_bf16, ref, 4, prof).outcome == VERIFIER_WRONG  # an accusation of honest rows
    assert referee(cheat, noisy(ref, 0.5, 4), ref, 4, prof).outcome == INCONCLUSIVE


def test_a_vote_is_fraud_only_on_proof_grade_evidence_and_suspect_on_a_high_score():
    from verifier.evidence import FRAUD, PASS, SUSPECT, vote_kind
    from verifier.sprt import suspect_rule

    prof = SHIPPED["bf16"]
    level = suspect_rule(prof.evidence).level
    x = rows(11)
    assert vote_kind(assess(x, x, 1, prof), level) == PASS
    between = (level + prof.proof.max_score) / 2  # above the suspect level, below the proof bound
    assert vote_kind(assess(noisy(x, between, 2), x, 1, prof), level) == SUSPECT
    assert vote_kind(assess(noisy(x, 0.5, 2), x, 1, prof), level) == FRAUD
