"""Phase 2: routes are contiguous, cost per layer served, respect KV admission and follow load."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from scheduler.allocate import allocate
from scheduler.costs import build_cluster, head_time, layer_time, link_time
from scheduler.errors import CannotPlace, NoRoute
from scheduler.model import Plan, Replica, Snapshot, Stage
from scheduler.route import NodeLoad, Router
from tests.support.scheduler import snapshots


def _check_contiguous(route, layers: int) -> None:
    pos = 0
    for hop in route.hops:
        assert hop.start == pos and hop.end > hop.start
        pos = hop.end
    assert pos == layers


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots())
def test_every_route_is_contiguous_and_runs_inside_its_shards(snap: Snapshot) -> None:
    try:
        plan = allocate(snap)
    except CannotPlace:
        return
    router = Router(snap, plan)
    route = router.route({}, 1)
    _check_contiguous(route, snap.model.layers)
    held = {s.node: (s.start, s.end) for s in plan.stages()}
    for hop in route.hops:
        a, b = held[hop.node]
        assert a <= hop.start and hop.end == b  # a suffix of what the node holds


def _two_replicas(mixed_70b: Snapshot) -> tuple[Plan, Router]:
    plan = allocate(mixed_70b)
    assert len(plan.replicas) >= 2
    return plan, Router(mixed_70b, plan)


def test_route_cost_is_per_layer_time_times_layers_run_plus_links(mixed_70b: Snapshot) -> None:
    plan, router = _two_replicas(mixed_70b)
    prompt, out, active, queue = 300, 40, 3, 0.25
    loads = {n: NodeLoad(active=active, queue_s=queue) for n in router.kv_capacity}
    route = router.route(loads, prompt, out)
    c = build_cluster(mixed_70b)
    act = c.model.activation_bytes
    expect = 0.0
    for k, hop in enumerate(route.hops):
        i = c.index[hop.node]
        run = hop.end - hop.start  # every layer served is charged, not once per node
        decode = layer_time(c, i, active + 1, prompt + out)  # reads this request's KV too
        shared = 1 + (1 - 1 / (active + 1)) / 2  # waits half a step of the others' on average
        expect += queue + run * (layer_time(c, i, prompt) + out * shared * decode)
        if hop.end == c.model.layers:  # the last hop runs the LM head: a row per token
            expect += head_time(c, i, 1) + out * shared * head_time(c, i, active + 1)
        if k:
            p = c.index[route.hops[k - 1].node]
            expect += link_time(c, p, i, prompt * act) + out * link_time(c, p, i, act)
    if len(route.hops) > 1:
        expect += out * link_time(c, c.index[route.hops[-1].node], c.index[route.hops[0].node], 8)
    assert route.cost_s == pytest.approx(expect, rel=1e-12)


def test_a_suffix_of_a_shard_can_follow_another_replicas_shard() -> None:
    from scheduler.model import NodeSpec
    from scheduler.sim.catalogue import MODELS
    from tests.support.scheduler import links_for

    m = MODELS["llama3-8b"]
    nodes = tuple(NodeSpec(id=f"n{i}", region="us-east", vram_mib=80_000, tflops=300.0,
                           mem_bw_gbps=bw, net_mbps=10_000.0) for i, bw in enumerate(
                               [3000.0, 500.0, 500.0, 3000.0]))
    snap = Snapshot(model=m, nodes=nodes, links=links_for(["us-east"]))
    # Replica A: fast n0 holds [0, 20), slow n1 [20, 32). Replica B: slow n2 [0, 10), fast n3 [10, 32).
    plan = Plan(model=m, replicas=(Replica((Stage("n0", 0, 20), Stage("n1", 20, 32))),
                                   Replica((Stage("n2", 0, 10), Stage("n3", 10, 32)))))
    route = Router(snap, plan).route({}, 1)
    assert [(h.node, h.start, h.end) for h in route.hops] == [("n0", 0, 20), ("n3", 20, 32)]
    # Workers that serve exactly their range (the coordinator's case) get whole shards only.
    whole = Router(snap, plan).route({}, 1, whole_shards=True)
    held = {(s.node, s.start, s.end) for s in plan.stages()}
    assert {(h.node, h.start, h.end) for h in whole.hops} <= held


def test_routes_avoid_nodes_without_free_kv_memory(mixed_70b: Snapshot) -> None:
    plan, router = _two_replicas(mixed_70b)
    first = router.route({}, 512)
    full = {h.node: NodeLoad(kv_used_bytes=router.kv_capacity[h.node]) for h in first.hops[:1]}
    second = router.route(full, 512)
    assert first.hops[0].node not in {h.node for h in second.hops}
    everything = {n: NodeLoad(kv_used_bytes=cap) for n, cap in router.kv_capacity.items()}
    with pytest.raises(NoRoute, match="no admissible route"):
        router.route(everything, 512)


def test_queueing_delay_moves_requests_to_less_loaded_shards(mixed_70b: Snapshot) -> None:
    plan, router = _two_replicas(mixed_70b)
    first = router.route({}, 64, 64)
    busy = {h.node: NodeLoad(active=10, queue_s=60.0) for h in first.hops}
    moved = router.route(busy, 64, 64)
    assert {h.node for h in moved.hops}.isdisjoint({h.node for h in first.hops})
    blind = router.route(busy, 64, 64, use_load=False)
    assert blind.hops == first.hops


def test_excluded_nodes_are_never_routed_through(mixed_70b: Snapshot) -> None:
    plan, router = _two_replicas(mixed_70b)
    first = router.route({}, 1)
    gone = {first.hops[0].node}
    assert gone.isdisjoint(h.node for h in router.route({}, 1, exclude=gone).hops)


def test_pruned_search_finds_the_same_route_as_the_exhaustive_one(mixed_70b: Snapshot) -> None:
    import numpy as np

    plan = allocate(mixed_70b)
    fast = Router(mixed_70b, plan)
    full = Router(mixed_70b, plan)
    full.paired = set(full.kv_capacity)  # every node keeps all its edges
    rng = np.random.default_rng(0)
    for _ in range(20):
        loads = {n: NodeLoad(active=int(rng.integers(0, 80)), queue_s=float(rng.exponential(0.5)),
                             kv_used_bytes=int(rng.uniform(0, 0.9) * cap))
                 for n, cap in fast.kv_capacity.items()}
        prompt, out = int(rng.integers(1, 2000)), int(rng.integers(1, 500))
        try:
            want = full.route(loads, prompt, out)
        except NoRoute:
            with pytest.raises(NoRoute):
                fast.route(loads, prompt, out)
            continue
        got = fast.route(loads, prompt, out)
        assert got.cost_s == pytest.approx(want.cost_s, rel=1e-12)
