"""Re-execute one stage of a request through an ordinary `StageServer`, as an inference prefill.

The job reaches the server exactly as inference does (DESIGN §5.3): an OPEN carrying a gateway-
signed `PipelineRequest` with the request's own id, the checked stage's index and the original
pipeline's layer ranges — prompt = the P input positions, one new token — then, on a stage after
the first, one HIDDEN frame with the P input rows. Every other stage of that pipeline is the agent:
its operator key signs as gateway and as the neighbouring stages, and its `Listener` receives what
the server sends downstream (the forwarded OPEN, the output HIDDEN rows, the sampled TOKEN). The
agent then plays the rest of an ordinary one-token request — the TOKEN that closes the ring on the
first stage, CLOSE(FINISHED) on a middle one — and asks the server for COMMIT, the same question
the gateway asks after every request. The server has computed and committed its output before
anything about the check (the claimed rows, a verdict) exists; nothing in any frame says "check".

`ServerPool` picks the server: the node's own if it serves exactly the layer range, else one the
agent starts in-process on an ephemeral port (same class, same handler, same key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from coincurve import PrivateKey

from contracts.verification import attestation_digest
from node.verification.errors import RerunError
from protocol.dataplane_errors import DataPlaneError
from protocol.frames import (
    CloseReason,
    Frame,
    InputRelay,
    Kind,
    close_body,
    make_frame,
    open_body,
    parse_error,
    parse_frame,
    read_frame,
    token_body,
)
from protocol.identity import address_of_key, sign_digest
from protocol.messages import PipelineRequest, StageAssignment, StageCommit, encode_request
from protocol.rows import hidden_body
from verifier.encoding import Domain
from verifier.merkle import StageCommitment

log = logging.getLogger("veriplex.verifier.rerun")
FETCH_FRAME_BYTES = 16 * 2**20  # rows per FETCH are kept well under a frame


@dataclass(frozen=True)
class RerunJob:
    """Run stage `stage` of a pipeline with layer `ranges` over positions [0, P) of `request_id`."""

    chain_id: int
    request_id: bytes
    stage: int
    ranges: tuple[tuple[int, int], ...]
    x: torch.Tensor  # (P,) token ids on the first stage, (P, d) float rows otherwise
    tokens: tuple[int, ...]  # the sequence's first P token ids (and, if known, the token at P)

    @property
    def positions(self) -> int:
        return int(self.x.shape[0])


@dataclass
class RerunResult:
    root: bytes  # the server's COMMIT root
    tree: StageCommitment  # rebuilt from the server's stored rows; tree.root == root
    rows: torch.Tensor  # (P, d) float32, the server's output rows
    tokens: list[int]  # the tokens its commitment covers
    seconds: float
    sent: list[Kind] = field(default_factory=list)  # the frame kinds the server was sent, in order


class Listener:
    """A TCP endpoint standing in for the other stages: queues every frame it gets, per request."""

    def __init__(self, host: str = "127.0.0.1", max_frame_bytes: int = 64 * 2**20) -> None:
        self.host, self.port = host, 0
        self.max_frame_bytes = max_frame_bytes
        self.queues: dict[bytes, asyncio.Queue[Frame]] = {}
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Listener:
        self._server = await asyncio.start_server(self._conn, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()

    def expect(self, request_id: bytes) -> asyncio.Queue[Frame]:
        q: asyncio.Queue[Frame] = asyncio.Queue()
        self.queues[request_id] = q
        return q

    def done(self, request_id: bytes) -> None:
        self.queues.pop(request_id, None)

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                buf = await read_frame(reader, self.max_frame_bytes)
                if buf is None:
                    break
                f = parse_frame(buf)
                q = self.queues.get(f.request_id)
                if q is not None:
                    q.put_nowait(f)
        except (DataPlaneError, ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a peer that hung up or sent garbage, or the listener stopping: nothing to keep
        finally:
            self._writers.discard(writer)
            writer.close()


class ServerPool:
    """The stage server a job runs on: the node's own for its exact range, else one built here.

    Jobs hold a server through `lease` for as long as they use it. Servers are built one at a time
    (a shard load is heavy, and concurrent first imports of `transformers` in worker threads are not
    safe), a range is built once however many jobs want it at the same moment, and only idle built
    servers are stopped to stay within `keep` — never one a job is still talking to."""

    def __init__(self, own: Callable[[], list[Any]], build: Callable[[tuple[int, int]], Any] | None,
                 keep: int = 2) -> None:
        self.own, self.build, self.keep = own, build, keep
        self.extra: dict[tuple[int, int], Any] = {}  # least recently leased first
        self.users: dict[tuple[int, int], int] = {}
        self._lock: asyncio.Lock | None = None

    @contextlib.asynccontextmanager
    async def lease(self, layers: tuple[int, int]) -> AsyncIterator[Any]:
        """The server for `layers`, kept running until the block ends."""
        layers = (int(layers[0]), int(layers[1]))
        for srv in self.own():
            if tuple(srv.layers) == layers:
                yield srv
                return
        srv = await self._acquire(layers)
        try:
            yield srv
        finally:
            self.users[layers] -= 1
            await self._evict()

    async def _acquire(self, layers: tuple[int, int]) -> Any:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            srv = self.extra.pop(layers, None)
            if srv is None:
                if self.build is None:
                    raise RerunError(f"this node serves no stage of layers [{layers[0]}, {layers[1]}) "
                                     "and cannot load one (no model directory)")
                srv = await asyncio.to_thread(self.build, layers)
                await srv.start()
            self.extra[layers] = srv  # (re)inserted last: the most recently leased
            self.users[layers] = self.users.get(layers, 0) + 1
        await self._evict()
        return srv

    async def _evict(self) -> None:
        """Stop the least recently leased idle servers while more than `keep` are running."""
        for layers in list(self.extra):
            if len(self.extra) <= self.keep:
                return
            if self.users.get(layers, 0) == 0:
                srv = self.extra.pop(layers)
                self.users.pop(layers, None)
                await srv.stop()

    async def stop(self) -> None:
        for srv in self.extra.values():
            await srv.stop()
        self.extra.clear()
        self.users.clear()


def job_request(job: RerunJob, server: Any, listener: Listener, me: str) -> PipelineRequest:
    """The ordinary one-token request the job is sent as: this server at `job.stage`, the agent at
    every other stage (its listener's address), the agent as gateway."""
    stages = [StageAssignment(operator=server.address, host=server.host, port=server.port, start=a, end=b)
              if k == job.stage else
              StageAssignment(operator=me, host=listener.host, port=listener.port, start=a, end=b)
              for k, (a, b) in enumerate(job.ranges)]
    return PipelineRequest(chain_id=job.chain_id, request_id="0x" + job.request_id.hex(), epoch=0,
                           gateway=me, stages=tuple(stages), prompt_len=job.positions,
                           max_new_tokens=1)


async def fetch_all(key: PrivateKey, chain_id: int, host: str, port: int, request_id: bytes,
                    stage: int, layers: tuple[int, int], positions: int, hidden: int,
                    operator: str | None = None, timeout_s: float = 30.0
                    ) -> tuple[torch.Tensor, list[int]]:
    """Rows [0, positions) and the token ids of a stage, in as many FETCHes as frames need."""
    from node.dataplane.query import fetch_rows

    per = max(1, FETCH_FRAME_BYTES // (4 * max(hidden, 1)))
    parts: list[torch.Tensor] = []
    tokens: list[int] = []
    for lo in range(0, positions, per):
        rows, tokens = await fetch_rows(key, chain_id, host, port, request_id, stage, layers, lo,
                                        min(positions, lo + per), operator=operator,
                                        timeout_s=timeout_s)
        parts.append(rows)
    return torch.cat(parts) if parts else torch.empty((0, hidden)), tokens


async def run_job(server: Any, listener: Listener, key: PrivateKey, job: RerunJob,
                  timeout_s: float = 120.0) -> RerunResult:
    """Send the job to `server` as an inference prefill, wait for its output, ask for COMMIT."""
    from node.dataplane.query import request_commitment

    t0 = time.perf_counter()
    me = address_of_key(key)
    j, n, P, cid, rid = job.stage, len(job.ranges), job.positions, job.chain_id, job.request_id
    if len(job.tokens) < P:
        raise RerunError(f"the job needs the sequence's first {P} token ids, got {len(job.tokens)}")
    req = job_request(job, server, listener, me)
    raw = encode_request(req)
    q = listener.expect(rid)
    sent: list[Kind] = []
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(server.host, server.port), 10)
    except (TimeoutError, OSError) as e:
        listener.done(rid)
        raise RerunError(f"stage server {server.host}:{server.port} is unreachable: {e}") from None
    pump = asyncio.get_running_loop().create_task(_pump(reader, q))

    def send(w: asyncio.StreamWriter, kind: Kind, body: bytes, stage: int) -> None:
        w.write(make_frame(key, kind, cid, rid, 0, 0, stage, body).to_bytes())
        sent.append(kind)

    ring = None
    try:
        send(writer, Kind.OPEN, open_body(raw, sign_digest(key, req.digest(raw)), list(job.tokens[:P])), j)
        if j > 0:
            sh = server.executor.shard
            send(writer, Kind.HIDDEN, hidden_body(0, job.x.to(sh.dtype)), j)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            if j < n - 1:
                await _wait(q, Kind.HIDDEN, server.address)
                if j == 0:  # close the ring as the last stage does: the token at P, done
                    last = job.tokens[P] if len(job.tokens) > P else 0
                    _, ring = await asyncio.open_connection(server.host, server.port)
                    send(ring, Kind.TOKEN, token_body(int(last), P, True), 0)
                    await _wait(q, Kind.TOKEN, None)  # relayed back to the gateway: processed
                else:
                    send(writer, Kind.CLOSE, close_body(CloseReason.FINISHED), j)
                    await writer.drain()
            else:
                await _wait(q, Kind.TOKEN, server.address)  # the last stage samples and closes
            sc, _sig = await request_commitment(key, cid, req, j, P, timeout_s=timeout_s,
                                                relay=_own_relay(key, job, server) if j > 0 else None)
            sent.append(Kind.COMMIT)
            sh = server.executor.shard
            rows, toks = await fetch_all(key, cid, server.host, server.port, rid, j, job.ranges[j], P,
                                         sh.hidden_size, operator=server.address, timeout_s=timeout_s)
            sent.append(Kind.FETCH)
    except TimeoutError:
        raise RerunError(f"stage {j} re-execution of request 0x{rid.hex()} did not finish in "
                         f"{timeout_s} s") from None
    except (DataPlaneError, OSError) as e:  # a refused or dropped connection to the server included
        raise RerunError(f"stage {j} re-execution of request 0x{rid.hex()} failed: {e}") from e
    finally:
        listener.done(rid)
        pump.cancel()
        writer.close()
        if ring is not None:
            ring.close()
    tree = await asyncio.to_thread(StageCommitment.build, Domain(cid, rid, j), rows, toks[: sc.n_tokens])
    if tree.root != sc.root:
        raise RerunError(f"the stage server's stored rows give root 0x{tree.root.hex()}, its COMMIT "
                         f"said 0x{sc.root.hex()}")
    return RerunResult(sc.root, tree, rows, list(toks[: sc.n_tokens]), time.perf_counter() - t0, sent)


def _own_relay(key: PrivateKey, job: RerunJob, server: Any) -> InputRelay:
    """COMMIT relays the input stage's signed commitment to every stage after the first, as a
    gateway does (node.dataplane.input_check); here the agent itself sent the rows as that stage,
    so it signs the commitment to exactly what it sent."""
    from node.dataplane.query import input_tokens

    j, P, cid, rid = job.stage, job.positions, job.chain_id, job.request_id
    n = input_tokens(j, P)  # P + 1 after the first stage (the last may be missing: then 0)
    tokens = tuple(int(t) for t in job.tokens[:n]) + (0,) * max(0, n - len(job.tokens))
    c = StageCommitment.build(Domain(cid, rid, j - 1), job.x.to(server.executor.shard.dtype), tokens)
    sc = StageCommit(c.root, c.shape.positions, c.shape.hidden_size, c.shape.n_tokens)
    return InputRelay(sc, sign_digest(key, attestation_digest(cid, rid, j - 1, sc)), tokens)


async def _pump(reader: asyncio.StreamReader, q: asyncio.Queue[Frame]) -> None:
    """Frames coming back on the job's own connection (relayed TOKENs, ERRORs) join the queue."""
    with contextlib.suppress(DataPlaneError, ConnectionError, asyncio.IncompleteReadError,
                             asyncio.CancelledError):
        while True:
            buf = await read_frame(reader, 64 * 2**20)
            if buf is None:
                return
            q.put_nowait(parse_frame(buf))


async def _wait(q: asyncio.Queue[Frame], kind: Kind, signer: str | None) -> Frame:
    while True:
        f = await q.get()
        if f.kind == Kind.ERROR:
            info = parse_error(f.body)
            raise RerunError(f"the stage server refused the job: {info.message} (code {int(info.code)})")
        if f.kind == kind:
            if signer is not None and f.signer().lower() != signer.lower():
                raise RerunError(f"{kind.name} signed by {f.signer()}, not by the stage server {signer}")
            return f


def logits_of(shard: Any, rows: torch.Tensor) -> torch.Tensor | None:
    """Last stage only: fp32 logits (T, V) of output rows through the shard's final norm + LM head."""
    if shard.norm is None or shard.lm_head is None:
        return None
    with torch.no_grad():
        h = rows.to(shard.dtype).to(next(shard.lm_head.parameters()).device)
        return shard.lm_head(shard.norm(h)).float().cpu()
