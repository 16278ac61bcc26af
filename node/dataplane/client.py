"""The gateway's side of the data plane: open a request on a pipeline, stream its tokens, fail over.

`PipelineClient.generate` signs a `PipelineRequest`, sends OPEN (with the prompt) to stage 0 and
reads TOKEN frames back — each must be signed by the last stage's operator and carry the next
position. When the pipeline reports STAGE_FAILED(k) (a stage's downstream link closed), or stage 0
itself goes away, the client asks `replace(k, request)` for a new `StageAssignment` with the same
layers (the scheduler's job; a test passes a spare worker), bumps the request's epoch and sends a new
OPEN carrying the sequence so far. `replace` may be a coroutine function: the gateway's waits
(seconds) for the coordinator to heal the pipeline while the event loop serves every other
request. Surviving stages keep their KV caches; the replacement rebuilds its cache by replaying
every position (see `node.dataplane.server`). If nothing arrives for
`step_timeout_s`, the client pings every stage to name the dead one and fails over the same way.

After the generation, the gateway asks every stage of the final pipeline (`Generation.request`) for
its signed commitment (`node.dataplane.query.commit_all`) and keeps them in `Generation.commitments`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from coincurve import PrivateKey

from node.dataplane.query import SignedStageCommit
from protocol.dataplane_errors import BadSignature, RemoteError, StageFailed
from protocol.frames import (
    CloseReason,
    ErrorCode,
    Kind,
    close_body,
    make_frame,
    open_body,
    parse_error,
    parse_frame,
    parse_token,
    read_frame,
)
from protocol.identity import sign_digest
from protocol.messages import PipelineRequest, StageAssignment, encode_request

__all__ = ["Generation", "Handover", "PipelineClient", "SignedStageCommit"]

Replace = Callable[[int, PipelineRequest], StageAssignment | Awaitable[StageAssignment]]


@dataclass
class Handover:
    """One failover: which stage was replaced, at which step, by whom."""

    stage: int
    step: int
    old_operator: str
    new_operator: str


@dataclass
class Generation:
    tokens: list[int]
    handovers: list[Handover] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)  # monotonic arrival time of each token
    request: PipelineRequest | None = None  # as finally routed (after any failover)
    commitments: list[SignedStageCommit] = field(default_factory=list)  # filled by the gateway


class PipelineClient:
    """Drives requests as a gateway whose key signs the requests and the OPEN/CLOSE frames."""

    def __init__(self, key: PrivateKey, chain_id: int, max_frame_bytes: int = 64 * 2**20):
        self.key = key
        self.chain_id = chain_id
        self.max_frame_bytes = max_frame_bytes

    async def generate(self, request: PipelineRequest, prompt: list[int], *,
                       replace: Replace | None = None, max_failovers: int = 2,
                       step_timeout_s: float = 30.0,
                       on_token: Callable[[int, int], None] | None = None,
                       progress: Generation | None = None) -> Generation:
        """Run `request`; `progress`, if given, is filled in place (and returned), so a caller that
        cancels the generation still sees the tokens delivered and the pipeline as routed."""
        if len(prompt) != request.prompt_len:
            raise ValueError(f"prompt has {len(prompt)} tokens; the request says {request.prompt_len}")
        req = request
        tokens = list(prompt)
        out = progress if progress is not None else Generation([])
        out.request = req
        conn = await self._connect(req.stages[0])
        try:
            self._send_open(conn[1], req, tokens)
            while True:
                try:
                    try:
                        buf = await asyncio.wait_for(read_frame(conn[0], self.max_frame_bytes),
                                                     step_timeout_s)
                    except TimeoutError:
                        dead = await self._find_dead(req)
                        raise StageFailed(f"no token for {step_timeout_s} s; stage {dead} does not "
                                          "answer pings", dead) from None
                    except (ConnectionError, asyncio.IncompleteReadError):
                        buf = None
                    if buf is None:
                        raise StageFailed("stage 0 closed the connection", 0)
                    f = parse_frame(buf)
                    if f.request_id != req.rid or f.epoch < req.epoch:
                        continue  # another request's, or from before the last re-route
                    if f.kind == Kind.TOKEN:
                        if f.signer().lower() != req.stages[-1].operator.lower():
                            raise BadSignature(f"TOKEN not signed by the last stage's operator "
                                               f"{req.stages[-1].operator}")
                        tok, pos, done = parse_token(f.body)
                        if pos != len(tokens):
                            continue
                        tokens.append(tok)
                        out.tokens.append(tok)
                        out.token_times.append(time.monotonic())
                        if on_token is not None:
                            on_token(len(out.tokens) - 1, tok)
                        if done:
                            return out
                    elif f.kind == Kind.ERROR:
                        if f.signer().lower() != req.stages[0].operator.lower():
                            raise BadSignature("ERROR not signed by stage 0's operator")
                        info = parse_error(f.body)
                        if info.code == ErrorCode.STAGE_FAILED:
                            raise StageFailed(info.message, info.stage)
                        raise RemoteError(int(info.code), info.stage, info.message)
                except StageFailed as e:
                    if replace is None or len(out.handovers) >= max_failovers or e.stage is None:
                        raise
                    got = replace(e.stage, req)
                    new = await got if inspect.isawaitable(got) else got
                    old = req.stages[e.stage]
                    if (new.start, new.end) != (old.start, old.end):
                        raise ValueError(f"replacement serves [{new.start}, {new.end}), stage {e.stage} "
                                         f"is [{old.start}, {old.end})") from None
                    stages = list(req.stages)
                    stages[e.stage] = new
                    req = PipelineRequest.model_validate(
                        {**req.model_dump(), "epoch": req.epoch + 1,
                         "stages": [s.model_dump() for s in stages]})
                    out.handovers.append(Handover(e.stage, len(out.tokens), old.operator, new.operator))
                    out.request = req
                    if e.stage == 0:
                        conn[1].close()
                        conn = await self._connect(req.stages[0])
                    self._send_open(conn[1], req, tokens)
        except BaseException:
            w = conn[1]
            if not w.is_closing():
                w.write(make_frame(self.key, Kind.CLOSE, self.chain_id, req.rid, 0, req.epoch, 0,
                                   close_body(CloseReason.CANCELLED)).to_bytes())
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(w.drain(), 1.0)
            raise
        finally:
            conn[1].close()

    async def _connect(self, st: StageAssignment):
        try:
            return await asyncio.wait_for(asyncio.open_connection(st.host, st.port), 10.0)
        except (TimeoutError, OSError) as e:
            raise StageFailed(f"stage 0 at {st.host}:{st.port} is unreachable: {e}", 0) from None

    def _send_open(self, w: asyncio.StreamWriter, req: PipelineRequest, tokens: list[int]) -> None:
        raw = encode_request(req)
        gsig = sign_digest(self.key, req.digest(raw))
        f = make_frame(self.key, Kind.OPEN, self.chain_id, req.rid, len(tokens) - req.prompt_len,
                       req.epoch, 0, open_body(raw, gsig, tokens))
        w.write(f.to_bytes())

    async def _find_dead(self, req: PipelineRequest) -> int | None:
        for k, st in enumerate(req.stages):
            if not await self.ping(st):
                return k
        return None

    async def ping(self, st: StageAssignment, timeout_s: float = 2.0) -> bool:
        """True if the stage answers a signed PING with a PONG signed by its operator."""
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(st.host, st.port), timeout_s)
        except (TimeoutError, OSError):
            return False
        try:
            w.write(make_frame(self.key, Kind.PING, self.chain_id, b"\x00" * 32).to_bytes())
            buf = await asyncio.wait_for(read_frame(r, 4096), timeout_s)
            return buf is not None and parse_frame(buf).signer().lower() == st.operator.lower()
        except Exception:
            return False
        finally:
            w.close()

    def generate_sync(self, request: PipelineRequest, prompt: list[int], **kw) -> Generation:
        return asyncio.run(self.generate(request, prompt, **kw))
