"""The worker side of the coordinator: heartbeats out, assignments in, shards swapped to follow.

`decide(current, assignment)` is the pure part: given the layer range served now (or None when
idle) and the coordinator's latest assignment, it says KEEP, LOAD a new range, or go IDLE.
`Follower` is the thin IO around it: a `HeartbeatLoop` thread reports load (active sessions,
reserved KV bytes, measured decode µs per layer, and the range served with the epoch of the
assignment it serves it for — the coordinator routes a stage only once this confirms it) and hands
each changed assignment to the asyncio loop, where the new shard is loaded off-loop, the old
stage is DRAINED (no new work is refused while its in-flight sessions finish, up to `drain_s`;
then it lingers until `linger_s` after the last request that finished there, before or during
the drain, since the gateway asks each stage for its signed commitment right after the last
token), stopped, and the new stage is started on the same host:port. Unassigned (or standby)
means idle: nothing is served, heartbeats continue.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol.api_errors import ServiceError
from protocol.messages import AssignmentResponse


class Action(enum.Enum):
    KEEP = "keep"
    LOAD = "load"
    IDLE = "idle"


@dataclass(frozen=True)
class Decision:
    action: Action
    layers: tuple[int, int] | None = None
    epoch: int = 0


def decide(current: tuple[int, int] | None, a: AssignmentResponse | None) -> Decision:
    """What to do with the stage given the range served now and the latest assignment."""
    if a is None:
        return Decision(Action.KEEP if current is not None else Action.IDLE, current)
    if not a.assigned or a.standby or a.layer_end <= a.layer_start:
        return Decision(Action.KEEP if current is None else Action.IDLE, None, a.epoch)
    want = (a.layer_start, a.layer_end)
    if want == current:
        return Decision(Action.KEEP, current, a.epoch)
    return Decision(Action.LOAD, want, a.epoch)


def measure_layer_us(executor: Any, runs: int = 3) -> int:
    """Decode µs per layer of this executor: best of `runs` one-token forwards (at least 1)."""
    import torch

    sh = executor.shard
    if sh.start == 0:
        x = torch.zeros(1, dtype=torch.long, device=sh.device)
    else:
        x = torch.zeros(1, sh.hidden_size, dtype=sh.dtype, device=sh.device)
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        executor.run(x, 0, logits="last")
        best = min(best, time.perf_counter() - t0)
    return max(1, int(best * 1e6 / max(1, sh.end - sh.start)))


class Follower:
    """Keeps at most one `StageServer` serving the range the coordinator assigns.

    `build(layers, port)` returns a not-yet-started StageServer; `announce(text)` reports each
    transition (the CLI prints it). Call `follow(heartbeat_client, every_s)` inside the event loop.
    """

    def __init__(self, build: Callable[[tuple[int, int], int], Any], port: int,
                 announce: Callable[[str], None] = print, drain_s: float = 30.0,
                 linger_s: float = 5.0) -> None:
        self.build = build
        self.port = port
        self.announce = announce
        self.drain_s = drain_s
        self.linger_s = linger_s
        self.server: Any = None
        self.epoch = 0
        self.serving_epoch = 0  # epoch of the newest assignment the running server satisfies
        self.layer_us = 0
        self._hb: Any = None
        self.kv_capacity = 0
        self._queue: asyncio.Queue[AssignmentResponse] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def layers(self) -> tuple[int, int] | None:
        return None if self.server is None else tuple(self.server.layers)  # type: ignore[return-value]

    def load(self) -> dict[str, int]:
        """The heartbeat fields (read from the heartbeat thread; plain attribute reads)."""
        s = self.server
        if s is None:
            return {}
        used = s.sessions.kv_reserved
        cap = max(s.sessions.kv_budget_bytes, used)
        a, b = s.layers
        return {"active": len(s.sessions.sessions), "kv_used_bytes": used,
                "kv_capacity_bytes": cap, "layer_us": self.layer_us,
                "epoch": self.serving_epoch, "layer_start": a, "layer_end": b}

    def on_assignment(self, a: AssignmentResponse) -> None:
        """Thread-safe: queue an assignment for the loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, a)

    async def apply(self, a: AssignmentResponse) -> Decision:
        d = decide(self.layers, a)
        self.epoch = max(self.epoch, d.epoch)
        if d.action is Action.KEEP:
            if self.server is not None and d.layers == self.layers and d.epoch:
                self.serving_epoch = max(self.serving_epoch, d.epoch)
            return d
        if d.action is Action.IDLE:
            await self._retire()
            self.announce(f"idle: unassigned at epoch {a.epoch}")
            return d
        assert d.layers is not None
        new = await asyncio.to_thread(self.build, d.layers, self.port)
        self.layer_us = await asyncio.to_thread(measure_layer_us, new.executor)
        await self._retire()
        await new.start()
        self.port = new.port
        self.server = new
        self.serving_epoch = a.epoch
        if self._hb is not None:  # confirm the new range now: routing waits for it
            self._hb.nudge()
        self.announce(f"serving layers [{d.layers[0]}, {d.layers[1]}) at epoch {a.epoch} on "
                      f"{new.host}:{new.port} as {new.address}")
        return d

    async def _retire(self) -> None:
        """Drain the current stage (its in-flight sessions finish), then stop it."""
        old, self.server = self.server, None
        if old is None:
            return
        deadline = time.monotonic() + self.drain_s
        while old.sessions.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # Requests that finished here lately, before the retirement or while draining: their
        # gateway's COMMIT may still be on its way. Answer it for `linger_s` after the last one.
        ago = old.sessions.since_last_close()
        if ago is not None and ago < self.linger_s:
            await asyncio.sleep(min(self.linger_s - ago, max(0.0, deadline - time.monotonic())))
        await old.stop()

    async def follow(self, client: Any, every_s: float, stop: asyncio.Event) -> None:
        """Heartbeat from a thread and apply assignments here until `stop` is set."""
        from node.coordinator import HeartbeatLoop

        self._loop = asyncio.get_running_loop()
        hb = HeartbeatLoop(client, every_s, load=self.load, on_assignment=self.on_assignment)
        self._hb = hb.start()
        self.announce(f"following coordinator {client.url} as {client.operator}")
        try:
            while not stop.is_set():
                get = asyncio.ensure_future(self._queue.get())
                halt = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({get, halt}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    break
                halt.cancel()
                a = get.result()
                while not self._queue.empty():  # only the newest assignment matters
                    a = self._queue.get_nowait()
                await self.apply(a)
        finally:
            try:
                await asyncio.to_thread(hb.stop, True)
            except ServiceError as e:  # the coordinator is gone: it will evict us on timeout
                self.announce(f"could not announce leaving: {e}")
            await self._retire()
