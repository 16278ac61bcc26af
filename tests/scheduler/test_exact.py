"""The exact reference: never worse than the heuristic, valid, equal to the plain subset DP, solves
16 nodes of a few kinds, and refuses instances with too many count-vector states."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings

from scheduler.allocate import allocate, plan_score
from scheduler.costs import build_cluster
from scheduler.errors import CannotPlace, InvalidInput
from scheduler.exact import MAX_STATES, _solve_bitmask, allocate_exact, count_states, solve_exact
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


def _total(built: list) -> float:
    return sum(b[2].throughput for b in built)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(max_nodes=6))
def test_typed_dp_matches_the_subset_dp_on_random_snapshots(snap: Snapshot) -> None:
    c = build_cluster(snap)
    assert _total(solve_exact(c)[0]) == pytest.approx(_total(_solve_bitmask(c)[0]), rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_typed_dp_matches_the_subset_dp_on_clusters_with_repeated_gpus(seed: int) -> None:
    snap = parse_snapshot(gen_cluster(7, "H100:1,A100-40:1,L40S:1", ["us-east", "eu-west"],
                                      seed=seed), MODELS["llama3-70b"])
    c = build_cluster(snap)
    assert count_states(c) < 2 ** len(c)  # some nodes really are interchangeable
    typed, plain = solve_exact(c), _solve_bitmask(c)
    assert _total(typed[0]) == pytest.approx(_total(plain[0]), rel=1e-12)
    used = sorted(i for order, _, _ in typed[0] for i in order) + typed[1]
    assert sorted(used) == list(range(len(c)))  # every node once: in one replica or standby


def test_a_node_named_in_a_link_override_is_its_own_type() -> None:
    doc = gen_cluster(4, "H100:1", ["us-east"], seed=0)
    doc["links"]["pairs"] = [[doc["nodes"][0]["id"], doc["nodes"][1]["id"], 50.0, 100.0]]
    c = build_cluster(parse_snapshot(doc, MODELS["llama3-70b"]))
    assert count_states(c) == 2 * 2 * 3  # n0, n1 alone; n2 and n3 interchangeable
    assert _total(solve_exact(c)[0]) == pytest.approx(_total(_solve_bitmask(c)[0]), rel=1e-12)


def test_exact_solves_16_mixed_nodes_in_two_regions_and_bounds_the_heuristic() -> None:
    snap = parse_snapshot(gen_cluster(16, "H100:1,A100-80:1,L40S:1", ["us-east", "eu-west"],
                                      seed=3), MODELS["llama3-70b"])
    start = time.perf_counter()
    best = allocate_exact(snap)
    took = time.perf_counter() - start
    assert took < 30, f"16 nodes took {took:.1f} s"
    assert check_plan(best, snap) == []
    assert plan_score(snap, allocate(snap)) <= plan_score(snap, best) * (1 + 1e-9)


def test_exact_refuses_too_many_distinct_nodes_naming_the_state_count() -> None:
    doc = gen_cluster(16, "H100:1", ["us-east"], seed=0)
    for i, node in enumerate(doc["nodes"]):
        node["vram_mib"] += i  # 16 nodes, no two alike: 2**16 count vectors
    snap = parse_snapshot(doc, MODELS["smollm2-135m"])
    with pytest.raises(InvalidInput, match=f"16 interchangeable types make 65,536 count-vector "
                                           f"states, at most {MAX_STATES:,}"):
        allocate_exact(snap)
