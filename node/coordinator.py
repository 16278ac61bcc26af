"""A typed HTTP client of the coordinator API, for workers (heartbeats, assignments) and the
gateway (routes, failure reports).

    hb = HeartbeatClient(url, chain_id, operator_key)        # the node's OPERATOR key (32 bytes)
    ack = hb.send(active=2, kv_used_bytes=..., layer_us=...)  # signed, next seq, current time
    ack.assignment                                            # layer range of the latest epoch
    HeartbeatLoop(hb, every_s=5, load=..., on_assignment=...).start()   # follow epochs
    CoordinatorClient(url).route(RouteRequest(model_id=1, prompt_tokens=12, output_tokens=64))
    CoordinatorClient(url).report(FailureReport(model_id=1, operator="0x…"))  # checked, not obeyed

Refusals come back as the service's own exception classes (`Replay`, `BadSignature`, `NotReady`,
…) carrying the server's message, so callers handle them exactly as the coordinator does.
`HeartbeatClient` numbers heartbeats from the millisecond clock, so `seq` keeps increasing
across restarts of the worker without any state on disk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from coincurve import PrivateKey

from protocol import api_errors as errors
from protocol.messages import (
    AssignmentResponse,
    FailureReport,
    FailureReportAck,
    Heartbeat,
    HeartbeatAck,
    HeartbeatKind,
    RouteRequest,
    RouteResponse,
    address_of,
    sign_heartbeat,
)

_BY_CODE: dict[str, type[errors.ServiceError]] = {
    cls.code: cls for cls in (
        errors.MalformedMessage, errors.BadSignature, errors.UnknownOperator, errors.WrongChain,
        errors.StaleMessage, errors.Replay, errors.NotReady, errors.ModelNotServed)
}


class CoordinatorClient:
    """Unsigned calls: assignments, routes, status."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, content: str | None = None) -> Any:
        try:
            r = self.http.request(method, self.url + path, content=content,
                                  headers={"content-type": "application/json"})
        except httpx.HTTPError as e:
            raise errors.ServiceError(f"coordinator at {self.url} unreachable: {e}") from None
        if r.status_code == 200:
            return r.json()
        try:
            err = r.json()["error"]
            code, message = str(err["code"]), str(err["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "", r.text[:500]
        exc = _BY_CODE.get(code, errors.ServiceError)(message)
        exc.status = r.status_code
        raise exc

    def assignment(self, operator: str) -> AssignmentResponse:
        return AssignmentResponse.model_validate(self._call("GET", f"/assignment/{operator}"))

    def route(self, req: RouteRequest) -> RouteResponse:
        return RouteResponse.model_validate(self._call("POST", "/route", req.model_dump_json()))

    def report(self, rep: FailureReport) -> FailureReportAck:
        """Tell the coordinator a stage failed; it checks the node itself before evicting."""
        return FailureReportAck.model_validate(self._call("POST", "/report", rep.model_dump_json()))

    def status(self) -> dict[str, Any]:
        return dict(self._call("GET", "/status"))


class HeartbeatClient(CoordinatorClient):
    """Signs and sends heartbeats for one operator key."""

    def __init__(self, url: str, chain_id: int, operator_key: bytes, model_id: int = 0,
                 timeout_s: float = 5.0) -> None:
        super().__init__(url, timeout_s)
        self.chain_id = chain_id
        self.model_id = model_id
        self._key = bytes(operator_key)
        self.operator = address_of(PrivateKey(self._key))
        self._seq = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"HeartbeatClient({self.url}, operator={self.operator})"

    def _next_seq(self) -> int:
        with self._lock:
            self._seq = max(self._seq + 1, time.time_ns() // 1_000_000)
            return self._seq

    def send(self, kind: HeartbeatKind = HeartbeatKind.BEAT, **load: int) -> HeartbeatAck:
        """Send one heartbeat; `load` sets `active`, `queue_ms`, `kv_used_bytes`,
        `kv_capacity_bytes`, `layer_us` (see `Heartbeat`)."""
        hb = Heartbeat(kind=kind, chain_id=self.chain_id, operator=self.operator,
                       seq=self._next_seq(), timestamp_ms=int(time.time() * 1000),
                       model_id=self.model_id, **load)
        body = sign_heartbeat(self._key, hb).model_dump_json()
        return HeartbeatAck.model_validate(self._call("POST", "/heartbeat", body))

    def leave(self) -> HeartbeatAck:
        """Announce a graceful departure: the coordinator evicts this node at once."""
        return self.send(HeartbeatKind.LEAVE)


class HeartbeatLoop:
    """Sends a heartbeat every `every_s` seconds from a daemon thread.

    `load()` returns the fields to report (`active`, `queue_ms`, `kv_used_bytes`, …);
    `on_assignment(a)` is called whenever the acknowledged assignment changes (a new epoch, a new
    layer range, or unassigned), which is how a worker follows the coordinator. Refusals and
    unreachable coordinators are kept in `last_error` and retried on the next beat. `nudge()`
    sends the next beat at once — a worker does so when it starts serving a new range, so the
    coordinator (which routes a stage only once its node confirms the range) learns without
    waiting a whole period.
    """

    def __init__(self, client: HeartbeatClient, every_s: float,
                 load: Callable[[], dict[str, int]] | None = None,
                 on_assignment: Callable[[AssignmentResponse], None] | None = None) -> None:
        self.client = client
        self.every_s = every_s
        self.load = load or dict
        self.on_assignment = on_assignment
        self.assignment: AssignmentResponse | None = None
        self.last_error = ""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"heartbeat-{client.operator}")

    def start(self) -> HeartbeatLoop:
        self._thread.start()
        return self

    def nudge(self) -> None:
        """Send the next heartbeat now instead of at the end of the period (thread-safe)."""
        self._wake.set()

    def stop(self, leave: bool = False) -> None:
        """Stop beating; with `leave`, announce the departure so eviction is immediate."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self.every_s + (self.client.http.timeout.read or 5.0) + 1)
        if leave:
            self.client.leave()

    def _run(self) -> None:
        while True:
            try:
                ack = self.client.send(**self.load())
                self.last_error = ""
                if ack.assignment is not None and ack.assignment != self.assignment:
                    self.assignment = ack.assignment
                    if self.on_assignment is not None:
                        self.on_assignment(ack.assignment)
            except errors.ServiceError as e:
                self.last_error = str(e)
            self._wake.wait(self.every_s)
            self._wake.clear()
            if self._stop.is_set():
                return
