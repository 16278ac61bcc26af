"""The IO shell of failure reports: probe a reported node's data port, apply the verdicts.

`POST /report` (`FailureChecks.report`) opens a suspicion on the reported operator, probes its
data port at once (or joins the probe in flight) and answers what the coordinator found: ALIVE
(a PONG signed by the operator came back: the report is refuted and nothing changes), SUSPECTED
(unreachable, but heard from too recently to evict; `run` keeps probing every `every_s`), or
EVICTED (unreachable and silent: `CoordinatorState.evict`, which heals the stage onto a standby
at once; the IO loop publishes the new epoch). The rule is `suspects.Suspects`'; this module only
talks to the network. Everything runs on the coordinator's event loop, like every other state
change (app.py), and a probe never holds the loop: it is a task with a hard deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable

from coincurve import PrivateKey
from eth_utils import to_checksum_address

from protocol.api_errors import ModelNotServed, UnknownOperator
from protocol.frames import Kind, make_frame, parse_frame, read_frame
from protocol.messages import FailureReport, FailureReportAck, ReportOutcome
from scheduler.service.state import CoordinatorState, split_endpoint
from scheduler.service.suspects import Suspects, SuspectTiming, Verdict

log = logging.getLogger("veriplex.coordinator")


async def probe(host: str, port: int, operator: str, chain_id: int, key: PrivateKey,
                timeout_s: float) -> tuple[bool, str]:
    """(reachable, what happened): reachable only when `host:port` answers a PING carrying a
    fresh nonce with a PONG for that nonce and chain, signed by `operator`, within `timeout_s`
    (connecting included). A recorded PONG cannot be replayed: the nonce is new each time."""
    nonce = secrets.token_bytes(32)
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(make_frame(key, Kind.PING, chain_id, nonce).to_bytes())
            await writer.drain()
            buf = await read_frame(reader, 4096)
        if buf is None:
            return False, f"{host}:{port} closed the connection without a PONG"
        f = parse_frame(buf)
        if f.kind != Kind.PONG or f.request_id != nonce or f.chain_id != chain_id:
            return False, f"{host}:{port} answered {f.kind.name}, not a PONG to this probe"
        signer = f.signer()
        if signer.lower() != operator.lower():
            return False, f"{host}:{port} answered with a PONG signed by {signer}, not {operator}"
        return True, f"{host}:{port} answered a PONG signed by its operator"
    except TimeoutError:
        return False, f"{host}:{port} gave no PONG within {timeout_s:g} s"
    except OSError as e:
        return False, f"{host}:{port} is unreachable ({e.strerror or type(e).__name__})"
    except Exception as e:  # noqa: BLE001 - a malformed answer is no PONG
        return False, f"{host}:{port} answered something unreadable ({e})"
    finally:
        if writer is not None:
            writer.close()


class FailureChecks:
    """Failure reports checked against the coordinator's own probes (module docstring)."""

    def __init__(self, state: CoordinatorState, timing: SuspectTiming | None = None,
                 probe_timeout_s: float = 2.0, clock: Callable[[], float] = time.time) -> None:
        self.state, self.clock = state, clock
        self.suspects = Suspects(timing or SuspectTiming())
        self.probe_timeout_s = probe_timeout_s
        self.key = PrivateKey()  # PINGs must be signed; nothing checks by whom
        self.probes: dict[str, asyncio.Task[None]] = {}
        self.counts = {"reports": 0, "probes": 0, "refuted": 0, "evicted": 0}

    async def report(self, rep: FailureReport) -> FailureReportAck:
        """Check the reported node now and say what was found (raises for unknown ones)."""
        st = self.state
        if rep.model_id != st.model.model_id:
            raise ModelNotServed(f"model {rep.model_id} is not served here (this coordinator "
                                 f"schedules model {st.model.model_id})")
        op = to_checksum_address(rep.operator)
        if op not in st.registered:
            raise UnknownOperator(f"{op} is not an active operator on the NodeRegistry")
        self.counts["reports"] += 1
        if op not in st.live:
            return FailureReportAck(operator=op, outcome=ReportOutcome.EVICTED,
                                    detail="not live: already evicted")
        fresh = op not in self.suspects.open
        self.suspects.report(op, self.clock())
        if fresh:
            log.info("failure report on %s (%s): probing its data port", op, rep.reason[:200])
        task = self.probes.get(op)
        if task is None and op in self.suspects.due(self.clock()):
            task = self._start(op)
        if task is not None:
            await asyncio.shield(task)
        return self.ack(op)

    def ack(self, op: str) -> FailureReportAck:
        s = self.suspects.open.get(op)
        if op not in self.state.live:
            return FailureReportAck(operator=op, outcome=ReportOutcome.EVICTED,
                                    detail=s.detail if s else "evicted")
        if s is None:
            return FailureReportAck(operator=op, outcome=ReportOutcome.ALIVE,
                                    detail="its data port answered a PONG signed by its operator")
        left = self.suspects.silence_left(op, self.state.last_seen.get(op), self.clock())
        return FailureReportAck(operator=op, outcome=ReportOutcome.SUSPECTED,
                                detail=f"{s.detail}; evicted if still unreachable with no "
                                       f"heartbeat for {left:.1f} s more")

    def _start(self, op: str) -> asyncio.Task[None]:
        self.suspects.started(op, self.clock())
        self.counts["probes"] += 1
        task = asyncio.create_task(self._probe(op), name=f"probe-{op}")
        self.probes[op] = task
        return task

    async def _probe(self, op: str) -> None:
        try:
            node = self.state.registered.get(op)
            if node is None:
                reachable, detail = False, "gone from the registry"
            else:
                host, port = split_endpoint(node.endpoint)
                reachable, detail = await probe(host, port, op, self.state.chain_id, self.key,
                                                self.probe_timeout_s)
            self._apply(op, self.suspects.probed(op, reachable, detail,
                                                 self.state.last_seen.get(op), self.clock()))
        finally:
            self.probes.pop(op, None)

    def _apply(self, op: str, verdict: Verdict) -> None:
        now = self.clock()
        s = self.suspects.open.get(op)
        if verdict is Verdict.REFUTED:
            self.counts["refuted"] += 1
            self.state.note(now, f"failure report on {op} refuted: its data port answered")
            log.info("failure report on %s refuted: its data port answered", op)
        elif verdict is Verdict.EVICT and op in self.state.live:
            seen = self.state.last_seen.get(op)
            silent = f"{now - seen:.1f} s" if seen is not None else "ever"
            self.counts["evicted"] += 1
            self.state.evict(op, now, f"reported failed; probes found it unreachable and it sent "
                                      f"no heartbeat for {silent}")
            log.info("evicted %s on a checked failure report (silent for %s)", op, silent)
        elif verdict is Verdict.DROPPED and s is None:
            log.info("failure report on %s undecided; left to the heartbeat timeout", op)

    def step(self) -> None:
        """Decide what the clock decides (silence grew) and start the probes that are due."""
        now = self.clock()
        for op in list(self.suspects.open):
            if op not in self.state.live:
                self.suspects.forget(op)  # gone by other means (timeout, registry, LEAVE)
                continue
            if op not in self.probes:
                self._apply(op, self.suspects.decide(op, self.state.last_seen.get(op), now))
        for op in self.suspects.due(now):
            self._start(op)

    async def run(self) -> None:
        """Probe open suspicions every `every_s` until cancelled."""
        try:
            while True:
                try:
                    self.step()
                except Exception:  # never let one bad iteration stop the checks
                    log.exception("failure-report step failed")
                await asyncio.sleep(self.suspects.timing.every_s / 2)
        finally:
            for task in list(self.probes.values()):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
