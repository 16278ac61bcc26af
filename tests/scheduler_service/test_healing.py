"""A network that heals itself without moving anyone, and routes only what workers confirmed.

(a) When a stage is evicted, only its layers move — onto a standby — and every surviving worker
keeps its range (no shard reload, nothing in flight on it fails); a full re-plan happens only when
no standby can take the range. (b) A published stage is routed only once its worker's heartbeat
confirms it serves that range for that epoch's assignment; until then the old assignment, if its
worker still serves it, or another replica serves — and a route never names a range its worker
has not confirmed.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.messages import HeartbeatKind, RouteRequest
from scheduler.errors import NoRoute
from scheduler.service.state import CoordinatorState, Timing
from tests.support.coordinator import CHAIN_ID, MODEL, Operator, beat, chain_node, confirm, operator

TIMEOUT = 10.0
T0 = 1_000_000.0
ROUTE = RouteRequest(model_id=MODEL.model_id, prompt_tokens=8, output_tokens=8)


def start(n: int, reserve: int, vram: dict[int, int] | None = None) -> CoordinatorState:
    """`n` nodes registered in blocks 10, 11, …; the last `reserve` are hot standby."""
    st = CoordinatorState(MODEL, CHAIN_ID, Timing(heartbeat_timeout_s=TIMEOUT,
                                                  rebalance_interval_s=1e9),
                          standby_reserve=reserve)
    st.sync_registry(nodes(n, vram), T0)
    return st


def nodes(n: int, vram: dict[int, int] | None = None, gone: str = "") -> list:  # type: ignore[type-arg]
    kw = vram or {}
    return [replace(chain_node(operator(i), 9000 + i, **({"vram_mib": kw[i]} if i in kw else {})),
                    registered_block=10 + i)
            for i in range(n) if operator(i).address != gone]


def publish(st: CoordinatorState, epoch: int, now: float) -> None:
    pub = st.pending()
    assert pub is not None
    st.mark_published(pub, epoch, now)


def by_address(n: int) -> dict[str, Operator]:
    return {operator(i).address: operator(i) for i in range(n)}


def rows_of(st: CoordinatorState) -> set[tuple[str, int, int]]:
    assert st.published is not None
    return {(op, a, b) for op, _, a, b in st.published.rows}


@pytest.mark.parametrize("victim", [0, 1])
def test_an_evicted_stage_goes_to_a_standby_and_the_survivor_keeps_its_range(victim: int) -> None:
    st = start(4, 2)  # one 2-stage pipeline, two standbys
    publish(st, 1, T0)
    before = rows_of(st)
    assert len(before) == 2
    cheater = sorted(before, key=lambda r: r[1])[victim]
    # slashed and jailed: gone from the registry's active operators
    st.sync_registry(nodes(4, gone=cheater[0]), T0 + 1)
    publish(st, 2, T0 + 1)
    after = rows_of(st)
    assert before - {cheater} <= after  # the survivor did not move
    (took,) = after - before
    assert (took[1], took[2]) == (cheater[1], cheater[2])  # the standby took exactly its range
    assert took[0] in {operator(2).address, operator(3).address}
    assert st.reserved == {operator(2).address, operator(3).address} - {took[0]}
    assert any("every other stage kept" in e for e in st.events)


def test_with_two_replicas_an_eviction_touches_no_other_stage() -> None:
    st = start(6, 2)
    publish(st, 1, T0)
    before = rows_of(st)
    assert len(before) == 4
    cheater = sorted(before)[0]
    st.heartbeat(beat(by_address(6)[cheater[0]], T0 + 1, kind=HeartbeatKind.LEAVE), T0 + 1)
    publish(st, 2, T0 + 1)
    after = rows_of(st)
    assert before - {cheater} <= after and len(after - before) == 1


def test_only_when_no_standby_can_take_the_range_is_the_pipeline_re_planned() -> None:
    # The standby (1000 MiB) holds 2 layers next to the embedding or the LM head, fewer than
    # either stage's 4: keeping the survivor is impossible, so phase 1 re-splits both.
    st = start(3, 1, vram={2: 1000})
    publish(st, 1, T0)
    before = rows_of(st)
    cheater = sorted(before, key=lambda r: r[1])[0]
    st.sync_registry(nodes(3, vram={2: 1000}, gone=cheater[0]), T0 + 1)
    assert any("no standby can take" in e for e in st.events)
    publish(st, 2, T0 + 1)
    after = rows_of(st)
    assert operator(2).address in {r[0] for r in after}
    assert not (before - {cheater}) <= after  # the survivor had to move: a full re-plan


def test_a_stage_is_routed_only_once_its_worker_confirms_the_range_for_the_epoch() -> None:
    st = start(4, 2)
    publish(st, 1, T0)
    ops = by_address(4)
    with pytest.raises(NoRoute, match="not yet confirmed"):
        st.route(ROUTE)  # published, but nobody has loaded its layers yet
    confirm(st, list(ops.values()), T0 + 1)
    r = st.route(ROUTE)
    assert {(s.operator, s.start, s.end) for s in r.stages} == rows_of(st)
    cheater = min(rows_of(st), key=lambda r: r[1])
    st.sync_registry(nodes(4, gone=cheater[0]), T0 + 2)
    publish(st, 2, T0 + 2)
    new = next(r for r in rows_of(st) if r[0] in {operator(2).address, operator(3).address})
    # The standby is still loading: it heartbeats without a range, then with the range but for
    # an older epoch — neither confirms; no route names its range until it does.
    st.heartbeat(beat(ops[new[0]], T0 + 3), T0 + 3)
    with pytest.raises(NoRoute, match="1 stage.* not yet confirmed"):
        st.route(ROUTE)
    st.heartbeat(beat(ops[new[0]], T0 + 4, epoch=1, layer_start=new[1], layer_end=new[2]), T0 + 4)
    with pytest.raises(NoRoute):
        st.route(ROUTE)
    st.heartbeat(beat(ops[new[0]], T0 + 5, epoch=2, layer_start=new[1], layer_end=new[2]), T0 + 5)
    r = st.route(ROUTE)  # the survivor's confirmation of epoch 1 still holds: same range since
    assert {(s.operator, s.start, s.end) for s in r.stages} == rows_of(st)
    assert r.epoch == 2


def test_while_workers_load_a_new_split_the_old_assignment_they_still_serve_is_routed() -> None:
    st = start(2, 0)
    publish(st, 1, T0)
    ops = by_address(3)
    confirm(st, [operator(0), operator(1)], T0)
    old = rows_of(st)
    st.sync_registry(nodes(3), T0 + 1)  # a third node joins: its replica is split three ways
    publish(st, 2, T0 + 1)
    new = rows_of(st)
    assert not old & new  # both old workers have new ranges to load
    r = st.route(ROUTE)  # meanwhile they still serve epoch 1's ranges: those are routed
    assert {(s.operator, s.start, s.end) for s in r.stages} == old
    confirm(st, [operator(2)], T0 + 2)  # the newcomer is ready; the old pair still serves
    assert {(s.operator, s.start, s.end) for s in st.route(ROUTE).stages} == old
    first = min(new, key=lambda r: r[1])
    confirm(st, [ops[first[0]]], T0 + 3)  # one switched: neither split is whole
    with pytest.raises(NoRoute):
        st.route(ROUTE)
    confirm(st, list(ops.values()), T0 + 4)
    assert {(s.operator, s.start, s.end) for s in st.route(ROUTE).stages} == new


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["publish", "confirm", "stale", "blank", "leave",
                                           "back", "route"]), st.integers(0, 5)),
                min_size=1, max_size=30))
def test_no_route_ever_names_a_range_its_worker_has_not_confirmed(
        steps: list[tuple[str, int]]) -> None:
    state = start(6, 2)
    ops = [operator(i) for i in range(6)]
    epoch, now = 0, T0
    for kind, i in steps:
        now += 0.5
        op = ops[i]
        p = state.published
        if kind == "publish" and state.pending() is not None:
            epoch += 1
            publish(state, epoch, now)
        elif kind in ("confirm", "stale") and p is not None:
            pub = p if kind == "confirm" else (state.previous or p)
            for row_op, _, a, b in pub.rows:
                if row_op == op.address:
                    state.heartbeat(beat(op, now, epoch=pub.epoch, layer_start=a, layer_end=b),
                                    now)
        elif kind == "blank":
            state.heartbeat(beat(op, now), now)
        elif kind == "leave" and op.address in state.live:
            state.heartbeat(beat(op, now, kind=HeartbeatKind.LEAVE), now)
        elif kind == "back":
            state.heartbeat(beat(op, now), now)
        elif kind == "route" and p is not None:
            try:
                r = state.route(ROUTE)
            except NoRoute:
                continue
            for s in r.stages:
                assert s.operator in state.live
                assert state.serving[s.operator][1:] == (s.start, s.end)
