"""Fixtures and hypothesis strategies for the scheduler tests: small random snapshots."""

from __future__ import annotations

import pytest

from scheduler.model import Snapshot
from scheduler.schema import parse_snapshot
from scheduler.sim.catalogue import MODELS
from scheduler.sim.cluster import gen_cluster


@pytest.fixture
def mixed_70b() -> Snapshot:
    """24 mixed GPUs in two regions serving a Llama-3-70B-like model."""
    return parse_snapshot(gen_cluster(24, "mixed", ["us-east", "eu-west"], seed=7),
                          MODELS["llama3-70b"])


@pytest.fixture
def smollm_cluster() -> Snapshot:
    return parse_snapshot(gen_cluster(6, "consumer", ["us-east"], seed=3), MODELS["smollm2-135m"])
