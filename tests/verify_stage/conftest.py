"""Fixtures for verify-stage tests: the served tiny Llama, two substitute models, and a `Bench` over
them, built once per session in tmp dirs; a few honest requests run through the node's executor."""

from __future__ import annotations

import random

import pytest

from tests.support.attacks import SAMPLINGS, VARIANTS, Bench, build_models


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("verify-stage-models"))


@pytest.fixture(scope="session")
def bench(models) -> Bench:
    return Bench(models)


@pytest.fixture(scope="session")
def requests_(bench):
    """Honest requests: each variant (cached decode, prefill, 1 thread, chunked) × a sampling mode,
    all 20-token prompts with 8 new tokens (so any two can stand in for each other's rows)."""
    rng = random.Random(5)
    return [bench.run(bench.prompt(rng, 20), 8, SAMPLINGS[i % len(SAMPLINGS)], v)
            for i, v in enumerate(VARIANTS * 2)]
