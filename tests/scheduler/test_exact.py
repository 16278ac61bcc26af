"""The exact reference: never worse than the heuristic, valid, and refuses large instances."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from scheduler.allocate import allocate, plan_score
from scheduler.errors import CannotPlace, InvalidInput
from scheduler.exact import MAX_NODES, allocate_exact
from scheduler.model import Snapshot
from scheduler.schema import check_plan, parse_snapshot
from scheduler.sim.catalogue import MODELS
from scheduler.sim.cluster import gen_cluster

from .conftest import snapshots


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(max_nodes=5))
def test_exact_is_never_worse_than_the_heuristic_and_always_valid(snap: Snapshot) -> None:
    try:
        fast = allocate(snap)
    except CannotPlace:
        with pytest.raises(CannotPlace):
            allocate_exact(snap)
        return
    best = allocate_exact(snap)
    assert check_plan(best, snap) == []
    assert plan_score(snap, best) >= plan_score(snap, fast) * (1 - 1e-9)
    assert best.estimate["max_latency_ms"] <= snap.params.latency_bound_ms + 1e-9


def test_exact_beats_or_matches_the_heuristic_on_a_mixed_70b_cluster() -> None:
    snap = parse_snapshot(gen_cluster(7, "mixed", ["us-east", "eu-west"], seed=1),
                          MODELS["llama3-70b"])
    fast, best = allocate(snap), allocate_exact(snap)
    assert plan_score(snap, best) >= plan_score(snap, fast)
    assert check_plan(best, snap) == []


def test_exact_refuses_more_nodes_than_it_can_enumerate() -> None:
    snap = parse_snapshot(gen_cluster(MAX_NODES + 1, seed=0), MODELS["smollm2-135m"])
    with pytest.raises(InvalidInput, match=f"at most {MAX_NODES}"):
        allocate_exact(snap)
