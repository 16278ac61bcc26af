"""The coordinator's decision logic, driven directly with events and times (no sockets)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from protocol.api_errors import (
    BadSignature,
    ModelNotServed,
    NotReady,
    Replay,
    StaleMessage,
    UnknownOperator,
    WrongChain,
)
from protocol.messages import HeartbeatKind, RouteRequest, SignedHeartbeat
from scheduler.allocate import allocate
from scheduler.route import NodeLoad
from scheduler.schema import parse_snapshot
from scheduler.service.state import CoordinatorState, Timing
from tests.support.coordinator import CHAIN_ID, MODEL, beat, chain_node, confirm, operator

TIMEOUT = 10.0
T0 = 1_000_000.0


def started(n: int = 4, timing: Timing | None = None) -> CoordinatorState:
    st = CoordinatorState(MODEL, CHAIN_ID, timing or Timing(heartbeat_timeout_s=TIMEOUT,
                                                            rebalance_interval_s=1e9))
    st.sync_registry([chain_node(operator(i), 9000 + i) for i in range(n)], T0)
    return st


def publish(st: CoordinatorState, epoch: int, now: float) -> None:
    pub = st.pending()
    assert pub is not None
    st.mark_published(pub, epoch, now)


def replicas_of(st: CoordinatorState) -> set[tuple[tuple[str, int, int], ...]]:
    assert st.plan is not None
    return {tuple((s.node, s.start, s.end) for s in r.stages) for r in st.plan.replicas}


def assert_covers(rows: tuple[tuple[str, int, int, int], ...]) -> None:
    reach = 0
    for _, _, a, b in sorted(rows, key=lambda r: (r[2], r[3])):
        assert a <= reach, f"gap before layer {a}"
        reach = max(reach, b)
    assert reach == MODEL.layers


def test_phase_one_runs_on_the_first_registry_sync_and_covers_every_layer() -> None:
    st = started()
    pub = st.pending()
    assert pub is not None
    assert len(pub.rows) == 4 and len(st.plan.replicas) == 2  # type: ignore[union-attr]
    assert_covers(pub.rows)
    assert pub.snapshot_hash == pub.snapshot.canonical_hash()
    # anyone can re-run the solver on the published snapshot document and get the same rows
    rerun = allocate(parse_snapshot(json.loads(pub.snapshot.canonical_json())))
    assert tuple(rerun.epoch_assignments(pub.snapshot)) == pub.rows
    assert {r[0] for r in pub.rows} == {operator(i).address for i in range(4)}
    st.mark_published(pub, 1, T0)
    assert st.pending() is None  # nothing changed since


def test_a_pool_too_small_for_the_model_reports_cannot_place_and_publishes_nothing() -> None:
    st = started(1)
    assert st.plan is None and st.pending() is None
    assert "cannot place" in st.problem


def test_heartbeats_are_rejected_for_bad_signature_chain_operator_staleness_and_replay() -> None:
    st = started()
    op, stranger = operator(0), operator(99)
    good = beat(op, T0, seq=5)
    forged = SignedHeartbeat(heartbeat=good.heartbeat.model_copy(update={"active": 7}),
                             signature=good.signature)
    with pytest.raises(BadSignature):
        st.heartbeat(forged, T0)
    other_signer = SignedHeartbeat(heartbeat=good.heartbeat,
                                   signature=beat(stranger, T0, seq=5).signature)
    with pytest.raises(BadSignature, match="signed by"):
        st.heartbeat(other_signer, T0)
    with pytest.raises(WrongChain, match="chain id 1"):
        st.heartbeat(beat(op, T0, chain_id=1), T0)
    with pytest.raises(UnknownOperator, match=stranger.address):
        st.heartbeat(beat(stranger, T0), T0)
    with pytest.raises(StaleMessage, match="from the coordinator's clock"):
        st.heartbeat(beat(op, T0 - 120), T0)
    assert st.last_seq.get(op.address, 0) == 0  # nothing accepted so far
    st.heartbeat(good, T0)
    with pytest.raises(Replay, match="seq 5"):
        st.heartbeat(good, T0 + 1)
    with pytest.raises(Replay):
        st.heartbeat(beat(op, T0, seq=4), T0 + 1)
    assert st.last_seq[op.address] == 5


def test_a_node_silent_past_the_timeout_is_evicted_and_only_its_replica_changes() -> None:
    st = started()
    publish(st, 1, T0)
    before = replicas_of(st)
    silent = operator(0).address
    for t in (T0 + 4, T0 + 8):
        for i in range(1, 4):
            st.heartbeat(beat(operator(i), t), t)
        st.tick(t)
    assert st.pending() is None  # within the timeout: nothing changes
    st.tick(T0 + TIMEOUT + 0.5)
    assert silent not in st.live
    pub = st.pending()
    assert pub is not None and silent not in {r[0] for r in pub.rows}
    assert_covers(pub.rows)
    untouched = {r for r in before if all(s[0] != silent for s in r)}
    assert untouched <= replicas_of(st)


def test_a_leave_heartbeat_evicts_at_once_and_a_resumed_heartbeat_rejoins() -> None:
    st = started()
    publish(st, 1, T0)
    op = operator(2)
    st.heartbeat(beat(op, T0 + 1, kind=HeartbeatKind.LEAVE), T0 + 1)
    assert op.address not in st.live
    publish(st, 2, T0 + 1)
    assert st.assignment(op.address).assigned is False
    st.heartbeat(beat(op, T0 + 2), T0 + 2)
    assert op.address in st.live
    pub = st.pending()
    assert pub is not None and op.address in {r[0] for r in pub.rows}


def test_a_newly_registered_node_joins_without_reshuffling_other_replicas() -> None:
    st = started()
    publish(st, 1, T0)
    before = replicas_of(st)
    st.sync_registry([chain_node(operator(i), 9000 + i) for i in range(5)], T0 + 1)
    after = replicas_of(st)
    newcomer = operator(4).address
    assert any(newcomer in {s[0] for s in r} for r in after)
    assert len(before - after) <= 1  # at most the one replica it joined was rebuilt
    assert_covers(st.pending().rows)  # type: ignore[union-attr]


def test_a_node_gone_from_the_registry_is_evicted() -> None:
    st = started()
    publish(st, 1, T0)
    st.sync_registry([chain_node(operator(i), 9000 + i) for i in (1, 2, 3)], T0 + 1)
    assert operator(0).address not in st.registered
    pub = st.pending()
    assert pub is not None and operator(0).address not in {r[0] for r in pub.rows}
    with pytest.raises(UnknownOperator):
        st.heartbeat(beat(operator(0), T0 + 2), T0 + 2)


def test_routes_wait_for_an_epoch_and_refuse_other_models() -> None:
    st = started()
    with pytest.raises(NotReady):
        st.route(RouteRequest(model_id=MODEL.model_id))
    with pytest.raises(NotReady):
        st.assignment(operator(0).address)
    publish(st, 1, T0)
    with pytest.raises(ModelNotServed, match="model 2"):
        st.route(RouteRequest(model_id=2))


def test_routes_are_contiguous_and_avoid_a_loaded_replica_and_excluded_nodes() -> None:
    st = started()
    publish(st, 1, T0)
    confirm(st, [operator(i) for i in range(4)], T0)
    r = st.route(RouteRequest(model_id=MODEL.model_id, prompt_tokens=32, output_tokens=16))
    assert r.stages[0].start == 0 and r.stages[-1].end == MODEL.layers
    assert all(a.end == b.start for a, b in zip(r.stages, r.stages[1:], strict=False))
    assert all(s.host == "127.0.0.1" and s.endpoint.endswith(str(s.port)) for s in r.stages)
    first = {s.operator for s in r.stages}
    for op in first:  # a long queue on the chosen nodes sends the next request elsewhere
        st.loads[op] = NodeLoad(active=8, queue_s=5.0)
    r2 = st.route(RouteRequest(model_id=MODEL.model_id, prompt_tokens=32, output_tokens=16))
    assert not first & {s.operator for s in r2.stages}
    st.loads.clear()
    r3 = st.route(RouteRequest(model_id=MODEL.model_id, exclude=tuple(sorted(first))))
    assert not first & {s.operator for s in r3.stages}


def test_a_global_reallocation_waits_for_the_interval_and_needs_imbalance_past_the_threshold(
        ) -> None:
    timing = Timing(heartbeat_timeout_s=1e6, rebalance_interval_s=30, imbalance_threshold=0.2)
    st = started(5, timing)
    st.tick(T0)
    publish(st, 1, T0)
    slow = operator(0).address
    assert slow in {r[0] for r in st.rows()}
    for i in range(5):  # every node reports; node 0 is 400x slower per layer than the rest
        st.heartbeat(beat(operator(i), T0 + 1, layer_us=40_000 if i == 0 else 100), T0 + 1)
    st.tick(T0 + 10)
    assert st.pending() is None  # the interval has not passed: no global re-allocation
    st.tick(T0 + 31)
    pub = st.pending()
    assert pub is not None and slow not in {r[0] for r in pub.rows}
    assert_covers(pub.rows)
    assert pub.snapshot.node(slow).layer_ms == 40.0  # the measurement is in the hashed snapshot
    publish(st, 2, T0 + 31)
    st.tick(T0 + 62)  # same measurements: the plan is already the best, nothing to publish
    assert st.pending() is None


def reserved_start(n: int = 6, reserve: int = 2) -> CoordinatorState:
    """`n` nodes registered in blocks 10, 11, …; the last `reserve` are hot standby."""
    st = CoordinatorState(MODEL, CHAIN_ID, Timing(heartbeat_timeout_s=TIMEOUT,
                                                  rebalance_interval_s=1e9),
                          standby_reserve=reserve)
    st.sync_registry([replace(chain_node(operator(i), 9000 + i), registered_block=10 + i)
                      for i in range(n)], T0)
    return st


def test_the_standby_reserve_holds_the_latest_registered_nodes_out_of_the_allocation() -> None:
    st = reserved_start(6, 2)
    spare = {operator(4).address, operator(5).address}
    assert st.reserved == spare
    rows = st.pending().rows  # type: ignore[union-attr]
    assert_covers(rows)
    assert spare.isdisjoint({r[0] for r in rows})
    assert spare <= st.live  # still live and registered: they verify meanwhile


def test_an_evicted_stage_is_replaced_by_a_promoted_standby_in_a_new_epoch() -> None:
    st = reserved_start(6, 2)
    publish(st, 1, T0)
    replicas = len(st.plan.replicas)  # type: ignore[union-attr]
    cheater = st.published.rows[0][0]  # type: ignore[union-attr]
    # slashed below the minimum: gone from the registry's active operators
    st.sync_registry([replace(chain_node(operator(i), 9000 + i), registered_block=10 + i)
                      for i in range(6) if operator(i).address != cheater], T0 + 1)
    pub = st.pending()
    assert pub is not None and cheater not in {r[0] for r in pub.rows}
    assert_covers(pub.rows)
    assert len(st.plan.replicas) == replicas  # type: ignore[union-attr]
    promoted = {r[0] for r in pub.rows} - {r[0] for r in st.published.rows}  # type: ignore[union-attr]
    assert promoted and promoted <= {operator(4).address, operator(5).address}
    assert st.reserved == {operator(4).address, operator(5).address} - promoted
    publish(st, 2, T0 + 1)
    assert any("promoted" in e for e in st.events)


def test_without_a_reserve_an_eviction_that_leaves_no_pipeline_publishes_nothing_new() -> None:
    st = reserved_start(2, 0)
    publish(st, 1, T0)
    st.sync_registry([replace(chain_node(operator(1), 9001), registered_block=11)], T0 + 1)
    assert st.plan is None and st.pending() is None and st.problem


def test_with_a_reserve_the_only_pipeline_survives_its_stage_being_evicted() -> None:
    st = reserved_start(4, 2)
    publish(st, 1, T0)
    serving = sorted({r[0] for r in st.published.rows})  # type: ignore[union-attr]
    assert len(serving) == 2
    st.heartbeat(beat(operator([i for i in range(4) if operator(i).address == serving[0]][0]),
                      T0 + 1, kind=HeartbeatKind.LEAVE), T0 + 1)
    pub = st.pending()
    assert pub is not None and serving[0] not in {r[0] for r in pub.rows}
    assert_covers(pub.rows)


def test_a_node_registering_later_refills_the_reserve() -> None:
    st = reserved_start(6, 2)
    publish(st, 1, T0)
    nodes = [replace(chain_node(operator(i), 9000 + i), registered_block=10 + i)
             for i in range(6)]
    cheater = st.published.rows[0][0]  # type: ignore[union-attr]
    nodes = [n for n in nodes if n.operator != cheater]
    st.sync_registry(nodes, T0 + 1)
    assert len(st.reserved) == 1
    st.sync_registry(nodes + [replace(chain_node(operator(6), 9006), registered_block=30)], T0 + 2)
    assert operator(6).address in st.reserved and len(st.reserved) == 2


def test_a_standby_that_goes_quiet_and_comes_back_is_still_standby() -> None:
    st = reserved_start(6, 2)
    publish(st, 1, T0)
    spare = operator(5)
    st.heartbeat(beat(spare, T0 + 1, kind=HeartbeatKind.LEAVE), T0 + 1)
    assert spare.address not in st.live and spare.address in st.reserved
    assert st.pending() is None  # nothing served changed
    st.heartbeat(beat(spare, T0 + 2), T0 + 2)
    assert spare.address in st.live and spare.address in st.reserved
    assert st.pending() is None


def test_a_silent_start_does_not_spend_the_reserve_and_a_standby_steps_in_when_needed() -> None:
    st = reserved_start(4, 2)  # registered at T0; nobody heartbeats in time (slow start)
    st.tick(T0 + TIMEOUT + 1)
    assert st.plan is None and st.reserved == {operator(2).address, operator(3).address}
    # one pipeline worker and both standbys come back: the pipeline needs a standby now
    for i in (0, 2, 3):
        st.heartbeat(beat(operator(i), T0 + TIMEOUT + 2), T0 + TIMEOUT + 2)
    assert st.plan is not None
    pub = st.pending()
    assert pub is not None and operator(0).address in {r[0] for r in pub.rows}
    assert_covers(pub.rows)
    assert len(st.reserved) == 1
