"""The worker's data-plane server: one stage of many pipelines, over asyncio TCP with signed frames.

A `StageServer` owns a `StageExecutor` (its layer range), a hidden-state store and a `SessionTable`.
It accepts connections from the gateway (first stage), the previous stage (OPEN, HIDDEN, CLOSE) and
the last stage (TOKEN, first stage only), and keeps one outgoing *link* per downstream endpoint:

    gateway ─OPEN(tokens)─► stage 0 ─OPEN,HIDDEN─► stage 1 ─ … ─► stage N-1 (samples)
       ▲                     ▲ │                                       │
       └──── TOKEN (relayed) ┘ └──────────── TOKEN (the ring) ◄────────┘

Every frame is checked before it touches the model: size, header, signature, chain id, that the
signer is the operator the request assigns to the sending stage (and that this node is the one
assigned to the receiving stage), the epoch and the expected step (replays are refused), then the
body's shape and dtype. Anything wrong is answered with an ERROR frame quoting the reason — to the
session's upstream when the request is known, else to the sender — and the server keeps serving.
ERRORs arriving on a link are relayed upstream, so they reach the gateway through stage 0. A link
that closes while sessions route through it reports STAGE_FAILED(stage) upstream: the gateway then
re-routes (see `node.dataplane.client`) with an OPEN of a higher epoch carrying the sequence so far,
and each stage keeps what it has cached, replaying only what it is missing.

After a request ran, any connection may carry COMMIT (the request's gateway asks for the stage's
signed commitment over its stored rows) and FETCH (the gateway or an active operator reads stored
rows and token ids); both are answered from the hidden-state store by `node.dataplane.stored_requests`.

Compute is continuously batched (`node.dataplane.batcher`, `node.runtime.batch`): a frame only
*submits* its rows as a job; one compute loop repeatedly takes every ready job's rows — one decode
row per running request plus prefill chunks — runs them as one batched forward in a worker thread
(the event loop keeps reading, checking and signing frames meanwhile), stores each request's rows,
and sends each request its own signed HIDDEN / TOKEN frame. Frames of one step travel back to back
on the link. A full stage queues OPENs (FIFO) until KV is freed instead of refusing them; only a
request that could never fit the budget is refused with NO_CAPACITY.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import torch
from coincurve import PrivateKey

from node.dataplane.batcher import Batcher, Job
from node.dataplane.directory import OperatorDirectory
from node.dataplane.hidden_store import HiddenStateStore
from node.dataplane.sessions import DataSession, SessionTable
from node.dataplane.stored_requests import StoredRequests
from node.runtime.batch import BatchedExecutor, Work
from node.runtime.executor import StageExecutor
from node.runtime.models.errors import ExecutionError, ModelError
from protocol.dataplane_errors import (
    BadMessage,
    BadSignature,
    DataPlaneError,
    FrameTooLarge,
    NoCapacity,
    NotAssigned,
    NotStored,
    Replay,
    StageFailed,
    UnknownRequest,
)
from protocol.frames import (
    CloseReason,
    ErrorCode,
    Frame,
    Kind,
    close_body,
    error_body,
    make_frame,
    open_body,
    parse_close,
    parse_error,
    parse_frame,
    parse_open,
    parse_token,
    read_frame,
    token_body,
)
from protocol.identity import address_of_key, recover
from protocol.messages import MAX_ERROR_TEXT, StageAssignment
from protocol.rows import hidden_body, parse_hidden
from protocol.sampling import sample_token

log = logging.getLogger("veriplex.dataplane")

CODES: list[tuple[type[Exception], ErrorCode]] = [
    (NotAssigned, ErrorCode.NOT_ASSIGNED),
    (BadSignature, ErrorCode.BAD_SIGNATURE),
    (BadMessage, ErrorCode.BAD_MESSAGE),
    (Replay, ErrorCode.REPLAY),
    (UnknownRequest, ErrorCode.UNKNOWN_SESSION),
    (NoCapacity, ErrorCode.NO_CAPACITY),
    (FrameTooLarge, ErrorCode.TOO_LARGE),
    (StageFailed, ErrorCode.STAGE_FAILED),
    (NotStored, ErrorCode.NOT_STORED),
    (ModelError, ErrorCode.EXECUTION),
]


def job_is_decode(x: torch.Tensor, start: int, cached: int) -> bool:
    return x.shape[0] == 1 and start == cached


def code_of(e: Exception) -> ErrorCode:
    return next((c for cls, c in CODES if isinstance(e, cls)), ErrorCode.EXECUTION)


Endpoint = tuple[str, int]


class StageServer:
    """Serves one layer range to every pipeline that names this node's operator for it."""

    def __init__(self, executor: StageExecutor, store: HiddenStateStore, key: PrivateKey,
                 directory: OperatorDirectory, chain_id: int, *, host: str = "127.0.0.1",
                 port: int = 0, kv_budget_bytes: int = 2**30, max_frame_bytes: int = 64 * 2**20,
                 session_timeout_s: float = 60.0, max_decode_rows: int = 256,
                 prefill_chunk: int = 256, micro_batches: int = 1, gather_s: float = 0.03):
        if not isinstance(executor, BatchedExecutor):  # every server batches, whoever built it
            executor = BatchedExecutor(executor.shard)
        self.executor: BatchedExecutor = executor
        self.key = key
        self.address = address_of_key(key)
        self.directory = directory
        self.chain_id = chain_id
        self.host, self.port = host, port
        self.max_frame_bytes = max_frame_bytes
        self.sessions = SessionTable(executor, store, kv_budget_bytes, session_timeout_s)
        self.stored = StoredRequests(store, key, directory, chain_id, self.layers, max_frame_bytes,
                                     leaves=self.sessions.leaves)
        self.sessions.on_free = self._on_free
        self.batcher = Batcher(max_decode_rows, prefill_chunk, micro_batches)
        self.gather_s = gather_s  # least of the longest wait for a wave's other decode rows
        self.period_s = 0.0  # measured time between a request's consecutive decode rows here
        self._work = asyncio.Event()  # set when jobs may be ready
        self._step_done = asyncio.Event()
        self._running: set[bytes] = set()  # requests whose rows are in the step now computing
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="veriplex-step")
        # OPENs waiting for KV room: (frame, writer, queued at), first come first served
        self.waiting: deque[tuple[Frame, asyncio.StreamWriter, float]] = deque()
        self._parked: dict[bytes, list[Frame]] = {}  # HIDDEN frames of queued requests
        self._admitting = False
        self.steps = 0  # batched steps run (tests and metrics)
        self.max_batch = 0  # most requests seen in one step
        self.links: dict[Endpoint, asyncio.StreamWriter] = {}
        self._link_lock = asyncio.Lock()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.errors_sent = 0

    @property
    def layers(self) -> tuple[int, int]:
        return self.executor.shard.start, self.executor.shard.end

    # ── lifecycle ─────────────────────────────────────────────────────────────────────────────
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve_conn, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._spawn(self._sweep())
        self._spawn(self._compute_loop())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        for w in self.links.values():
            w.close()
        self.links.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.sessions.session_timeout_s / 2))
            for rid in self.sessions.close_idle():
                log.info("session %s timed out and was freed", rid.hex())
            self._expire_waiting()

    # ── inbound ───────────────────────────────────────────────────────────────────────────────
    async def _serve_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    buf = await read_frame(reader, self.max_frame_bytes)
                except (FrameTooLarge, BadMessage) as e:
                    # The stream can no longer be framed: answer, then hang up on this sender only.
                    self._send_error(writer, b"\x00" * 32, code_of(e), str(e))
                    await writer.drain()
                    break
                if buf is None:
                    break
                frame = None
                try:
                    frame = parse_frame(buf)
                    if frame.chain_id != self.chain_id:
                        raise BadSignature(
                            f"frame is bound to chain id {frame.chain_id}; this node serves {self.chain_id}"
                        )
                    await self._dispatch(frame, writer)
                except (DataPlaneError, ModelError) as e:
                    self._on_failure(frame, writer, e)
                except Exception as e:  # a bug must not take the node down: answer and go on
                    log.exception("internal error on %s", frame.kind.name if frame else "frame")
                    self._on_failure(frame, writer, e)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            writer.close()
            return
        finally:
            writer.close()
        # The gateway went away: cancel the requests it opened here (stage 0 only; a lost upstream
        # on a later stage is a failed stage, which the gateway re-routes).
        for item in [w for w in self.waiting if w[1] is writer]:
            self.waiting.remove(item)
        for sess in [x for x in self.sessions.sessions.values() if x.upstream is writer and x.index == 0]:
            with contextlib.suppress(DataPlaneError, ModelError):
                await self._finish(sess, CloseReason.CANCELLED)

    def _on_failure(self, frame: Frame | None, writer: asyncio.StreamWriter, e: Exception) -> None:
        s = self.sessions.sessions.get(frame.request_id) if frame is not None else None
        # Errors about a session we hold go upstream (toward the gateway); others back to the sender.
        target = s.upstream if s is not None and isinstance(e, StageFailed) else writer
        stage = e.stage if isinstance(e, StageFailed) and e.stage is not None else (
            s.index if s is not None else (frame.stage if frame is not None else 0))
        log.info("refused %s: %s", frame.kind.name if frame else "frame", e)
        self._send_error(target, frame.request_id if frame else b"\x00" * 32, code_of(e), str(e),
                         step=frame.step if frame else 0, stage=stage,
                         # the epoch of the frame that failed: a failure of an already re-routed
                         # epoch must not look like a new one to the gateway
                         epoch=frame.epoch if frame else (s.epoch if s else 0))

    def _send_error(self, writer, rid: bytes, code: ErrorCode, message: str, *, step: int = 0,
                    epoch: int = 0, stage: int = 0) -> None:
        if writer is None or writer.is_closing():
            return
        f = make_frame(self.key, Kind.ERROR, self.chain_id, rid, step=step, epoch=epoch, stage=stage,
                       body=error_body(code, stage, message[:MAX_ERROR_TEXT]))
        self.errors_sent += 1
        writer.write(f.to_bytes())

    async def _dispatch(self, f: Frame, writer: asyncio.StreamWriter) -> None:
        if f.kind == Kind.OPEN:
            await self._on_open(f, writer)
        elif f.kind == Kind.HIDDEN:
            if f.request_id not in self.sessions.sessions and self._is_waiting(f.request_id):
                self._parked.setdefault(f.request_id, []).append(f)  # replayed once admitted
                return
            await self._on_hidden(f)
        elif f.kind == Kind.TOKEN:
            await self._on_token(f)
        elif f.kind == Kind.CLOSE:
            await self._on_close(f)
        elif f.kind == Kind.COMMIT:
            writer.write((await self.stored.commit(f)).to_bytes())
        elif f.kind == Kind.FETCH:
            writer.write(self.stored.fetch(f).to_bytes())
            await writer.drain()
        elif f.kind == Kind.PING:
            f.signer()  # unsigned pings are refused too
            writer.write(make_frame(self.key, Kind.PONG, self.chain_id, f.request_id, f.step).to_bytes())
        else:
            raise BadMessage(f"a stage does not accept {f.kind.name} frames")

    def _session_for(self, f: Frame) -> DataSession:
        s = self.sessions.get(f.request_id)
        if f.stage != s.index:
            raise NotAssigned(f"frame addresses stage {f.stage}; this node is stage {s.index} of the request")
        if f.epoch != s.epoch:
            if f.epoch < s.epoch:
                raise Replay(f"frame of epoch {f.epoch}; the request was re-routed to epoch {s.epoch}")
            raise BadMessage(f"frame of epoch {f.epoch} before an OPEN for it (current {s.epoch})")
        return s

    def _check_signer(self, f: Frame, expected: str, role: str) -> None:
        got = f.signer()
        if got.lower() != expected.lower():
            raise BadSignature(f"{f.kind.name} signed by {got}, but {role} is operator {expected}")

    async def _on_open(self, f: Frame, writer: asyncio.StreamWriter,
                       queued_at: float | None = None) -> bool:
        """Admit (True) or queue (False) an OPEN; `queued_at` when it comes from the queue."""
        ob = parse_open(f.body)
        req = ob.request
        if req.chain_id != self.chain_id or f.request_id != req.rid or f.epoch != req.epoch:
            raise BadMessage(
                f"OPEN frame (chain {f.chain_id}, request {f.request_id.hex()}, epoch {f.epoch}) does not "
                f"match its request (chain {req.chain_id}, request {req.request_id}, epoch {req.epoch})"
            )
        idx = f.stage
        if idx >= len(req.stages):
            raise BadMessage(f"OPEN addresses stage {idx} of a {len(req.stages)}-stage pipeline")
        me = req.stages[idx]
        if me.operator.lower() != self.address.lower() or (me.start, me.end) != self.layers:
            raise NotAssigned(
                f"stage {idx} is operator {me.operator} layers [{me.start}, {me.end}); this node is "
                f"{self.address} layers [{self.layers[0]}, {self.layers[1]})"
            )
        if (me.start == 0) != (idx == 0):
            raise NotAssigned(f"stage {idx} cannot serve layers starting at {me.start}")
        gateway = recover(req.digest(ob.raw_request), ob.gateway_sig)
        if gateway.lower() != req.gateway.lower():
            raise BadSignature(f"request is signed by {gateway}, not by its gateway {req.gateway}")
        self._check_signer(f, req.gateway if idx == 0 else req.stages[idx - 1].operator,
                           "the gateway" if idx == 0 else f"stage {idx - 1}")
        if not self.directory.gateway_ok(req.gateway):
            raise BadSignature(f"gateway {req.gateway} may not open requests on this node")
        for k, st in enumerate(req.stages):
            if not self.directory.operator_ok(st.operator):
                raise BadSignature(f"stage {k} operator {st.operator} is not an active registered operator")
        if (req.stages[-1].end != self.executor.shard.num_layers):
            raise BadMessage(f"the pipeline ends at layer {req.stages[-1].end}; the model has "
                             f"{self.executor.shard.num_layers}")
        step = len(ob.tokens) - req.prompt_len
        if f.step != step:
            raise BadMessage(f"OPEN step {f.step} does not match its {len(ob.tokens)} tokens (step {step})")
        if req.rid in self.sessions.sessions:  # a re-route: let its running step end, drop its rows
            await self._quiesce(req.rid)
        elif (self.waiting and queued_at is None) or not self._admissible(req):
            return self._queue(f, writer, queued_at, req)
        s = self.sessions.admit(req, ob.raw_request, ob.gateway_sig, idx)
        s.upstream = writer
        self.sessions.note_open(s, ob.tokens)
        self.stored.forget(req.rid)
        s.expect_step = step
        try:
            if idx + 1 < len(req.stages):
                nxt = make_frame(self.key, Kind.OPEN, self.chain_id, req.rid, step, req.epoch, idx + 1,
                                 open_body(ob.raw_request, ob.gateway_sig, list(ob.tokens)))
                await self._send(req.stages[idx + 1], nxt, idx + 1)
            if idx == 0:
                s.tokens = list(ob.tokens)
                x = torch.tensor(s.tokens, dtype=torch.int64)
                await self._advance(s, x, 0, step)
        except DataPlaneError:
            raise
        except ModelError:
            self.sessions.close(req.rid)
            raise
        for parked in self._parked.pop(req.rid, []):  # rows that came while the OPEN waited
            await self._dispatch_parked(parked)
        return True

    # ── admission queue ───────────────────────────────────────────────────────────────────────
    def _admissible(self, req) -> bool:
        """Whether a fresh request's KV fits now; one that never could is refused by `admit`."""
        if not self.sessions.fits_ever(req):
            return True  # let admit() refuse it with the figures
        return self.sessions.need_bytes(req) <= self.sessions.kv_budget_bytes - self.sessions.kv_reserved

    def _queue(self, f: Frame, writer, queued_at: float | None, req) -> bool:
        item = (f, writer, queued_at if queued_at is not None else time.monotonic())
        if queued_at is None:
            self.waiting.append(item)
            log.info("stage full: request %s queued (%d waiting)", req.rid.hex(), len(self.waiting))
        else:
            self.waiting.appendleft(item)  # still the oldest: it keeps its place
        return False

    def _on_free(self, rid: bytes) -> None:
        self.batcher.drop(rid)
        self._parked.pop(rid, None)
        if self.waiting and not self._admitting:
            self._spawn(self._admit_waiting())

    async def _admit_waiting(self) -> None:
        self._admitting = True
        try:
            while self.waiting:
                f, w, t = self.waiting.popleft()
                try:
                    if not await self._on_open(f, w, queued_at=t):
                        break
                except (DataPlaneError, ModelError) as e:
                    self._parked.pop(f.request_id, None)
                    self._on_failure(f, w, e)
        finally:
            self._admitting = False

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        while self.waiting and now - self.waiting[0][2] > self.sessions.session_timeout_s:
            f, w, t = self.waiting.popleft()
            self._parked.pop(f.request_id, None)
            self._on_failure(f, w, NoCapacity(
                f"request {f.request_id.hex()} waited {now - t:.0f} s for KV room on this stage "
                f"({self.sessions.kv_reserved} of {self.sessions.kv_budget_bytes} bytes reserved)"))

    def _is_waiting(self, rid: bytes) -> bool:
        return any(item[0].request_id == rid for item in self.waiting)

    async def _dispatch_parked(self, f: Frame) -> None:
        s = self.sessions.sessions.get(f.request_id)
        try:
            await self._dispatch(f, s.upstream if s else None)
        except (DataPlaneError, ModelError) as e:
            self._on_failure(f, s.upstream if s else None, e)

    async def _on_hidden(self, f: Frame) -> None:
        s = self._session_for(f)
        req = s.request
        if s.index == 0:
            raise BadMessage("the first stage takes token ids, not HIDDEN rows")
        self._check_signer(f, req.stages[s.index - 1].operator, f"stage {s.index - 1}")
        if f.step != s.expect_step:
            if f.step < s.expect_step:
                raise Replay(f"HIDDEN step {f.step} already processed (expecting {s.expect_step})")
            raise BadMessage(f"HIDDEN step {f.step} out of order (expecting {s.expect_step})")
        sh = self.executor.shard
        start, rows = parse_hidden(f.body, sh.hidden_size, sh.dtype, req.capacity)
        await self._advance(s, rows, start, f.step)

    async def _on_token(self, f: Frame) -> None:
        s = self._session_for(f)
        req = s.request
        if s.index != 0:
            raise BadMessage("only the first stage takes TOKEN frames")
        self._check_signer(f, req.stages[-1].operator, f"the last stage ({len(req.stages) - 1})")
        if f.step != s.expect_step:
            if f.step < s.expect_step:
                raise Replay(f"TOKEN step {f.step} already processed (expecting {s.expect_step})")
            raise BadMessage(f"TOKEN step {f.step} out of order (expecting {s.expect_step})")
        tok, pos, done = parse_token(f.body)
        if pos != len(s.tokens):
            raise BadMessage(f"TOKEN for position {pos}; the sequence holds {len(s.tokens)} tokens")
        self.sessions.note_token(s.rid, pos, tok)
        if s.upstream is not None and not s.upstream.is_closing():
            s.upstream.write(f.to_bytes())  # stream to the gateway, signed by the sampling stage
        s.tokens.append(tok)
        s.expect_step += 1
        if done:
            await self._finish(s, CloseReason.FINISHED)
            return
        await self._advance(s, torch.tensor([tok], dtype=torch.int64), pos, f.step + 1)

    async def _on_close(self, f: Frame) -> None:
        s = self.sessions.sessions.get(f.request_id)
        if s is None:
            for item in [w for w in self.waiting if w[0].request_id == f.request_id]:
                # a queued request cancelled: same sender rule as for an admitted one
                ob = parse_open(item[0].body)
                idx = item[0].stage
                self._check_signer(f, ob.request.gateway if idx == 0 else
                                   ob.request.stages[idx - 1].operator, "the request's sender")
                self.waiting.remove(item)
                self._parked.pop(f.request_id, None)
            return  # already finished here (the last stage closes itself): closing is idempotent
        req = s.request
        self._check_signer(f, req.gateway if s.index == 0 else req.stages[s.index - 1].operator,
                           "the gateway" if s.index == 0 else f"stage {s.index - 1}")
        await self._finish(s, parse_close(f.body))

    async def _finish(self, s: DataSession, reason: CloseReason) -> None:
        req = s.request
        self.sessions.close(s.rid)
        nxt = s.index + 1
        if nxt < len(req.stages) - (1 if reason == CloseReason.FINISHED else 0):
            f = make_frame(self.key, Kind.CLOSE, self.chain_id, s.rid, s.expect_step, s.epoch, nxt,
                           close_body(reason))
            with contextlib.suppress(StageFailed):
                await self._send(req.stages[nxt], f, nxt)

    # ── compute ───────────────────────────────────────────────────────────────────────────────
    async def _advance(self, s: DataSession, x: torch.Tensor, start: int, step: int) -> None:
        """Submit positions [start, start + T) (skipping any already cached after a re-route) to the
        batcher; `_emit` stores, sends on or samples once they are computed."""
        rid, req, ex = s.rid, s.request, self.executor
        end = start + x.shape[0]
        cached = self.sessions.cached(rid)
        resync = start < cached
        if resync and not s.resync:
            raise Replay(f"positions [{start}, {end}) are already cached ({cached} held)")
        if end > req.capacity:
            raise BadMessage(f"positions [{start}, {end}) exceed the request's {req.capacity}")
        if start > cached:
            raise ExecutionError(
                f"session {rid.hex()}: input starts at position {start} but the cache holds {cached} "
                "positions (positions must arrive in order, without gaps)")
        ex._embed_or_check(x)  # refuse bad rows here, before they change state or join a batch
        if self.batcher.get(rid) is not None:
            raise BadMessage(f"request {rid.hex()} sent step {step} before its previous step ran")
        # After a re-route this stage may be ahead of the sequence the gateway resumed from (it ran
        # positions whose token never reached the gateway): rewind cache and stored rows to it. The
        # last stage keeps one position fewer, to recompute the logits it samples from.
        keep = end - 1 if ex.shard.is_last else end
        if s.resync and cached > keep:
            self.sessions.rewind(rid, keep)
            cached = keep
        s.resync = False
        if s.index != 0:  # the first stage's next input is the TOKEN of this same step
            s.expect_step = step + 1
        now = time.monotonic()
        if s.last_ready and job_is_decode(x, start, cached):
            # one decode row per trip round the ring: its period bounds how long a step waits
            # for the rest of a wave (Batcher.wait_s)
            self.period_s = 0.8 * self.period_s + 0.2 * (now - s.last_ready)
        s.last_ready = now
        job = Job(rid, x[max(cached - start, 0):], max(cached, start), step, s.epoch,
                  forward_from=start, resend=resync, ready_at=now)
        if job.remaining == 0:  # everything is cached: send the stored rows on
            await self._emit(s, job, end)
            return
        self.batcher.submit(job)
        self._work.set()

    async def _quiesce(self, rid: bytes) -> None:
        """Drop a request's queued rows and wait until no running step holds them (re-route)."""
        self.batcher.drop(rid)
        while rid in self._running:
            await self._step_done.wait()

    async def _compute_loop(self) -> None:
        """Forever: take the batcher's plan, run it as one batched step off the loop, hand out rows."""
        loop = asyncio.get_running_loop()
        ex = self.executor
        while True:
            await self._work.wait()
            self._work.clear()
            wait = self.batcher.wait_s(len(self.sessions.sessions), time.monotonic(),
                                       max(self.gather_s, min(self.period_s, 2.0)))
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), wait)
                self._work.set()  # look again: more rows came, or the wait is over
                continue
            plan = self.batcher.plan(len(self.sessions.sessions) if ex.shard.is_first else None)
            if not plan:
                continue
            # Sessions are resolved now, on the loop: one cancelled while the step computes in
            # the worker thread only wastes its rows, it cannot fail the others'.
            works = [Work(j.rid, j.x[:n], j.start,
                          "last" if ex.shard.is_last and n == j.remaining else "none",
                          session=ex.session(j.rid))
                     for j, n in plan]
            self._running = {j.rid for j, _ in plan}
            self._step_done.clear()
            error: Exception | None = None
            try:
                outs = await loop.run_in_executor(self._pool, ex.step, works)
            except Exception as e:  # inputs were checked at submission: this is a stage fault
                log.exception("batched step of %d requests failed", len(works))
                error, outs = e, []
            finally:
                self._running = set()
                self._step_done.set()
            self.steps += 1
            self.max_batch = max(self.max_batch, len(plan))
            for k, (job, n) in enumerate(plan):
                s = self.sessions.sessions.get(job.rid)
                if s is None:  # cancelled or finished while the step ran: its KV is already gone
                    self.batcher.drop(job.rid)
                    continue
                try:
                    if error is not None:
                        if self.batcher.get(job.rid) is not job:
                            continue
                        raise error if isinstance(error, ModelError) else ModelError(str(error))
                    out = outs[k]
                    # The KV cache now holds these positions: the store must too, even when a
                    # re-route dropped the job meanwhile (its rewind then sees both alike).
                    self.sessions.store_rows(job.rid, out.start, out.hidden)
                    if self.batcher.get(job.rid) is not job or s.epoch != job.epoch:
                        continue
                    if job.advance(n, out.hidden, out.logits):
                        self.batcher.drop(job.rid)
                        await self._emit(s, job, job.start)
                except (DataPlaneError, ModelError) as e:
                    self.batcher.drop(job.rid)
                    self._fail(s, job.step, e)
            if self.batcher:
                self._work.set()

    def _fail(self, s: DataSession, step: int, e: Exception) -> None:
        """A request's step failed after its frame was accepted: tell its upstream, free it."""
        stage = e.stage if isinstance(e, StageFailed) and e.stage is not None else s.index
        log.info("request %s failed at step %d: %s", s.rid.hex(), step, e)
        self._send_error(s.upstream, s.rid, code_of(e), str(e), step=step, epoch=s.epoch, stage=stage)
        if isinstance(e, ModelError):
            self.sessions.close(s.rid)

    async def _emit(self, s: DataSession, job: Job, end: int) -> None:
        """A step's rows are computed and stored: send them on, or (last stage) sample the token."""
        rid, req, ex, step = s.rid, s.request, self.executor, job.step
        if ex.shard.is_last:
            assert job.logits is not None
            tok = sample_token(job.logits[-1], ex.session(rid).sampling, end)
            done = step + 1 >= req.max_new_tokens or tok in req.stop_ids
            self.sessions.note_token(rid, end, tok)
            f = make_frame(self.key, Kind.TOKEN, self.chain_id, rid, step, s.epoch, 0,
                           token_body(tok, end, done))
            if s.index == 0:  # a one-stage pipeline: the ring closes on itself
                self._spawn(self._dispatch_local(f))
                return
            if done:
                self.sessions.close(rid)
            await self._send(req.stages[0], f, 0)
            return
        resend = job.resend or not job.outs
        rows = (self.sessions.stored(rid, job.forward_from, end) if resend
                else (torch.cat(job.outs) if len(job.outs) > 1 else job.outs[0]))
        f = make_frame(self.key, Kind.HIDDEN, self.chain_id, rid, step, s.epoch, s.index + 1,
                       hidden_body(job.forward_from, rows))
        await self._send(req.stages[s.index + 1], f, s.index + 1)

    async def _dispatch_local(self, f: Frame) -> None:
        s = self.sessions.sessions.get(f.request_id)
        try:
            await self._dispatch(f, s.upstream if s else None)
        except (DataPlaneError, ModelError) as e:
            self._on_failure(f, s.upstream if s else None, e)

    # ── outbound links ────────────────────────────────────────────────────────────────────────
    async def _send(self, st: StageAssignment, f: Frame, stage: int) -> None:
        w = await self._link(st, stage)
        w.write(f.to_bytes())
        if w.transport.get_write_buffer_size() > 4 * 2**20:
            await w.drain()

    async def _link(self, st: StageAssignment, stage: int) -> asyncio.StreamWriter:
        ep = (st.host, st.port)
        w = self.links.get(ep)
        if w is not None and not w.is_closing():
            return w
        async with self._link_lock:
            w = self.links.get(ep)
            if w is not None and not w.is_closing():
                return w
            try:
                reader, w = await asyncio.wait_for(asyncio.open_connection(st.host, st.port), 10.0)
            except (TimeoutError, OSError) as e:
                raise StageFailed(f"stage {stage} at {st.host}:{st.port} is unreachable: {e}", stage) from None
            self.links[ep] = w
            self._spawn(self._read_link(ep, reader, w))
            return w

    async def _read_link(self, ep: Endpoint, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """Relay ERRORs from downstream toward the gateway; report the link's loss to its sessions."""
        try:
            while True:
                buf = await read_frame(reader, self.max_frame_bytes)
                if buf is None:
                    break
                f = parse_frame(buf)
                if f.kind != Kind.ERROR:
                    continue
                f.signer()
                info = parse_error(f.body)
                s = self.sessions.sessions.get(f.request_id)
                if s is not None:
                    self._send_error(s.upstream, f.request_id, info.code, info.message,
                                     step=f.step, epoch=f.epoch, stage=info.stage)
        except (DataPlaneError, ConnectionError, asyncio.IncompleteReadError) as e:
            log.info("link to %s:%d failed: %s", ep[0], ep[1], e)
        finally:
            if self.links.get(ep) is w:
                del self.links[ep]
            w.close()
            for s in list(self.sessions.sessions.values()):
                req = s.request
                nxt = (s.index + 1) % len(req.stages)
                st = req.stages[nxt]
                if (st.host, st.port) == ep and nxt != s.index:
                    self._send_error(s.upstream, s.rid, ErrorCode.STAGE_FAILED,
                                     f"stage {nxt} ({st.operator} at {st.host}:{st.port}) closed its "
                                     f"connection mid-request", step=s.expect_step, epoch=s.epoch,
                                     stage=nxt)
