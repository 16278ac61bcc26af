"""Phase 1: invariants of every plan (property tests), determinism, memory accounting, errors."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings

from scheduler.allocate import allocate, plan_score
from scheduler.costs import ALONE, build_cluster, layer_time
from scheduler.errors import CannotPlace
from scheduler.model import MIB, ModelSpec, NodeSpec, Params, Snapshot
from scheduler.schema import check_plan, node_weight_budget, stage_memory_bytes
from scheduler.sim.catalogue import MODELS
from tests.support.scheduler import links_for, snapshots

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _plan_or_cannot(snap: Snapshot):
    try:
        return allocate(snap)
    except CannotPlace as exc:
        assert exc.shortfall, "a cannot-place answer must list the shortfall"
        return None


@PROPS
@given(snapshots())
def test_every_replica_covers_each_layer_once_in_order(snap: Snapshot) -> None:
    plan = _plan_or_cannot(snap)
    if plan is None:
        return
    assert plan.replicas
    for rep in plan.replicas:
        covered = [layer for s in rep.stages for layer in range(s.start, s.end)]
        assert covered == list(range(snap.model.layers))


@PROPS
@given(snapshots())
def test_no_node_memory_is_exceeded_and_nodes_serve_once(snap: Snapshot) -> None:
    plan = _plan_or_cannot(snap)
    if plan is None:
        return
    assert check_plan(plan, snap) == []
    nodes = {n.id: n for n in snap.nodes}
    for s in plan.stages():
        assert stage_memory_bytes(snap.model, s) <= node_weight_budget(snap, nodes[s.node])
        assert nodes[s.node].available
    served = [s.node for s in plan.stages()]
    assert len(served) == len(set(served))
    assert set(served).isdisjoint(plan.standby)


@PROPS
@given(snapshots())
def test_same_snapshot_in_any_node_order_gives_the_same_plan(snap: Snapshot) -> None:
    plan = _plan_or_cannot(snap)
    shuffled = list(snap.nodes)
    random.Random(0).shuffle(shuffled)
    again = Snapshot(model=snap.model, nodes=tuple(shuffled), links=snap.links, params=snap.params)
    assert again.canonical_hash() == snap.canonical_hash()
    if plan is None:
        with pytest.raises(CannotPlace):
            allocate(again)
        return
    assert allocate(again).to_dict() == plan.to_dict()
    assert plan.snapshot_hash == snap.canonical_hash()


@PROPS
@given(snapshots())
def test_every_replica_meets_the_latency_bound(snap: Snapshot) -> None:
    plan = _plan_or_cannot(snap)
    if plan is None:
        return
    assert plan.estimate["max_latency_ms"] <= snap.params.latency_bound_ms + 1e-9


def _node(i: int, vram: int, bw: float = 1000.0, region: str = "us-east", **kw) -> NodeSpec:
    return NodeSpec(id=f"n{i}", region=region, vram_mib=vram, tflops=100.0, mem_bw_gbps=bw,
                    net_mbps=10_000.0, **kw)


def _toy_model(layers: int = 8) -> ModelSpec:
    # about 5 MiB per layer and 31 MiB of embedding in bf16
    return ModelSpec(name="toy", layers=layers, hidden=512, heads=8, kv_heads=8,
                     intermediate=1024, vocab=32000, dtype_bytes=2)


def test_embedding_and_head_count_against_first_and_last_stage() -> None:
    m = _toy_model()
    p = Params(kv_reserve_mib=0, memory_utilization=1.0, max_batch=1, context_tokens=16)
    # Exactly all layers plus the embedding, but not the LM head: cannot serve alone.
    need_alone = m.total_bytes
    vram_mib = (need_alone - m.head_bytes + m.layer_bytes // 2) // MIB + 1
    snap = Snapshot(model=m, nodes=(_node(0, vram_mib),), links=links_for(["us-east"]), params=p)
    c = build_cluster(snap)
    assert int(c.cap[0, ALONE]) < m.layers
    with pytest.raises(CannotPlace):
        allocate(snap)
    big = replace(snap.nodes[0], vram_mib=need_alone // MIB + 64)
    plan = allocate(snap.with_nodes([big]))
    assert [(s.start, s.end) for s in plan.replicas[0].stages] == [(0, m.layers)]


def test_water_filling_gives_faster_nodes_more_layers() -> None:
    m = _toy_model(layers=30)
    p = Params(kv_reserve_mib=0, memory_utilization=1.0, max_batch=1, context_tokens=16,
               layer_overhead_us=0.0)
    vram = int(0.7 * m.total_bytes / MIB) + 1  # two nodes needed, each with room to spare
    nodes = (_node(0, vram, bw=3000.0), _node(1, vram, bw=1000.0))
    snap = Snapshot(model=m, nodes=nodes, links=links_for(["us-east"]), params=p)
    plan = allocate(snap)
    layers = {s.node: s.layers for s in plan.replicas[0].stages}
    assert layers["n0"] > layers["n1"]


def test_measured_layer_latency_replaces_the_roofline() -> None:
    m = MODELS["llama3-70b"]
    a = _node(0, 100_000, bw=3000.0)
    snap = Snapshot(model=m, nodes=(a,), links=links_for(["us-east"]))
    slow = snap.with_nodes([replace(a, layer_ms=25.0)])
    # A batch-1 step with no context to read is exactly the measurement.
    assert layer_time(build_cluster(slow), 0, 1) == pytest.approx(0.025)
    assert layer_time(build_cluster(snap), 0, 1) < 0.025
    assert float(build_cluster(slow).tau[0]) > float(build_cluster(snap).tau[0])


def test_replicas_stay_inside_one_region_when_each_region_can_hold_the_model() -> None:
    m = _toy_model(layers=12)
    vram = int(0.7 * m.total_bytes / MIB) + 1  # two nodes per replica
    nodes = tuple(_node(i, vram, region=r) for i, r in enumerate(
        ["us-east", "eu-west", "us-east", "eu-west"]))
    snap = Snapshot(model=m, nodes=nodes, links=links_for(["us-east", "eu-west"]),
                    params=Params(kv_reserve_mib=0, memory_utilization=1.0, max_batch=4,
                                  context_tokens=64))
    plan = allocate(snap)
    assert len(plan.replicas) == 2
    for rep in plan.replicas:
        assert len({snap.node(n).region for n in rep.nodes}) == 1


def test_empty_cluster_cannot_place_and_says_why() -> None:
    snap = Snapshot(model=_toy_model(), nodes=())
    with pytest.raises(CannotPlace, match="no available nodes") as exc:
        allocate(snap)
    assert "MiB" in exc.value.shortfall[0]


def test_nodes_too_small_for_one_layer_cannot_place_and_quote_sizes() -> None:
    m = MODELS["llama3-70b"]
    snap = Snapshot(model=m, nodes=(_node(0, 1024), _node(1, 2048)), links=links_for(["us-east"]))
    with pytest.raises(CannotPlace, match="no node can hold one layer") as exc:
        allocate(snap)
    assert "1,632.0 MiB" in exc.value.shortfall[0] and "n1" in exc.value.shortfall[0]


def test_model_larger_than_the_pool_reports_the_shortfall() -> None:
    m = MODELS["llama3-70b"]
    snap = Snapshot(model=m, nodes=(_node(0, 24_000), _node(1, 24_000)),
                    links=links_for(["us-east"]))
    with pytest.raises(CannotPlace, match="larger than the pool") as exc:
        allocate(snap)
    assert any("short by" in line for line in exc.value.shortfall)


def test_plan_score_matches_the_solvers_own_estimate(mixed_70b: Snapshot) -> None:
    plan = allocate(mixed_70b)
    assert plan_score(mixed_70b, plan) == pytest.approx(plan.estimate["throughput_tok_s"])


def test_epoch_assignments_list_operator_model_and_layer_range(mixed_70b: Snapshot) -> None:
    plan = allocate(mixed_70b)
    rows = plan.epoch_assignments(mixed_70b)
    assert len(rows) == len(plan.stages())
    ops = {n.operator for n in mixed_70b.nodes}
    for op, model_id, start, end in rows:
        assert op in ops and model_id == mixed_70b.model.model_id and 0 <= start < end <= 80
