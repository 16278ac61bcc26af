"""Joins touch one replica, leaves evict and re-route, re-allocation waits for a threshold."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.allocate import allocate, plan_score
from scheduler.dynamics import (
    Heartbeat,
    apply_heartbeats,
    imbalance,
    join,
    leave,
    missed,
    rebalance,
    reroute,
)
from scheduler.errors import CannotPlace
from scheduler.model import NodeSpec, Plan, Snapshot
from scheduler.route import Router
from scheduler.schema import check_plan
from scheduler.sim.catalogue import GPUS
from tests.support.scheduler import snapshots


def _gpu_node(node_id: str, gpu: str, region: str = "us-east") -> NodeSpec:
    g = GPUS[gpu]
    return NodeSpec(id=node_id, region=region, vram_mib=g.vram_mib, tflops=g.tflops,
                    mem_bw_gbps=g.mem_bw_gbps, net_mbps=g.net_mbps, gpu=gpu)


def _without(snap: Snapshot, node_id: str) -> Snapshot:
    return snap.with_nodes([replace(n, available=False) if n.id == node_id else n
                            for n in snap.nodes])


def _changed(before: Plan, after: Plan) -> list:
    return [r for r in after.replicas if r not in before.replicas]


def test_a_joining_node_changes_at_most_one_replica_and_adds_throughput(mixed_70b) -> None:
    plan = allocate(mixed_70b)
    node = _gpu_node("zz-join", "A100-80")
    after = join(mixed_70b, plan, node)
    snap2 = mixed_70b.with_nodes(list(mixed_70b.nodes) + [node])
    assert check_plan(after, snap2) == []
    assert len(_changed(plan, after)) <= 1
    assert sum(r not in after.replicas for r in plan.replicas) <= 1
    assert plan_score(snap2, after) > plan_score(mixed_70b, plan)
    assert "zz-join" in {s.node for s in after.stages()}


def test_a_node_that_holds_the_model_alone_joins_as_its_own_replica(smollm_cluster) -> None:
    plan = allocate(smollm_cluster)
    after = join(smollm_cluster, plan, _gpu_node("zz-h100", "H100"))
    assert len(after.replicas) == len(plan.replicas) + 1
    assert _changed(plan, after)[0].nodes == ("zz-h100",)


def test_joining_an_existing_id_is_refused(smollm_cluster) -> None:
    plan = allocate(smollm_cluster)
    with pytest.raises(Exception, match="already in the snapshot"):
        join(smollm_cluster, plan, smollm_cluster.nodes[0])


def test_a_leaving_node_is_evicted_and_its_requests_are_rerouted(mixed_70b) -> None:
    plan = allocate(mixed_70b)
    route = Router(mixed_70b, plan).route({}, 256)
    victim = route.hops[-1].node
    after = leave(mixed_70b, plan, victim)
    snap2 = _without(mixed_70b, victim)
    assert victim not in {s.node for s in after.stages()} and victim not in after.standby
    assert check_plan(after, snap2) == []
    untouched = [r for r in plan.replicas if victim not in r.nodes]
    assert all(r in after.replicas for r in untouched)
    new = reroute(snap2, after, {"req-1": route, "req-2": Router(mixed_70b, plan).route(
        {}, 1, exclude={victim})}, {victim}, tokens={"req-1": (200, 56)})
    assert set(new) == {"req-1"}  # only the request that used the node moves
    assert new["req-1"] is not None
    assert victim not in {h.node for h in new["req-1"].hops}


def test_missed_heartbeats_make_nodes_unavailable_and_measurements_stick(mixed_70b) -> None:
    ids = [n.id for n in mixed_70b.nodes]
    beats = [Heartbeat(node=n, at_s=100.0, layer_ms=3.0 if n == ids[1] else None) for n in ids[1:]]
    beats.append(Heartbeat(node=ids[0], at_s=10.0))
    assert missed({b.node: b.at_s for b in beats}, now_s=100.0, timeout_s=30.0) == [ids[0]]
    snap2 = apply_heartbeats(mixed_70b, beats, now_s=100.0, timeout_s=30.0)
    assert not snap2.node(ids[0]).available
    assert snap2.node(ids[1]).layer_ms == 3.0
    assert snap2.canonical_hash() != mixed_70b.canonical_hash()


def test_reallocation_runs_only_past_the_imbalance_threshold(mixed_70b) -> None:
    plan = allocate(mixed_70b)
    assert imbalance(mixed_70b, plan) == pytest.approx(0.0, abs=1e-12)
    same, changed = rebalance(mixed_70b, plan, threshold=0.1)
    assert not changed and same is plan
    # Losing the fastest replicas' nodes leaves a plan far from the fresh optimum.
    weakened = mixed_70b
    current = plan
    for node in [r.nodes[0] for r in plan.replicas[:2]]:
        current = leave(weakened, current, node)
        weakened = _without(weakened, node)
    gap = imbalance(weakened, current)
    assert gap > 0
    fresh, changed = rebalance(weakened, current, threshold=gap - 1e-6)
    assert changed and fresh.snapshot_hash == weakened.canonical_hash()
    _, changed_high = rebalance(weakened, current, threshold=min(gap + 0.01, 0.99))
    assert not changed_high


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(max_nodes=6), st.sampled_from(sorted(GPUS)), st.integers(0, 100))
def test_join_and_leave_keep_every_plan_invariant(snap, gpu, pick) -> None:
    try:
        plan = allocate(snap)
    except CannotPlace:
        return
    node = replace(_gpu_node("zz-new", gpu, snap.nodes[0].region),
                   vram_mib=max(snap.nodes[pick % len(snap.nodes)].vram_mib, 1))
    grown = snap.with_nodes(list(snap.nodes) + [node])
    joined = join(snap, plan, node)
    assert check_plan(joined, grown) == []
    assert sum(r not in joined.replicas for r in plan.replicas) <= 1
    serving = [s.node for s in joined.stages()]
    victim = serving[pick % len(serving)]
    try:
        left = leave(grown, joined, victim)
    except CannotPlace:
        return
    assert check_plan(left, _without(grown, victim)) == []
    assert victim not in {s.node for s in left.stages()}


def test_a_standby_node_leaving_changes_no_replica_and_unknown_ids_are_refused(mixed_70b) -> None:
    tiny = replace(_gpu_node("zz-tiny", "RTX3090"), vram_mib=1000)  # cannot hold one layer
    snap = mixed_70b.with_nodes(list(mixed_70b.nodes) + [tiny])
    plan = allocate(snap)
    assert "zz-tiny" in plan.standby
    after = leave(snap, plan, "zz-tiny")
    assert set(after.replicas) == set(plan.replicas)
    assert "zz-tiny" not in after.standby
    with pytest.raises(Exception, match="not in the snapshot"):
        leave(snap, plan, "no-such-node")
