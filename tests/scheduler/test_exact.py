"""The exact reference: never worse than the heuristic, valid, equal to the plain subset DP, solves
16 nodes of a few kinds, and refuses instances with too many count-vector states."""

from __future__ import annotations

import time
from itertools import permutations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from scheduler.allocate import allocate, plan_score, with_ends
from scheduler.costs import MID, Cluster, build_cluster, estimate
from scheduler.errors import CannotPlace, InvalidInput
from scheduler.exact import (
    MAX_STATES,
    _best_replica,
    _types,
    allocate_exact,
    count_states,
    solve_exact,
)
from scheduler.model import Snapshot
from scheduler.schema import check_plan, parse_snapshot
from scheduler.sim.catalogue import MODELS
from scheduler.sim.cluster import gen_cluster
from tests.support.scheduler import snapshots


# The plain DP over node subsets (the solver before node types: exponential in nodes), kept here
# as the reference the typed DP must match.
def _orders(c: Cluster, rank: np.ndarray, members: list[int]) -> list[list[int]]:
    """Every choice of first and last node, the middle ordered by the region rule."""
    if len(members) == 1:
        return [members]
    return [with_ends(c, [i for i in members if i not in (first, last)], first, last, rank)
            for first, last in permutations(sorted(members, key=lambda i: c.ids[i]), 2)]


def _solve_bitmask(c: Cluster) -> tuple[list, list[int]]:
    """Optimal replicas by a DP over node subsets."""
    n = len(c)
    _, rank = _types(c)
    L = c.model.layers
    value = np.zeros(1 << n)
    best_rep: dict[int, tuple[list[int], list[int]]] = {}
    caps_mid = np.clip(c.cap[:, MID], 0, None)
    for mask in range(1, 1 << n):
        members = [i for i in range(n) if mask >> i & 1]
        if len(members) > 1 and int(caps_mid[members].sum()) < L:
            continue
        best = _best_replica(c, _orders(c, rank, members))
        if best is not None:
            value[mask] = best[0]
            best_rep[mask] = (best[1], best[2])
    f = np.zeros(1 << n)
    choice = [0] * (1 << n)
    for s in range(1, 1 << n):
        low = s & -s
        f[s], choice[s] = f[s ^ low], 0
        rest = s ^ low
        sub = rest
        while True:
            t = sub | low
            if t in best_rep and value[t] + f[s ^ t] > f[s] + 1e-15:
                f[s], choice[s] = value[t] + f[s ^ t], t
            if sub == 0:
                break
            sub = (sub - 1) & rest
    built, used, s = [], set(), (1 << n) - 1
    while s:
        t = choice[s]
        if t == 0:
            s ^= s & -s
            continue
        order, k = best_rep[t]
        built.append((order, k, estimate(c, order, k)))
        used.update(order)
        s ^= t
    return built, [i for i in range(n) if i not in used]


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
    start = time.process_time()  # CPU time: other processes share this machine's cores
    best = allocate_exact(snap)
    took = time.process_time() - start
    assert took < 30, f"16 nodes took {took:.1f} CPU s"
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
