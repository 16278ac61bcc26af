"""The verifier's check (`node.verification.stage_check.check_stage`) on honest work from the node's executor and on
every cheat of `attacks.py`, with the shipped FP32 profile."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.attacks import ATTACKS
from verifier.profiles import FP32


def test_honest_stages_pass_whether_computed_by_cached_decode_prefill_one_thread_or_chunks(bench, requests_):
    for req in requests_:
        for task in bench.tasks(req, rounded=False):
            check = bench.verify(task, FP32)
            assert check.passed, (task.stage, check.rows.reasons, check.tokens)
            assert check.positions == req.ids.shape[0]
            if task.tokens is not None:
                assert check.tokens is not None and check.tokens.checked == len(req.tokens)


def test_cached_decode_rows_differ_from_the_prefill_yet_pass(bench, requests_):
    decoded = next(r for r in requests_ if r.tokens and r.outputs[0].shape[0] > 1)
    task = bench.tasks(decoded, rounded=False)[1]
    check = bench.verify(task, FP32)
    assert check.passed
    assert check.rows.stats.positions == decoded.ids.shape[0]


@pytest.mark.parametrize("attack", ATTACKS)
def test_each_attack_fails_the_check_on_every_stage_it_applies_to(bench, requests_, attack):
    rng = np.random.default_rng(1)
    checked = 0
    for i, req in enumerate(requests_[:3]):
        other = requests_[(i + 1) % len(requests_)]
        for task in bench.tasks(req, rounded=False):
            if attack == "random_tokens" and task.tokens is None:
                continue
            check = bench.verify(bench.attack(task, req, attack, other, rng), FP32)
            assert not check.passed, f"{attack} on stage {task.stage} of request {i} passed"
            if attack == "random_tokens":
                assert check.rows.passed and not check.tokens.passed
            checked += 1
    assert checked >= 3
