"""The coordinator's IO shell: a background loop (registry polls, ticks, epoch publication) and
the FastAPI app serving heartbeats, assignments, routes, failure reports and status.

All decisions are `CoordinatorState`'s; this module only fetches, feeds it events with the wall
clock, publishes what it says to publish, and turns its answers and refusals into HTTP. State is
touched only from the event loop; chain calls run in worker threads and their results are applied
back on the loop. A chain failure (unreachable RPC, a revert because an operator was jailed
meanwhile) is logged and retried after a registry refresh — it never stops the API. Failure
reports (`POST /report`) are checked by the coordinator's own probes (`reports.FailureChecks`, on
the same loop) before anyone is evicted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from eth_utils import is_address
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from contracts.client import Chain
from contracts.errors import ContractsError
from protocol.api_errors import MalformedMessage, ServiceError
from protocol.messages import (
    FailureReport,
    FailureReportAck,
    HeartbeatAck,
    RouteRequest,
    SignedHeartbeat,
    error_body,
)
from scheduler.errors import NoRoute, SchedulerError
from scheduler.service.chain_io import (
    current_epoch_matching,
    publish,
    read_nodes,
    registry_changed,
)
from scheduler.service.reports import FailureChecks
from scheduler.service.state import CoordinatorState, Publication
from scheduler.service.suspects import SuspectTiming

log = logging.getLogger("veriplex.coordinator")
KEEP_SNAPSHOTS = 32


@dataclass(frozen=True)
class LoopTiming:
    registry_poll_s: float = 5.0
    tick_s: float = 0.5
    max_body_bytes: int = 65_536
    probe_timeout_s: float = 2.0  # a reported node's data port must answer a PING within this


class Coordinator:
    """Glue between the chain, the state machine and the clock."""

    def __init__(self, chain: Chain, state: CoordinatorState, timing: LoopTiming = LoopTiming(),
                 clock: Callable[[], float] = time.time,
                 suspects: SuspectTiming | None = None) -> None:
        self.chain = chain
        self.state = state
        self.timing = timing
        self.clock = clock
        self.checks = FailureChecks(state, suspects or SuspectTiming(), timing.probe_timeout_s,
                                    clock)
        self.last_chain_error = ""
        self.snapshots: OrderedDict[str, bytes] = OrderedDict()
        self._last_poll: float | None = None
        self._head: int | None = None  # the block the registry was last read at (or after)
        self._retry_at = 0.0

    async def step(self) -> None:
        """One loop iteration: refresh the registry when due, tick, publish what is pending."""
        now = self.clock()
        if self._last_poll is not None and self._head is not None:
            try:  # a slash, jailing or unbonding in a new block: re-read the registry now
                head, changed = await asyncio.to_thread(registry_changed, self.chain, self._head)
                self._head = head
                if changed:
                    self._last_poll = None
            except ContractsError as e:
                self._chain_failed(f"reading the registry's events failed: {e}")
        if self._last_poll is None or now - self._last_poll >= self.timing.registry_poll_s:
            try:
                head = await asyncio.to_thread(self.chain.block_number)
                nodes = await asyncio.to_thread(read_nodes, self.chain)
                self._last_poll, self._head = now, head
                self.state.sync_registry(nodes, self.clock())
            except ContractsError as e:
                self._chain_failed(f"reading the registry failed: {e}")
        self.state.tick(self.clock())
        pub = self.state.pending()
        if pub is None or self.clock() < self._retry_at:
            return
        try:
            if self.state.published is None:  # after a restart the chain may already agree
                epoch = await asyncio.to_thread(current_epoch_matching, self.chain, pub)
                if epoch:
                    self._adopt(pub, epoch, "adopted")
                    return
            epoch = await asyncio.to_thread(publish, self.chain, pub)
        except ContractsError as e:
            self._chain_failed(f"publishing the allocation failed: {e}")
            self._last_poll = None  # the registry changed under us, most likely: re-read it
            self._retry_at = self.clock() + self.timing.registry_poll_s
            return
        self._adopt(pub, epoch, "published")

    def _adopt(self, pub: Publication, epoch: int, verb: str) -> None:
        self.last_chain_error = ""
        self.snapshots[pub.snapshot_hash] = pub.snapshot.canonical_json()
        while len(self.snapshots) > KEEP_SNAPSHOTS:
            self.snapshots.popitem(last=False)
        self.state.mark_published(pub, epoch, self.clock())
        log.info("%s epoch %d: %d stages, snapshot %s (%s)", verb, epoch, len(pub.rows),
                 pub.snapshot_hash, pub.reason)

    def _chain_failed(self, text: str) -> None:
        self.last_chain_error = text
        log.warning("%s", text)

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:  # never let one bad iteration stop the coordinator
                log.exception("coordinator step failed")
            await asyncio.sleep(self.timing.tick_s)


def _validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:8]:
        where = ".".join(str(x) for x in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status)


def create_app(coord: Coordinator) -> FastAPI:
    """The HTTP API (documented in scheduler/service/README.md)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(coord.run()), asyncio.create_task(coord.checks.run())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass

    app = FastAPI(title="Veriplex coordinator", lifespan=lifespan)
    state = coord.state

    async def body_of(request: Request, model: type[BaseModel]) -> Any:
        raw = await request.body()
        if len(raw) > coord.timing.max_body_bytes:
            raise MalformedMessage(f"body is {len(raw)} bytes, at most "
                                   f"{coord.timing.max_body_bytes}")
        try:
            return model.model_validate_json(raw)
        except ValidationError as e:
            raise MalformedMessage(f"invalid {model.__name__}: {_validation_message(e)}") from None

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc.status, exc.code, str(exc))

    @app.exception_handler(NoRoute)
    async def no_route(_: Request, exc: NoRoute) -> JSONResponse:
        return _error(503, "no_route", str(exc))

    @app.exception_handler(SchedulerError)
    async def scheduler_error(_: Request, exc: SchedulerError) -> JSONResponse:
        return _error(400, "scheduler", str(exc))

    @app.post("/heartbeat")
    async def heartbeat(request: Request) -> HeartbeatAck:
        signed = await body_of(request, SignedHeartbeat)
        hb = state.heartbeat(signed, coord.clock())
        assignment = None
        if state.published is not None:
            assignment = state.assignment(hb.operator)
        return HeartbeatAck(accepted=True, seq=hb.seq,
                            epoch=state.published.epoch if state.published else 0,
                            assignment=assignment)

    @app.get("/assignment/{operator}")
    async def assignment(operator: str) -> Any:
        if not is_address(operator):
            return _error(422, "malformed", f"{operator!r} is not a 0x-prefixed 20-byte address")
        return state.assignment(operator)

    @app.post("/route")
    async def route(request: Request) -> Any:
        req = await body_of(request, RouteRequest)
        return state.route(req)

    @app.post("/report")
    async def report(request: Request) -> FailureReportAck:
        rep = await body_of(request, FailureReport)
        return await coord.checks.report(rep)

    @app.get("/status")
    async def status() -> dict[str, Any]:
        out = state.status(coord.clock())
        out["failure_reports"] = dict(coord.checks.counts,
                                      open=sorted(coord.checks.suspects.open))
        out["coordinator"] = coord.chain.signer.address if coord.chain.signer else ""
        out["last_chain_error"] = coord.last_chain_error
        return out

    @app.get("/snapshot/{snapshot_hash}")
    async def snapshot(snapshot_hash: str) -> Response:
        doc = coord.snapshots.get(snapshot_hash.lower())
        if doc is None:
            return _error(404, "unknown_snapshot",
                          f"snapshot {snapshot_hash} is not among the last {KEEP_SNAPSHOTS} "
                          f"published by this coordinator")
        return Response(doc, media_type="application/json")

    return app
