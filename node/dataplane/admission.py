"""The admission queue of a stage: OPENs waiting, first come first served, for KV room.

A full stage does not refuse a request that could fit its budget: its OPEN waits here (with the
connection it came on and when it first arrived), and HIDDEN frames the previous stage sends for it
meanwhile are *parked* and replayed once it is admitted. `admit` drains the queue in order whenever
the server frees KV (a finish, a cancellation, a timeout), stopping at the first request that still
does not fit, which keeps its place at the head; `expired` hands back the requests that waited longer
than the session timeout, for the server to refuse with NO_CAPACITY. No model, no sockets: the
server passes in how to open a request and how to report a failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator

from node.dataplane.checks import check_signer, sender_of
from node.runtime.models.errors import ModelError
from protocol.dataplane_errors import DataPlaneError
from protocol.frames import Frame, parse_open

log = logging.getLogger("veriplex.dataplane")

Waiting = tuple[Frame, asyncio.StreamWriter, float]  # (OPEN frame, its connection, queued at)


class AdmissionQueue:
    """OPENs waiting for KV room (FIFO) and the HIDDEN frames that arrived for them."""

    def __init__(self) -> None:
        self.items: deque[Waiting] = deque()
        self.parked: dict[bytes, list[Frame]] = {}  # HIDDEN frames of queued requests
        self.admitting = False

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Waiting]:
        return iter(self.items)

    def holds(self, rid: bytes) -> bool:
        return any(item[0].request_id == rid for item in self.items)

    def push(self, f: Frame, writer: asyncio.StreamWriter, queued_at: float | None) -> None:
        """Queue an OPEN at the back, or — one taken from the queue that still does not fit
        (`queued_at` set) — back at the head, where it keeps its place."""
        if queued_at is None:
            self.items.append((f, writer, time.monotonic()))
            log.info("stage full: request %s queued (%d waiting)", f.request_id.hex(), len(self.items))
        else:
            self.items.appendleft((f, writer, queued_at))

    def park(self, f: Frame) -> None:
        self.parked.setdefault(f.request_id, []).append(f)

    def take_parked(self, rid: bytes) -> list[Frame]:
        return self.parked.pop(rid, [])

    def remove(self, item: Waiting) -> None:
        self.items.remove(item)
        self.parked.pop(item[0].request_id, None)

    def cancel(self, f: Frame) -> None:
        """A CLOSE for a queued request: same sender rule as for an admitted one."""
        for item in [w for w in self.items if w[0].request_id == f.request_id]:
            check_signer(f, sender_of(parse_open(item[0].body).request, item[0].stage)[0],
                         "the request's sender")
            self.remove(item)

    def drop_writer(self, writer: asyncio.StreamWriter) -> None:
        """Forget the requests queued by a connection that closed."""
        for item in [w for w in self.items if w[1] is writer]:
            self.items.remove(item)

    def expired(self, timeout_s: float, now: float | None = None) -> list[Waiting]:
        """Take the requests that waited longer than `timeout_s` (oldest first)."""
        now = time.monotonic() if now is None else now
        out = []
        while self.items and now - self.items[0][2] > timeout_s:
            item = self.items.popleft()
            self.parked.pop(item[0].request_id, None)
            out.append(item)
        return out

    async def admit(self, open_: Callable[[Frame, asyncio.StreamWriter, float], Awaitable[bool]],
                    fail: Callable[[Frame, asyncio.StreamWriter, Exception], None]) -> None:
        """Open queued requests in order until one still does not fit (`open_` returns False: it
        has queued itself back at the head) or the queue is empty."""
        self.admitting = True
        try:
            while self.items:
                f, w, t = self.items.popleft()
                try:
                    if not await open_(f, w, t):
                        break
                except (DataPlaneError, ModelError) as e:
                    self.parked.pop(f.request_id, None)
                    fail(f, w, e)
        finally:
            self.admitting = False
