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

Compute is continuously batched: a frame only *submits* its rows as a job; one loop
(`node.dataplane.compute`, policy in `node.dataplane.batcher`) runs every ready job's rows as one
batched forward off the event loop, and the server sends each request its own signed HIDDEN / TOKEN
frame. A full stage queues OPENs (`node.dataplane.admission`) until KV is freed; only a request
that could never fit the budget is refused with NO_CAPACITY. Frame checks and error codes are in
`node.dataplane.checks`, the connections to the next stages in `node.dataplane.links`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import torch
from coincurve import PrivateKey

from node.dataplane.admission import AdmissionQueue
from node.dataplane.batcher import Batcher, Job
from node.dataplane.checks import check_open, check_signer, code_of, sender_of
from node.dataplane.compute import StepLoop
from node.dataplane.directory import OperatorDirectory
from node.dataplane.hidden_store import HiddenStateStore
from node.dataplane.links import Endpoint, PeerLinks
from node.dataplane.sessions import DataSession, SessionTable
from node.dataplane.stored_requests import StoredRequests
from node.runtime.batch import BatchedExecutor
from node.runtime.executor import StageExecutor
from node.runtime.models.errors import ModelError
from protocol.dataplane_errors import (
    BadMessage,
    BadSignature,
    DataPlaneError,
    FrameTooLarge,
    NoCapacity,
    NotAssigned,
    Replay,
    StageFailed,
)
from protocol.frames import (
    CloseReason,
    ErrorCode,
    ErrorInfo,
    Frame,
    Kind,
    close_body,
    error_body,
    make_frame,
    open_body,
    parse_close,
    parse_frame,
    parse_open,
    parse_token,
    read_frame,
    token_body,
)
from protocol.identity import address_of_key
from protocol.messages import MAX_ERROR_TEXT
from protocol.rows import hidden_body, parse_hidden
from protocol.sampling import sample_token

log = logging.getLogger("veriplex.dataplane")

__all__ = ["StageServer"]


class StageServer:
    """Serves one layer range to every pipeline that names this node's operator for it."""

    def __init__(self, executor: StageExecutor, store: HiddenStateStore, key: PrivateKey,
                 directory: OperatorDirectory, chain_id: int, *, host: str = "127.0.0.1",
                 port: int = 0, kv_budget_bytes: int = 2**30, max_frame_bytes: int = 64 * 2**20,
                 session_timeout_s: float = 60.0, max_decode_rows: int = 256,
                 prefill_chunk: int = 256, micro_batches: int = 0, gather_s: float = 0.03):
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
                                     leaves=self.sessions.leaves, inputs=self.sessions.inputs)
        self.sessions.on_free = self._on_free
        self.batcher = Batcher(max_decode_rows, prefill_chunk, micro_batches)
        if micro_batches == 1:
            # Stages taking turns on shared cores: hash a step's rows before sending them on, while
            # the next stage waits anyway. Deferred, the hashing would run on the cores that stage
            # then computes on, and a multi-threaded step waits for its slowest thread.
            self.sessions.leaves.defer = self.sessions.inputs.leaves.defer = False
        self.compute = StepLoop(executor, self.sessions, self.batcher, gather_s,
                                on_done=lambda s, job: self._emit(s, job, job.start), on_fail=self._fail)
        self.waiting = AdmissionQueue()
        self.links = PeerLinks(max_frame_bytes, self._spawn, self._relay_error, self._link_lost)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.errors_sent = 0

    @property
    def layers(self) -> tuple[int, int]:
        return self.executor.shard.start, self.executor.shard.end

    @property
    def steps(self) -> int:
        """Batched steps run (tests and metrics)."""
        return self.compute.steps

    @property
    def max_batch(self) -> int:
        """Most requests seen in one step."""
        return self.compute.max_batch

    # ── lifecycle ─────────────────────────────────────────────────────────────────────────────
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve_conn, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._spawn(self._sweep())
        self._spawn(self.compute.run())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        self.links.close()
        self.compute.shutdown()

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.sessions.session_timeout_s / 2))
            for rid in self.sessions.close_idle():
                log.info("session %s timed out and was freed", rid.hex())
            now = time.monotonic()
            for f, w, t in self.waiting.expired(self.sessions.session_timeout_s, now):
                self._on_failure(f, w, NoCapacity(
                    f"request {f.request_id.hex()} waited {now - t:.0f} s for KV room on this stage "
                    f"({self.sessions.kv_reserved} of {self.sessions.kv_budget_bytes} bytes reserved)"))

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
        self.waiting.drop_writer(writer)
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
            if f.request_id not in self.sessions.sessions and self.waiting.holds(f.request_id):
                self.waiting.park(f)  # replayed once admitted
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

    async def _on_open(self, f: Frame, writer: asyncio.StreamWriter,
                       queued_at: float | None = None) -> bool:
        """Admit (True) or queue (False) an OPEN; `queued_at` when it comes from the queue."""
        ob = parse_open(f.body)
        req = ob.request
        step = check_open(f, ob, chain_id=self.chain_id, address=self.address, layers=self.layers,
                          num_layers=self.executor.shard.num_layers, directory=self.directory)
        idx = f.stage
        if req.rid in self.sessions.sessions:  # a re-route: let its running step end, drop its rows
            await self.compute.quiesce(req.rid)
        elif (self.waiting and queued_at is None) or not self._admissible(req):
            self.waiting.push(f, writer, queued_at)
            return False
        s = self.sessions.admit(req, ob.raw_request, ob.gateway_sig, idx)
        s.upstream = writer
        self.sessions.note_open(s, ob.tokens)
        self.stored.forget(req.rid)
        s.expect_step = step
        try:
            if idx + 1 < len(req.stages):
                nxt = make_frame(self.key, Kind.OPEN, self.chain_id, req.rid, step, req.epoch, idx + 1,
                                 open_body(ob.raw_request, ob.gateway_sig, list(ob.tokens)))
                await self.links.send(req.stages[idx + 1], nxt, idx + 1)
            if idx == 0:
                s.tokens = list(ob.tokens)
                x = torch.tensor(s.tokens, dtype=torch.int64)
                await self._advance(s, x, 0, step)
        except DataPlaneError:
            raise
        except ModelError:
            self.sessions.close(req.rid)
            raise
        for parked in self.waiting.take_parked(req.rid):  # rows that came while the OPEN waited
            await self._dispatch_local(parked)
        return True

    def _admissible(self, req) -> bool:
        """Whether a fresh request's KV fits now; one that never could is refused by `admit`."""
        if not self.sessions.fits_ever(req):
            return True  # let admit() refuse it with the figures
        return self.sessions.need_bytes(req) <= self.sessions.kv_budget_bytes - self.sessions.kv_reserved

    def _on_free(self, rid: bytes) -> None:
        self.batcher.drop(rid)
        self.waiting.parked.pop(rid, None)
        if self.waiting and not self.waiting.admitting:
            self._spawn(self.waiting.admit(self._on_open, self._on_failure))

    async def _on_hidden(self, f: Frame) -> None:
        s = self._session_for(f)
        req = s.request
        if s.index == 0:
            raise BadMessage("the first stage takes token ids, not HIDDEN rows")
        check_signer(f, *sender_of(req, s.index))
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
        check_signer(f, req.stages[-1].operator, f"the last stage ({len(req.stages) - 1})")
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
            self.waiting.cancel(f)  # a queued request cancelled (its sender checked alike)
            return  # already finished here (the last stage closes itself): closing is idempotent
        check_signer(f, *sender_of(s.request, s.index))
        await self._finish(s, parse_close(f.body))

    async def _finish(self, s: DataSession, reason: CloseReason) -> None:
        req = s.request
        self.sessions.close(s.rid)
        nxt = s.index + 1
        if nxt < len(req.stages) - (1 if reason == CloseReason.FINISHED else 0):
            f = make_frame(self.key, Kind.CLOSE, self.chain_id, s.rid, s.expect_step, s.epoch, nxt,
                           close_body(reason))
            with contextlib.suppress(StageFailed):
                await self.links.send(req.stages[nxt], f, nxt)

    # ── compute ───────────────────────────────────────────────────────────────────────────────
    async def _advance(self, s: DataSession, x: torch.Tensor, start: int, step: int) -> None:
        """Submit positions [start, start + T) (skipping any already cached after a re-route) to the
        batcher; `_emit` stores, sends on or samples once they are computed."""
        job = self.compute.prepare(s, x, start, step)
        if job.remaining == 0:  # everything is cached: send the stored rows on
            await self._emit(s, job, start + x.shape[0])
            return
        self.compute.submit(job)

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
            await self.links.send(req.stages[0], f, 0)
            return
        resend = job.resend or not job.outs
        rows = (self.sessions.stored(rid, job.forward_from, end) if resend
                else (torch.cat(job.outs) if len(job.outs) > 1 else job.outs[0]))
        f = make_frame(self.key, Kind.HIDDEN, self.chain_id, rid, step, s.epoch, s.index + 1,
                       hidden_body(job.forward_from, rows))
        await self.links.send(req.stages[s.index + 1], f, s.index + 1)

    async def _dispatch_local(self, f: Frame) -> None:
        """Dispatch a frame that did not come off a connection (a parked HIDDEN, a one-stage
        pipeline's TOKEN) as if its request's upstream had sent it."""
        s = self.sessions.sessions.get(f.request_id)
        try:
            await self._dispatch(f, s.upstream if s else None)
        except (DataPlaneError, ModelError) as e:
            self._on_failure(f, s.upstream if s else None, e)

    # ── downstream links ──────────────────────────────────────────────────────────────────────
    def _relay_error(self, f: Frame, info: ErrorInfo) -> None:
        """An ERROR from downstream: pass it toward the gateway."""
        s = self.sessions.sessions.get(f.request_id)
        if s is not None:
            self._send_error(s.upstream, f.request_id, info.code, info.message,
                             step=f.step, epoch=f.epoch, stage=info.stage)

    def _link_lost(self, ep: Endpoint) -> None:
        """The link to `ep` closed: every session whose next stage it was has lost that stage."""
        for s in list(self.sessions.sessions.values()):
            req = s.request
            nxt = (s.index + 1) % len(req.stages)
            st = req.stages[nxt]
            if (st.host, st.port) == ep and nxt != s.index:
                self._send_error(s.upstream, s.rid, ErrorCode.STAGE_FAILED,
                                 f"stage {nxt} ({st.operator} at {st.host}:{st.port}) closed its "
                                 f"connection mid-request", step=s.expect_step, epoch=s.epoch,
                                 stage=nxt)
