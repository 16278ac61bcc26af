"""Token checks: greedy argmax with near-tie tolerance, and sampling reproduced from the committed seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.sampling import Sampling, sample_token, step_seed
from tests.support.lab import prompts
from verifier.errors import TokenCheckError
from verifier.profiles import FP32
from verifier.tokens import _uniform, check_tokens, reproduce_token, token_acceptable


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.floats(0.05, 3.0), st.floats(0.05, 1.0), st.integers(0, 2**64 - 1),
       st.integers(1, 10_000))
def test_the_reproduced_token_is_the_one_the_node_samples(logit_seed, temperature, top_p, seed, position):
    executor = pytest.importorskip("node.runtime.executor")
    logits = torch.from_numpy(np.random.default_rng(logit_seed).standard_normal(300).astype(np.float32) * 3)
    node = executor.sample_token(logits, executor.Sampling(temperature, top_p, seed), position)
    assert reproduce_token(logits, Sampling(temperature, top_p, seed), position) == node
    # one rule: the executor samples with protocol.sampling's function, seeded per position
    assert executor.sample_token is sample_token
    assert 0 <= step_seed(seed, position) < 2**63


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([-1.0, 0.0, 2.5, 2.5, float("inf"), -float("inf"), float("nan")]),
                min_size=1, max_size=12), st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_greedy_picks_torch_argmax_index_ties_nan_and_infinities_included(values, dtype):
    row = torch.tensor(values, dtype=dtype)
    assert sample_token(row, Sampling(), 0) == int(torch.argmax(row))


def test_greedy_accepts_the_argmax_and_exact_or_near_ties_only():
    row = np.array([0.0, 5.0, 5.0, 4.9995, 4.0], dtype=np.float32)
    spec = Sampling()
    assert reproduce_token(row, spec, 1) == 1  # lowest id on ties
    assert [token_acceptable(row, t, spec, 1, 1e-3, 0) for t in range(5)] == [False, True, True, True, False]
    assert not token_acceptable(row, 7, spec, 1, 1e-3, 0)  # outside the vocabulary


def test_sampling_tolerates_a_draw_that_lands_within_the_mass_tolerance_of_a_boundary():
    spec, pos = Sampling(temperature=1.0, top_p=1.0, seed=42), 17
    u = _uniform(spec, pos)
    p = np.array([u + 2e-5, (1 - u) / 2, (1 - u) / 2 - 2e-5], dtype=np.float64)  # boundary just above u
    row = np.log(p).astype(np.float32)
    assert reproduce_token(row, spec, pos) == 0
    assert token_acceptable(row, 1, spec, pos, 0, mass_tol=1e-4)  # the boundary is within noise
    assert not token_acceptable(row, 1, spec, pos, 0, mass_tol=1e-6)
    assert not token_acceptable(row, 2, spec, pos, 0, mass_tol=1e-4)


def test_sampling_tolerates_a_token_kept_only_by_a_top_p_cut_within_the_tolerance():
    # sorted masses 0.3, 0.5 - 3e-5, 0.15, then 7 small ones: top_p = 0.5 keeps three tokens, but a
    # noise of 3e-5 in the cumulative mass would keep only two and move the draw's target.
    p = np.array([0.3, 0.2 - 3e-5, 0.15] + [(0.35 + 3e-5) / 7] * 7)
    row = np.log(p).astype(np.float32)
    seed = next(s for s in range(1000) if _uniform(Sampling(1.0, 0.5, s), 9) > 0.8)
    spec = Sampling(temperature=1.0, top_p=0.5, seed=seed)
    assert reproduce_token(row, spec, 9) == 2  # three kept: the draw lands on the third
    assert token_acceptable(row, 1, spec, 9, 0, mass_tol=1e-4)  # two kept: it lands on the second
    assert not token_acceptable(row, 1, spec, 9, 0, mass_tol=1e-6)
    assert not token_acceptable(row, 0, spec, 9, 0, mass_tol=1e-4)
    assert not token_acceptable(row, 3, spec, 9, 0, mass_tol=1e-4)


def test_honest_tokens_from_cached_decode_pass_against_prefill_logits_and_random_tokens_fail(lab):
    ids = prompts(1, 40, 5)[0]  # held out: the profile's token tolerances were fitted on other prompts
    decode_logits = lab.logits(ids, decode=True)  # the worker: cached decode
    prefill_logits = lab.logits(ids)  # the verifier: one prefill
    assert np.abs(decode_logits - prefill_logits).max() > 0  # there is noise to tolerate
    for spec in (Sampling(), Sampling(temperature=0.8, top_p=0.9, seed=1234)):
        tokens = [reproduce_token(decode_logits[i], spec, i + 1) for i in range(len(ids))]
        v = check_tokens(prefill_logits, tokens, 1, spec, FP32.logit_tol, FP32.mass_tol)
        assert v.passed and v.checked == len(ids)
        rng = np.random.default_rng(0)
        forged = [int(t) for t in rng.integers(0, prefill_logits.shape[1], len(tokens))]
        bad = check_tokens(prefill_logits, forged, 1, spec, FP32.logit_tol, FP32.mass_tol)
        assert not bad.passed and len(bad.mismatches) > len(tokens) // 2
        pos, claimed, reproduced = bad.mismatches[0]
        assert claimed == forged[pos - 1] and reproduced == reproduce_token(prefill_logits[pos - 1], spec, pos)


def test_logits_may_come_from_a_callable():
    rows = np.eye(5, dtype=np.float32) * 10
    v = check_tokens(lambda i: rows[i], [0, 1, 2, 4], 3, Sampling(), 1e-3, 1e-4)
    assert not v.passed and v.mismatches == ((6, 4, 3),)
    assert v.to_json()["mismatches"] == [{"position": 6, "claimed": 4, "reproduced": 3}]


@pytest.mark.parametrize("kwargs, match", [(dict(temperature=-1), "temperature"),
                                           (dict(top_p=0), "top_p"), (dict(seed=2**64), "seed")])
def test_bad_sampling_parameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):  # pydantic's ValidationError: one Sampling type
        Sampling(**kwargs)


def test_logits_of_the_wrong_shape_or_with_nan_are_refused():
    with pytest.raises(TokenCheckError, match=r"\(2, V\) for 2 tokens"):
        check_tokens(np.zeros((3, 4)), [0, 1], 1, Sampling(), 0, 0)
    with pytest.raises(TokenCheckError, match="NaN"):
        reproduce_token(np.array([0.0, np.nan]), Sampling(), 1)
    with pytest.raises(TokenCheckError, match="first_position"):
        check_tokens(np.zeros((1, 4)), [0], 0, Sampling(), 0, 0)
