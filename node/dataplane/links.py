"""A stage's outgoing links: one TCP connection per downstream endpoint, shared by every request.

`send` writes a signed frame to the stage a request assigns next (connecting on first use, within
10 s, else `StageFailed`), draining only when more than 4 MiB are buffered so a step's frames travel
back to back. Each link has a reader: ERROR frames coming back are handed to `on_error` (the server
relays them toward the gateway), and when the link closes `on_lost(endpoint)` lets the server tell
the sessions routed through it that the next stage failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from protocol.dataplane_errors import DataPlaneError, StageFailed
from protocol.frames import ErrorInfo, Frame, Kind, parse_error, parse_frame, read_frame
from protocol.messages import StageAssignment

log = logging.getLogger("veriplex.dataplane")

Endpoint = tuple[str, int]


class PeerLinks:
    """The connections from one stage to the stages after it (and, on the last, to the first)."""

    def __init__(self, max_frame_bytes: int, spawn: Callable[[Coroutine[Any, Any, None]], None],
                 on_error: Callable[[Frame, ErrorInfo], None], on_lost: Callable[[Endpoint], None]):
        self.max_frame_bytes = max_frame_bytes
        self.spawn, self.on_error, self.on_lost = spawn, on_error, on_lost
        self.writers: dict[Endpoint, asyncio.StreamWriter] = {}
        self._lock = asyncio.Lock()

    async def send(self, st: StageAssignment, f: Frame, stage: int) -> None:
        w = await self._link(st, stage)
        w.write(f.to_bytes())
        if w.transport.get_write_buffer_size() > 4 * 2**20:
            await w.drain()

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers.clear()

    async def _link(self, st: StageAssignment, stage: int) -> asyncio.StreamWriter:
        ep = (st.host, st.port)
        w = self.writers.get(ep)
        if w is not None and not w.is_closing():
            return w
        async with self._lock:
            held = self.writers.get(ep)
            if held is not None and not held.is_closing():
                return held
            try:
                reader, fresh = await asyncio.wait_for(asyncio.open_connection(st.host, st.port), 10.0)
            except (TimeoutError, OSError) as e:
                raise StageFailed(f"stage {stage} at {st.host}:{st.port} is unreachable: {e}", stage) from None
            self.writers[ep] = fresh
            self.spawn(self._read(ep, reader, fresh))
            return fresh

    async def _read(self, ep: Endpoint, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """Hand ERRORs from downstream to `on_error`; report the link's loss with `on_lost`."""
        try:
            while True:
                buf = await read_frame(reader, self.max_frame_bytes)
                if buf is None:
                    break
                f = parse_frame(buf)
                if f.kind != Kind.ERROR:
                    continue
                f.signer()
                self.on_error(f, parse_error(f.body))
        except (DataPlaneError, ConnectionError, asyncio.IncompleteReadError) as e:
            log.info("link to %s:%d failed: %s", ep[0], ep[1], e)
        finally:
            if self.writers.get(ep) is w:
                del self.writers[ep]
            w.close()
            self.on_lost(ep)
