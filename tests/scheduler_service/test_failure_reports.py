"""A failure report makes the coordinator look for itself, and a dead stage is healed at once.

(a) The rule (`suspects.Suspects`, pure): a PONG refutes a report; eviction needs failed probes
in a row, the latest begun after the node's last heartbeat, and a silence longer than
`silence_s`; a heartbeat after a failed probe holds the eviction off; an undecided suspicion is
dropped after `max_age_s`.
(b) The shell (`reports.FailureChecks`) against real sockets: a stage whose worker is gone (its
port closed, its heartbeats stopped) is evicted within about `silence_s` of its last heartbeat —
far inside the heartbeat timeout — and the hot standby takes exactly its range while the
survivor keeps its own; a port answered by another operator's stage server is no alibi; reports
on unknown operators or other models are refused.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from node.runtime.models.tiny import build_tiny_model
from protocol.api_errors import ModelNotServed, UnknownOperator
from protocol.messages import FailureReport, ReportOutcome
from scheduler.service.suspects import Suspects, SuspectTiming, Verdict
from tests.support.coordinator import MODEL, operator
from tests.support.reports import HEARTBEAT_TIMEOUT_S, closed_port, stage_server, world

RULE = SuspectTiming(silence_s=5.0, min_failed=2, every_s=0.5, max_age_s=30.0)
FAST = SuspectTiming(silence_s=0.8, min_failed=2, every_s=0.1, max_age_s=30.0)
OP = "0x" + "ab" * 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), arch="llama", seed=0)


def probe(s: Suspects, now: float, reachable: bool, last_seen: float | None) -> Verdict:
    assert OP in s.due(now)
    s.started(OP, now)
    return s.probed(OP, reachable, "test", last_seen, now + 0.01)


def test_a_pong_refutes_the_report_and_closes_the_suspicion() -> None:
    s = Suspects(RULE)
    s.report(OP, 100.0)
    assert probe(s, 100.0, False, 99.0) is Verdict.PENDING
    assert probe(s, 100.5, True, 99.0) is Verdict.REFUTED
    assert OP not in s.open


def test_eviction_needs_failed_probes_after_the_last_heartbeat_and_a_long_silence() -> None:
    s = Suspects(RULE)
    s.report(OP, 100.0)
    assert probe(s, 100.0, False, 99.0) is Verdict.PENDING  # one failure is not enough
    assert probe(s, 100.5, False, 99.0) is Verdict.PENDING  # two, but silent only 1.5 s
    assert s.decide(OP, 99.0, 103.9) is Verdict.PENDING
    assert s.decide(OP, 99.0, 104.1) is Verdict.EVICT  # silent 5.1 s, both probes after it
    assert OP not in s.open


def test_a_heartbeat_after_the_failed_probes_holds_the_eviction_off() -> None:
    s = Suspects(RULE)
    s.report(OP, 100.0)
    probe(s, 100.0, False, 99.0)
    probe(s, 100.5, False, 99.0)
    # it spoke at 101 (after both failed probes): the probes say nothing about it since
    assert s.decide(OP, 101.0, 110.0) is Verdict.PENDING
    assert probe(s, 110.0, False, 101.0) is Verdict.EVICT  # a fresh failure after its silence


def test_probes_of_one_node_are_spaced_and_never_overlap() -> None:
    s = Suspects(RULE)
    s.report(OP, 100.0)
    s.started(OP, 100.0)
    assert s.due(100.2) == [] and s.due(100.9) == []  # one in flight
    s.probed(OP, False, "test", 99.0, 100.3)
    assert s.due(100.4) == [] and s.due(100.5) == [OP]
    s.report(OP, 100.6)
    assert s.open[OP].reports == 2


def test_an_undecided_suspicion_is_dropped_and_left_to_the_heartbeat_timeout() -> None:
    s = Suspects(RULE)
    s.report(OP, 100.0)
    probe(s, 100.0, False, 99.9)
    assert s.decide(OP, 129.0, 131.0) is Verdict.DROPPED
    assert OP not in s.open


def test_a_dead_stage_is_evicted_on_a_report_and_its_range_goes_to_the_standby_at_once(
        tiny: Path, tmp_path: Path) -> None:
    async def main() -> None:
        ops = [operator(30 + i) for i in range(3)]
        survivor = await stage_server(tiny, ops[0], tmp_path / "s0")
        standby = await stage_server(tiny, ops[2], tmp_path / "s2")
        try:
            t0 = time.time()
            w = world([survivor.port, closed_port(), standby.port], t0, FAST)
            before = w.pipeline()
            dead = w.ops[1].address  # its worker is gone: port closed, no heartbeat from now on
            runner = asyncio.create_task(w.checks.run())
            ack = await w.checks.report(FailureReport(model_id=MODEL.model_id, operator=dead,
                                                      reason="stage closed"))
            assert ack.outcome is ReportOutcome.SUSPECTED and "unreachable" in ack.detail
            while dead in w.state.live and time.time() - t0 < 10:
                w.beat(0, 2, now=time.time())  # the living keep beating
                await asyncio.sleep(0.1)
            took = time.time() - t0
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            assert dead not in w.state.live, w.state.events
            assert FAST.silence_s < took < 5.0 < HEARTBEAT_TIMEOUT_S
            after = w.pipeline()
            assert after == {w.ops[0].address: before[w.ops[0].address],  # survivor untouched
                             w.ops[2].address: before[dead]}  # standby in the dead stage's range
            assert any("reported failed" in e and "standby" in e for e in w.state.events)
            assert w.state.pending() is not None  # the healed epoch is due for publication
            again = await w.checks.report(FailureReport(model_id=MODEL.model_id, operator=dead))
            assert again.outcome is ReportOutcome.EVICTED
        finally:
            await survivor.stop()
            await standby.stop()

    asyncio.run(main())


def test_a_port_answered_by_another_operators_stage_is_no_alibi(tiny: Path,
                                                                  tmp_path: Path) -> None:
    async def main() -> None:
        impostor = await stage_server(tiny, operator(99), tmp_path / "imp")
        try:
            t0 = time.time()
            w = world([closed_port(), impostor.port, closed_port()], t0, FAST)
            dead = w.ops[1].address
            ack = await w.checks.report(FailureReport(model_id=MODEL.model_id, operator=dead))
            assert ack.outcome is ReportOutcome.SUSPECTED
            assert f"not {dead}" in ack.detail  # a PONG, but signed by someone else
            await w.check_until_evicted(dead, 10, 0, 2)
            assert dead not in w.state.live
        finally:
            await impostor.stop()

    asyncio.run(main())


def test_reports_on_unknown_operators_or_other_models_are_refused() -> None:
    async def main() -> None:
        w = world([closed_port()] * 3, time.time(), FAST)
        with pytest.raises(UnknownOperator):
            await w.checks.report(FailureReport(model_id=MODEL.model_id,
                                                operator=operator(77).address))
        with pytest.raises(ModelNotServed):
            await w.checks.report(FailureReport(model_id=MODEL.model_id + 1,
                                                operator=w.ops[0].address))
        assert w.checks.counts["probes"] == 0 and not w.checks.suspects.open

    asyncio.run(main())
