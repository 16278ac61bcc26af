"""Calibration on a tiny random Llama: thresholds fitted on benign noise pass held-out benign pairs,
and every attack fails them — for freshly fitted thresholds and for the shipped profiles.

Benign noise: a worker computing the stage repeated, on 1 thread, in a batch of 4, by cached decode
or with eager attention, against a verifier's one sdpa prefill — from the worker's exact input rows
and from their bf16 rounding (what the previous stage's commitment authenticates). Attacks: other
seed weights, int8 / 4-bit fake-quantized weights in one or all of the stage's layers, a skipped
layer, noise-added rows, one forged row, rows from another request.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.lab import ATTACKS, TinyLab, attack_pairs, benign_pairs, prompts, tiny_llama
from verifier.calibrate import (
    FitOptions,
    chunk_k,
    clopper_pearson_upper,
    evaluate,
    fit_thresholds,
    fit_token_tolerance,
)
from verifier.errors import ToleranceError
from verifier.profiles import BF16, FP32
from verifier.tolerance import judge

FIT = prompts(2, 24, seed=1)
HELD = torch.cat([prompts(1, 32, seed=2), prompts(1, 32, seed=3)])


def just_pairs(named):
    return [(c, r) for _, c, r in named]


@pytest.fixture(scope="module")
def fitted(lab):
    fit = benign_pairs(lab, FIT) + benign_pairs(lab, FIT, rounded_inputs=True)
    return fit_thresholds(just_pairs(fit))


@pytest.fixture(scope="module")
def held_benign(lab):
    return benign_pairs(lab, HELD) + benign_pairs(lab, HELD, rounded_inputs=True)


def test_benign_noise_is_real_but_small(held_benign):
    unequal = [float((c != r).mean()) for _, c, r in held_benign]
    assert max(unequal) > 0  # decode / eager / rounded inputs do change float32 rows
    assert all(judge(c, r, FP32).stats.worst_chunk_bad <= FP32.chunk_max_bad for _, c, r in held_benign)


def test_thresholds_fitted_on_benign_pairs_pass_every_held_out_benign_pair(fitted, held_benign):
    ev = evaluate(just_pairs(held_benign), fitted)
    assert ev.passed == ev.trials == len(held_benign), ev.reasons


def test_the_shipped_fp32_profile_passes_every_held_out_benign_pair(held_benign):
    ev = evaluate(just_pairs(held_benign), FP32)
    assert ev.passed == ev.trials, ev.reasons


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("rounded", [False, True], ids=["exact-inputs", "rounded-inputs"])
def test_every_attack_fails_the_fitted_thresholds_and_the_shipped_profile(lab, fitted, attack, rounded):
    batch = HELD if attack == "other_request" else HELD[:1]  # replaying needs another request
    named = attack_pairs(lab, batch, attack, rounded_inputs=rounded)
    for name, c, r in named:
        for th in (fitted, FP32):
            v = judge(c, r, th)
            assert not v.passed, f"{name} passed: {v.stats}"


def test_the_shipped_bf16_profile_passes_bf16_noise_and_catches_coarse_attacks():
    lab = TinyLab(tiny_llama(0, dtype=torch.bfloat16))
    ids = prompts(1, 24, seed=4)
    benign = benign_pairs(lab, ids, variants=("batch4", "decode", "eager"))
    assert any((c != r).any() for _, c, r in benign)
    ev = evaluate(just_pairs(benign), BF16)
    assert ev.passed == ev.trials, ev.reasons
    for attack in ("other_seed", "int4_one", "skip_layer", "other_request", "forged_row"):
        for name, c, r in attack_pairs(lab, torch.cat([ids, prompts(1, 24, seed=5)]), attack):
            assert not judge(c, r, BF16).passed, name


# ── the fitting itself, on synthetic pairs ─────────────────────────────────────────────────────────
def noisy_pairs(noise: float, n: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        r = rng.standard_normal((64, 128)).astype(np.float32)
        out.append((r + noise * rng.standard_normal(r.shape).astype(np.float32), r))
    return out


def test_noisier_benign_pairs_give_looser_thresholds():
    tight, loose = fit_thresholds(noisy_pairs(1e-6)), fit_thresholds(noisy_pairs(3e-2))
    assert tight.chunk_max_ulp < loose.chunk_max_ulp
    assert tight.max_rel_err < loose.max_rel_err
    assert tight.min_exponent_agreement > loose.min_exponent_agreement
    for th, pairs in ((tight, noisy_pairs(1e-6, seed=1)), (loose, noisy_pairs(3e-2, seed=1))):
        assert evaluate(pairs, th).pass_rate == 1.0


def test_token_tolerances_grow_with_logit_noise_and_cover_the_noise_they_were_fitted_on():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((16, 50)) * 3
    small = fit_token_tolerance([(base + 1e-6 * rng.standard_normal(base.shape), base)])
    large = fit_token_tolerance([(base + 1e-2 * rng.standard_normal(base.shape), base)])
    assert small[0] < large[0] and small[1] < large[1]
    assert large[0] >= 2 * 1e-2  # at least twice the largest logit difference
    th = fit_thresholds(noisy_pairs(1e-6), logit_pairs=[(base + 1e-2, base)])
    assert th.logit_tol == pytest.approx(2 * 1e-2 * FitOptions().margin + FitOptions().token_floor)
    with pytest.raises(ToleranceError, match="one shape"):
        fit_token_tolerance([(base, base[:, :10])])


def test_pairs_too_far_apart_to_be_benign_are_refused():
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal((8, 64)), rng.standard_normal((8, 64)))]
    with pytest.raises(ToleranceError, match="really benign"):
        fit_thresholds(pairs)
    with pytest.raises(ToleranceError, match="at least one"):
        fit_thresholds([])


def test_chunk_k_is_the_binomial_tail_quantile():
    assert chunk_k(0.0, 1e-9) == 0
    assert chunk_k(1e-3, 1e-9) == 4  # P(5 or more of 32 at 1e-3) ~ 2e-10
    assert chunk_k(1.0, 1e-9) == 32


def test_clopper_pearson_bound_of_zero_failures_in_a_thousand_trials():
    assert clopper_pearson_upper(0, 1000) == pytest.approx(1 - 0.05 ** (1 / 1000), rel=1e-9)
    with pytest.raises(ToleranceError):
        clopper_pearson_upper(3, 2)


def test_fit_options_are_validated():
    with pytest.raises(ToleranceError, match="margin"):
        FitOptions(margin=0.5)
