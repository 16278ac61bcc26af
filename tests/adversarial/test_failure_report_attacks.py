"""Lying failure reports: anyone may tell the coordinator a stage failed (`POST /report`), so a
report must never be enough to evict a live honest worker — which would hand its layers (and its
share of the fees) to someone else and stall its requests in flight.

The coordinator evicts on its own evidence only (scheduler/service/suspects.py): a PONG signed by
the operator refutes any report, and even a worker whose data port the coordinator cannot reach
(a partition, a firewall, an overloaded box) stays as long as its signed heartbeats come. The
workers here are real stage servers on the tiny model; the reports come in floods.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from node.runtime.models.tiny import build_tiny_model
from protocol.messages import FailureReport, ReportOutcome
from scheduler.service.suspects import SuspectTiming
from tests.support.coordinator import MODEL, operator
from tests.support.reports import closed_port, stage_server, world

TIMING = SuspectTiming(silence_s=0.8, min_failed=2, every_s=0.1, max_age_s=30.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), arch="llama", seed=0)


def test_a_flood_of_lying_reports_cannot_evict_a_live_worker(tiny: Path, tmp_path: Path) -> None:
    async def main() -> None:
        ops = [operator(30 + i) for i in range(3)]
        servers = [await stage_server(tiny, op, tmp_path / f"s{i}") for i, op in enumerate(ops)]
        try:
            w = world([s.port for s in servers], time.time(), TIMING)
            rows = w.state.published.rows  # type: ignore[union-attr]
            victim = w.ops[1].address
            runner = asyncio.create_task(w.checks.run())
            acks = await asyncio.gather(*[
                w.checks.report(FailureReport(model_id=MODEL.model_id, operator=victim,
                                              reason="it died, trust me")) for _ in range(50)])
            for _ in range(20):  # keep lying for longer than the silence a real death needs
                w.beat(0, 1, 2, now=time.time())
                ack = await w.checks.report(FailureReport(model_id=MODEL.model_id,
                                                          operator=victim))
                acks.append(ack)
                await asyncio.sleep(0.1)
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            assert {a.outcome for a in acks} == {ReportOutcome.ALIVE}
            assert victim in w.state.live and w.state.pending() is None  # no new epoch
            assert w.state.published.rows == rows  # type: ignore[union-attr]
            assert w.checks.counts["evicted"] == 0
            # concurrent reports shared probes: the flood did not turn into a flood of probes
            assert w.checks.counts["probes"] <= 1 + 20
        finally:
            for s in servers:
                await s.stop()

    asyncio.run(main())


def test_a_live_worker_the_coordinator_cannot_reach_stays_while_it_heartbeats(
        tiny: Path, tmp_path: Path) -> None:
    """Its data port is unreachable from the coordinator (closed here), so probes fail — yet its
    signed heartbeats keep arriving: the report stays a suspicion and nothing moves. Once the
    heartbeats stop too, the same evidence does evict it (the rule is not 'never')."""
    async def main() -> None:
        t0 = time.time()
        w = world([closed_port(), closed_port(), closed_port()], t0, TIMING)
        victim = w.ops[1].address
        runner = asyncio.create_task(w.checks.run())
        outcomes = set()
        last_beat = t0
        while time.time() - t0 < 4 * TIMING.silence_s:
            last_beat = time.time()
            w.beat(0, 1, 2, now=last_beat)
            ack = await w.checks.report(FailureReport(model_id=MODEL.model_id, operator=victim))
            outcomes.add(ack.outcome)
            await asyncio.sleep(0.2)
        assert outcomes == {ReportOutcome.SUSPECTED}
        assert victim in w.state.live and w.state.pending() is None
        assert w.checks.counts["probes"] >= 4  # it kept checking, and kept finding it talking
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await w.check_until_evicted(victim, 10, 0, 2)  # its heartbeats stop now
        assert victim not in w.state.live
        assert time.time() - last_beat > TIMING.silence_s  # not before it fell silent

    asyncio.run(main())
