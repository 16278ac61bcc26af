"""Helpers of the failure-report tests (tests/scheduler_service/test_failure_reports.py and
tests/adversarial/test_failure_report_attacks.py): a coordinator state over three nodes (one
replica of two stages plus a hot standby) whose registered endpoints the test chooses, real stage
servers to answer probes, and a port nothing listens on."""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace
from pathlib import Path

from coincurve import PrivateKey

from scheduler.service.reports import FailureChecks
from scheduler.service.state import CoordinatorState, Timing
from scheduler.service.suspects import SuspectTiming
from tests.support.coordinator import CHAIN_ID, MODEL, Operator, beat, chain_node, confirm, operator

HEARTBEAT_TIMEOUT_S = 120.0  # far beyond any test: an eviction seen here came from a report


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def stage_server(model: Path, op: Operator, store: Path):  # type: ignore[no-untyped-def]
    """A started `StageServer` whose operator key is `op`'s (what `node serve` runs)."""
    from node.dataplane.directory import StaticDirectory
    from tests.support.agent import make_server

    srv = make_server(model, (0, 4), PrivateKey(op.key), StaticDirectory([op.address]), store,
                      chain_id=CHAIN_ID)
    await srv.start()
    return srv


@dataclass
class World:
    state: CoordinatorState
    checks: FailureChecks
    ops: list[Operator]  # registration order; ops[2] is the hot standby

    def pipeline(self) -> dict[str, tuple[int, int]]:
        """Operator → range of the rows the state would publish now."""
        return {op: (a, b) for op, _, a, b in self.state.rows()}

    def beat(self, *which: int, now: float) -> None:
        """Heartbeats of `which` (indices into ops), each confirming its published range."""
        p = self.state.published
        assert p is not None
        rows = {op: (a, b) for op, _, a, b in p.rows}
        for i in which:
            op = self.ops[i]
            a, b = rows.get(op.address, (0, 0))
            fields = {"epoch": p.epoch, "layer_start": a, "layer_end": b} if b else {}
            self.state.heartbeat(beat(op, now, **fields), now)

    async def check_until_evicted(self, victim: str, within_s: float, *beating: int) -> None:
        """Run the coordinator's failure checks while `beating` (indices into ops) keep beating,
        until `victim` is no longer live or `within_s` seconds have passed."""
        import asyncio
        import time

        runner = asyncio.create_task(self.checks.run())
        start = time.time()
        try:
            while victim in self.state.live and time.time() - start < within_s:
                self.beat(*beating, now=time.time())
                await asyncio.sleep(0.1)
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)


def world(ports: list[int], now: float, timing: SuspectTiming) -> World:
    """Three operators registered with endpoints on `ports`; the last is the hot standby. The
    first epoch is published and every stage confirmed at `now`."""
    ops = [operator(30 + i) for i in range(3)]
    st = CoordinatorState(MODEL, CHAIN_ID, Timing(heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
                                                  rebalance_interval_s=1e9), standby_reserve=1)
    st.sync_registry([replace(chain_node(op, port), registered_block=10 + i)
                      for i, (op, port) in enumerate(zip(ops, ports, strict=True))], now)
    pub = st.pending()
    assert pub is not None
    st.mark_published(pub, 1, now)
    confirm(st, ops, now)
    assert {op.address for op in ops[:2]} == {r[0] for r in st.published.rows}  # type: ignore[union-attr]
    return World(st, FailureChecks(st, timing, probe_timeout_s=1.0), ops)
