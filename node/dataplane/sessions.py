"""Per-request sessions of one stage: admission against a KV-cache budget, replay guards, and freeing.

A session is created by an OPEN frame and holds the executor's KV cache for the request, its slot in
the hidden-state store, the pipeline description, and the replay state. Admission reserves
`kv_bytes_per_token × (prompt_len + max_new_tokens)` bytes against `kv_budget_bytes` (and the store's
rows against its own disk budget) up front, so a request is refused at the door, never failed
mid-generation. A session is freed on FINISHED, on CANCELLED, or when it has been idle for
`session_timeout_s`. Closed request ids are remembered for `replay_window_s` so an old OPEN cannot
restart them.

Replay rule: within a session, messages carry (epoch, step); epochs only grow (a re-routing after a
failure bumps the epoch), and HIDDEN / TOKEN steps must be exactly the one this stage expects next.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from node.dataplane.hidden_store import HiddenStateStore
from node.dataplane.input_check import InputCheck
from node.dataplane.stored_requests import CommitLeaves
from node.runtime.executor import StageExecutor
from node.runtime.models.errors import StoreFull
from protocol.dataplane_errors import NoCapacity, Replay, UnknownRequest
from protocol.messages import PipelineRequest
from protocol.sampling import Sampling
from verifier.encoding import Domain


@dataclass
class DataSession:
    """One request on this stage."""

    request: PipelineRequest
    raw_request: bytes  # exactly as the gateway signed it, forwarded verbatim
    gateway_sig: bytes
    index: int  # this stage's position in request.stages
    kv_reserved: int
    upstream: object = None  # the asyncio StreamWriter the OPEN came on (errors go back there)
    tokens: list[int] = field(default_factory=list)  # first stage: the sequence so far
    expect_step: int = 0  # the HIDDEN (or, on the first stage, TOKEN) step expected next
    resync: bool = False  # set by an OPEN: the next HIDDEN may repeat positions already cached
    last_ready: float = 0.0  # when its previous rows were submitted here (the ring's period)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def rid(self) -> bytes:
        return self.request.rid

    @property
    def epoch(self) -> int:
        return self.request.epoch


class SessionTable:
    """The sessions of one stage, with the budget they are admitted against."""

    def __init__(self, executor: StageExecutor, store: HiddenStateStore, kv_budget_bytes: int,
                 session_timeout_s: float = 60.0, replay_window_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic, leaves: CommitLeaves | None = None):
        self.executor = executor
        self.store = store
        self.leaves = leaves if leaves is not None else CommitLeaves()  # commitment trees, grown
        self.inputs = InputCheck()  # trees of the rows received (stage-level blame)
        self.kv_budget_bytes = kv_budget_bytes
        self.session_timeout_s = session_timeout_s
        self.replay_window_s = replay_window_s
        self.clock = clock
        self.sessions: dict[bytes, DataSession] = {}
        self.closed: dict[bytes, tuple[float, int]] = {}  # rid -> (closed at, last epoch)
        self.on_free: Callable[[bytes], None] | None = None  # told after a session's KV is freed

    @property
    def layers(self) -> tuple[int, int]:
        return self.executor.shard.start, self.executor.shard.end

    @property
    def kv_reserved(self) -> int:
        return sum(s.kv_reserved for s in self.sessions.values())

    def get(self, rid: bytes) -> DataSession:
        s = self.sessions.get(rid)
        if s is None:
            a, b = self.layers
            raise UnknownRequest(f"no session for request {rid.hex()} on stage [{a}, {b})")
        s.last_used = self.clock()
        return s

    def admit(self, req: PipelineRequest, raw: bytes, gateway_sig: bytes, index: int) -> DataSession:
        """Create a session for a fresh request, or return the existing one re-routed to `req.epoch`."""
        rid = req.rid
        old = self.sessions.get(rid)
        if old is not None:
            if req.epoch <= old.epoch:
                raise Replay(f"request {rid.hex()} is already open at epoch {old.epoch}; "
                             f"an OPEN for epoch {req.epoch} is a replay")
            if req.capacity != old.request.capacity:
                raise Replay(f"re-routed request {rid.hex()} changes its size "
                             f"({old.request.capacity} → {req.capacity} positions)")
            old.request, old.raw_request, old.gateway_sig, old.index = req, raw, gateway_sig, index
            old.resync = True
            old.last_used = self.clock()
            return old
        self._forget_old_closed()
        if rid in self.closed and req.epoch <= self.closed[rid][1]:
            raise Replay(f"request {rid.hex()} was closed on this stage; its OPEN cannot be replayed")
        need = self.executor.kv_bytes_per_token * req.capacity
        free = self.kv_budget_bytes - self.kv_reserved
        if need > free:
            raise NoCapacity(
                f"KV cache for request {rid.hex()} needs {need} bytes ({req.capacity} positions × "
                f"{self.executor.kv_bytes_per_token} bytes) but only {free} of {self.kv_budget_bytes} "
                f"bytes are free ({len(self.sessions)} sessions open)"
            )
        sh = self.executor.shard
        try:
            if (rid, sh.start, sh.end) in self.store.entries:  # closed here, now re-routed back
                self.store.reopen(rid, sh.start, sh.end, req.capacity)
                self.leaves.drop(rid)
            else:
                self.store.open(rid, sh.start, sh.end, sh.hidden_size, sh.dtype, req.capacity)
        except StoreFull as e:
            raise NoCapacity(f"hidden-state store: {e}") from None
        p = req.sampling
        self._open_executor(rid, Sampling(p.temperature, p.top_p, p.seed), req.capacity)
        s = DataSession(req, raw, gateway_sig, index, need, resync=True)
        self.sessions[rid] = s
        return s

    def _open_executor(self, rid: bytes, sampling: Sampling, capacity: int) -> None:
        self.executor.open(rid, sampling, capacity=capacity)  # holds at most what was reserved

    def need_bytes(self, req: PipelineRequest) -> int:
        """KV bytes a request reserves on this stage: every position it may ever hold."""
        return self.executor.kv_bytes_per_token * req.capacity

    def fits_ever(self, req: PipelineRequest) -> bool:
        """Whether the request fits the budget once every other session is gone (else it is
        refused at once; otherwise a full stage queues it)."""
        return self.need_bytes(req) <= self.kv_budget_bytes

    def close(self, rid: bytes) -> bool:
        """Free the KV cache and start the store's retention clock; False if there was no session."""
        s = self.sessions.pop(rid, None)
        if s is None:
            return False
        self.executor.sessions.pop(rid, None)
        sh = self.executor.shard
        try:
            self.store.close(rid, sh.start, sh.end)
        except Exception:  # already evicted: nothing left to keep
            pass
        self.closed[rid] = (self.clock(), s.epoch)
        if self.on_free is not None:
            self.on_free(rid)
        return True

    def since_last_close(self) -> float | None:
        """Seconds since a session last closed here (within the replay window), None if none did."""
        return self.clock() - max(t for t, _ in self.closed.values()) if self.closed else None

    def close_idle(self) -> list[bytes]:
        now = self.clock()
        idle = [rid for rid, s in self.sessions.items() if now - s.last_used > self.session_timeout_s]
        for rid in idle:
            self.close(rid)
        return idle

    def _forget_old_closed(self) -> None:
        now = self.clock()
        for rid in [r for r, (t, _) in self.closed.items() if now - t > self.replay_window_s]:
            del self.closed[rid]

    # ── rows ──────────────────────────────────────────────────────────────────────────────────
    def cached(self, rid: bytes) -> int:
        return self.executor.session(rid).length

    def store_rows(self, rid: bytes, start: int, rows: torch.Tensor,
                   inputs: torch.Tensor | None = None) -> None:
        """Append this stage's output rows, skipping positions already stored (after a re-route),
        and hash them into the request's commitment tree (`self.leaves`); `inputs`, the hidden
        rows this stage received for the same positions (none on the first stage), into the tree
        its input stage's commitment must match (`self.inputs`)."""
        sh = self.executor.shard
        held = self.store.entry(rid, sh.start, sh.end).rows
        if start + rows.shape[0] <= held:
            return
        if start < held:
            if inputs is not None:
                inputs = inputs[held - start :]
            rows, start = rows[held - start :], held
        self.store.append(rid, sh.start, sh.end, start, rows)
        s = self.sessions.get(rid)
        if s is not None:
            domain = Domain(s.request.chain_id, rid, s.index)
            self.leaves.stored(rid, domain, sh.hidden_size, start, rows)
            if s.index > 0 and inputs is not None and inputs.dim() == 2:
                self.inputs.stored(rid, Domain(s.request.chain_id, rid, s.index - 1),
                                   inputs.shape[1], start, inputs,
                                   s.request.stages[s.index - 1].operator)

    def hash_stored(self) -> None:
        """Hash the rows stored since the last call into their trees, every request in one pass,
        where the trees wait for it (`CommitLeaves.defer` off; deferred trees hash in a loop
        callback). The step loop calls it once a step's rows are all stored."""
        for leaves in (self.leaves, self.inputs.leaves):
            if not leaves.defer:
                leaves.settle_all()

    def rewind(self, rid: bytes, length: int) -> None:
        """Forget positions from `length` on: KV cache and stored rows (a re-route resumes earlier)."""
        sess = self.executor.session(rid)
        if not 0 <= length <= sess.length:
            raise ValueError(f"cannot rewind {sess.length} cached positions to {length}")
        if length < sess.length:
            sess.cache.crop(length - sess.length)  # crop(-k) drops the last k positions
            sess.length = length
        sh = self.executor.shard
        keep = min(length, self.store.entry(rid, sh.start, sh.end).rows)
        self.store.truncate(rid, sh.start, sh.end, keep)
        self.leaves.rewound(rid, keep)
        self.inputs.rewound(rid, keep)

    def note_open(self, s: DataSession, tokens: tuple[int, ...] | list[int]) -> None:
        """Record the gateway, the stage's place and the OPEN's tokens with the stored rows (they
        outlive the session: COMMIT and FETCH read them after the request finished)."""
        sh = self.executor.shard
        req = s.request
        self.store.set_info(s.rid, sh.start, sh.end, req.gateway, s.index, len(req.stages), tokens)

    def note_token(self, rid: bytes, position: int, token: int) -> None:
        """A token this stage saw (first stage: received; last stage: sampled) at `position`."""
        sh = self.executor.shard
        self.store.put_token(rid, sh.start, sh.end, position, token)

    def stored(self, rid: bytes, pos_from: int, pos_to: int) -> torch.Tensor:
        sh = self.executor.shard
        return self.store.read(rid, sh.start, sh.end, pos_from, pos_to)
