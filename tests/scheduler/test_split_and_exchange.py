"""Phase 1's search: the bottleneck-bounded split (`scheduler.split`), the pairwise exchange of nodes
between replicas and first/last stages by node kind (`scheduler.group`). Regression cases from the
bench's generated clusters (`bench/scheduler.py`: seed s, size n → `gen_cluster(seed=100 s + n)`)."""

from __future__ import annotations

import pytest

from scheduler.allocate import allocate, plan_score
from scheduler.costs import best_split as cheapest_first
from scheduler.costs import build_cluster, estimate
from scheduler.exact import allocate_exact
from scheduler.model import Plan, Replica, Snapshot, Stage
from scheduler.schema import parse_snapshot
from scheduler.sim.catalogue import MODELS
from scheduler.sim.cluster import gen_cluster
from scheduler.sim.score import simulate
from scheduler.sim.workload import Workload
from scheduler.split import best_split

MIX = {"prompt_tokens": 256, "output_tokens": 64, "context_tokens": 320}
REGIONS = ["us-east", "eu-west", "ap-northeast"]


def _bench(seed: int, mix: str, nodes: int, model: str, regions: int) -> Snapshot:
    doc = gen_cluster(nodes, mix, REGIONS[:regions], seed=100 * seed + nodes, params=MIX)
    return parse_snapshot(doc, MODELS[model])


def _three_3090s() -> tuple[Snapshot, list[int]]:
    """llama3-8b/consumer/24/seed3: its three us-east RTX 3090s."""
    snap = _bench(3, "consumer", 24, "llama3-8b", 3)
    c = build_cluster(snap)
    slow = [i for i, nid in enumerate(c.ids)
            if snap.node(nid).gpu == "RTX3090" and snap.node(nid).region == "us-east"]
    assert len(slow) == 3
    return snap, slow


def test_a_pipeline_of_compute_poor_gpus_splits_its_layers_evenly() -> None:
    """Cheapest-first piles 30 of 32 layers on one RTX 3090, whose prompts then set the cycle;
    the bounded split spreads them and is rated a third higher."""
    snap, slow = _three_3090s()
    c = build_cluster(snap)
    piled = cheapest_first(c, slow)
    even = best_split(c, slow)
    assert piled is not None and even is not None
    assert max(piled[0]) >= 30
    assert max(even[0]) <= 12 and sum(even[0]) == 32
    assert even[1].throughput > 1.25 * piled[1].throughput
    # the estimate is what `estimate` gives for that split: one cost model
    assert estimate(c, slow, even[0]).throughput == pytest.approx(even[1].throughput)


def test_the_even_split_holds_in_the_simulator() -> None:
    snap, slow = _three_3090s()
    c = build_cluster(snap)
    layers, est = best_split(c, slow)
    bounds = [0]
    for k in layers:
        bounds.append(bounds[-1] + k)
    rep = Replica(tuple(Stage(c.ids[i], bounds[s], bounds[s + 1]) for s, i in enumerate(slow)))
    plan = Plan(model=snap.model, replicas=(rep,),
                standby=tuple(n.id for n in snap.nodes if n.id not in rep.nodes))
    load = Workload(requests=400, rate_per_s=1e9, prompt_mean=256, output_mean=64, seed=3)
    res = simulate(snap, plan, load, "router")
    assert res.saturated_tok_s is not None
    assert abs(res.saturated_tok_s - est.throughput) / res.saturated_tok_s <= 0.1


def test_a_split_never_rates_worse_than_cheapest_first() -> None:
    snap = _bench(0, "mixed", 16, "llama3-70b", 2)
    c = build_cluster(snap)
    order = list(range(6))
    a, b = cheapest_first(c, order), best_split(c, order)
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert b[1].throughput >= a[1].throughput


@pytest.mark.parametrize("seed, mix", [(2, "apple"), (0, "consumer")])
def test_the_heuristic_finds_the_exact_plan_on_the_dominated_8_node_clusters(seed, mix) -> None:
    """llama3-70b/apple/8/seed2 (an M4-Pro pooled into the wrong region's replica) and
    llama3-70b/consumer/8/seed0 (an RTX 4090, not a 5090, as first and last stage): the exact
    solver's plan beat ours by 1-2 % in the estimate and 1-4 % in the simulator under both
    routings. The exchange pass and first/last stages by node kind now reach its estimate."""
    snap = _bench(seed, mix, 8, "llama3-70b", 2)
    ours, best = allocate(snap), allocate_exact(snap)
    assert plan_score(snap, ours) >= plan_score(snap, best) * (1 - 1e-9)


def test_the_exchange_keeps_each_replica_in_one_region_where_it_can() -> None:
    snap = _bench(2, "apple", 8, "llama3-70b", 2)
    plan = allocate(snap)
    crossing = [r for r in plan.replicas
                if len({snap.node(s.node).region for s in r.stages}) > 1]
    assert len(crossing) <= 1  # one M3-Max and four M4-Pros in eu-west: one pair must cross
