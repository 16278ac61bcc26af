"""Healing an eviction in place: only the evicted node's layers move, every survivor keeps its
node and range (scheduler.replace.fill_gap)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.allocate import allocate
from scheduler.errors import CannotPlace
from scheduler.model import ModelSpec, NodeSpec, Plan, Snapshot
from scheduler.replace import fill_gap
from scheduler.schema import check_plan
from tests.support.scheduler import links_for, snapshots

MODEL = ModelSpec(name="heal", layers=8, hidden=2048, heads=16, kv_heads=8, intermediate=5632,
                  vocab=32000, model_id=1)


def node(i: int, vram_mib: int, available: bool = True, region: str = "us-east") -> NodeSpec:
    return NodeSpec(id=f"n{i:02d}", region=region, vram_mib=vram_mib, tflops=80.0,
                    mem_bw_gbps=900.0, net_mbps=1000.0, available=available)


def cluster(vrams: list[int], spare_vrams: list[int]) -> tuple[Snapshot, Plan]:
    """A plan over nodes of `vrams`, made while the spares were held out (unavailable), and the
    snapshot in which the spares are available."""
    serving = [node(i, v) for i, v in enumerate(vrams)]
    spares = [node(len(vrams) + i, v) for i, v in enumerate(spare_vrams)]
    held = Snapshot(model=MODEL, nodes=tuple(serving + [replace(s, available=False)
                                                         for s in spares]),
                    links=links_for(["us-east"]))
    plan = allocate(held)
    return held.with_nodes(serving + spares), plan


def stages(plan: Plan) -> set[tuple[str, int, int]]:
    return {(s.node, s.start, s.end) for s in plan.stages()}


def covers_every_layer(plan: Plan) -> bool:
    return all(r.stages[0].start == 0 and r.stages[-1].end == plan.model.layers
               and all(a.end == b.start for a, b in zip(r.stages, r.stages[1:], strict=False))
               for r in plan.replicas)


def test_a_standby_takes_exactly_the_evicted_range_and_every_survivor_keeps_its_own() -> None:
    snap, plan = cluster([1400, 1400, 1400, 1400], [1400])
    victim = plan.replicas[0].stages[0]
    healed = fill_gap(snap.with_nodes([n for n in snap.nodes if n.id != victim.node]), plan,
                      victim.node)
    assert healed is not None and covers_every_layer(healed)
    before, after = stages(plan), stages(healed)
    assert before - {(victim.node, victim.start, victim.end)} <= after  # nobody moved
    assert after - before == {("n04", victim.start, victim.end)}  # the spare took its range
    assert len(healed.replicas) == len(plan.replicas)
    assert check_plan(healed, snap) == []


def test_two_small_spares_split_a_range_neither_holds_alone() -> None:
    snap, plan = cluster([1400, 1400], [1000, 1000])  # a spare holds 2 layers besides the embedding
    victim = plan.replicas[0].stages[0]
    assert victim.layers > 2
    healed = fill_gap(snap, plan, victim.node)
    assert healed is not None and covers_every_layer(healed)
    new = stages(healed) - stages(plan)
    assert {n for n, _, _ in new} == {"n02", "n03"}
    assert sorted((a, b) for _, a, b in new)[0][0] == victim.start
    assert sorted((a, b) for _, a, b in new)[-1][1] == victim.end
    kept = stages(plan) - {(victim.node, victim.start, victim.end)}
    assert kept <= stages(healed)


def test_without_a_spare_able_to_hold_the_range_there_is_no_in_place_plan() -> None:
    snap, plan = cluster([1400, 1400], [300])  # the spare holds no layer of this model
    victim = plan.stages()[0]
    assert fill_gap(snap, plan, victim.node) is None
    assert fill_gap(snap, plan, "n09") is None  # a node serving nothing: nothing to heal


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(max_nodes=8), st.data())
def test_any_healed_plan_keeps_every_survivor_and_covers_every_layer(snap: Snapshot,
                                                                    data: st.DataObject) -> None:
    try:
        plan = allocate(snap)
    except CannotPlace:
        return
    victim = data.draw(st.sampled_from(sorted(s.node for s in plan.stages())))
    healed = fill_gap(snap, plan, victim)
    if healed is None:
        return
    gone = {s for s in stages(plan) if s[0] == victim}
    assert stages(plan) - gone <= stages(healed)
    assert victim not in {s.node for s in healed.stages()}
    assert covers_every_layer(healed) and check_plan(healed, snap) == []
    assert len(healed.replicas) == len(plan.replicas)
    assert fill_gap(snap, plan, victim) == healed  # deterministic
