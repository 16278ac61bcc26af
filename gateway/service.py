"""The gateway's request path, independent of HTTP: authorise and reserve (before any work), route
and sign a pipeline request, generate (streaming token by token), ask every stage for its signed
commitment, then account the tokens, charge them at registry prices, record the request (with its
stage commitments and commitment root) durably for settlement and build its receipt.

A request whose stages do not all answer COMMIT (after retries) is still recorded and charged — the
client has its tokens — with a zero commitment root and `commitments_error` in the receipt; such a
record cannot be verified (the task opener marks it `no_commitments`)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from contracts.apikeys import SignedApiKey
from contracts.client import Chain
from contracts.errors import ContractsError
from contracts.verification import commitment_root
from node.dataplane.client import Generation
from node.dataplane.query import SignedStageCommit
from protocol.dataplane_errors import DataPlaneError
from protocol.messages import PipelineRequest
from protocol.receipt import (
    GatewayReceipt,
    ReceiptBatch,
    ReceiptModel,
    ReceiptStage,
    TokenCounts,
    TokenPrices,
)
from protocol.sampling import Sampling

from .auth import Accounts, Reservation
from .bodies import ChatBody, Common, CompletionBody
from .engine import Router, Runner, ServedModel
from .errors import InvalidRequest, ModelNotFound, Unavailable
from .metrics import Metrics
from .settlement import Settler
from .store import Served, Store
from .tasks import TaskOpener, batch_proof, pipelines_json

ZERO_ROOT = bytes(32)


class _StopSequence(Exception):
    """Raised from the token callback when a stop string appears: cancels the generation."""


@dataclass
class Job:
    """One admitted request: everything decided before the pipeline is asked for anything."""

    kind: str  # "chat" | "text"
    body: Common
    prompt: list[int]
    max_tokens: int
    seq: int
    request_id: str
    reservation: Reservation
    request: PipelineRequest | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Outcome:
    text: str
    tokens: list[int]
    finish_reason: str
    receipt: dict[str, Any]


class Gateway:
    def __init__(self, chain: Chain, store: Store, model: ServedModel, router: Router, *,
                 default_max_tokens: int = 256, chain_cache_s: float = 2.0,
                 step_timeout_s: float = 30.0, batch_size: int = 64, batch_max_age_s: float = 10.0,
                 settle_tick_s: float = 0.5, exit_after_broadcast: bool = False,
                 open_tasks: bool = True, commit_timeout_s: float = 5.0,
                 commit_attempts: int = 3) -> None:
        assert chain.signer is not None
        self.chain, self.store, self.model = chain, store, model
        self.address = chain.signer.address
        self.chain_id = chain.chain_id
        self.payments = chain.payments.address
        self.default_max_tokens = default_max_tokens
        self.accounts = Accounts(chain, self.address, store.unsettled_by_key(), chain_cache_s)
        self.runner = Runner(bytes(chain.signer.account.key), self.chain_id, self.payments,
                             self.address, router, step_timeout_s, commit_timeout_s,
                             commit_attempts)
        self.metrics = Metrics()
        self.runner.on_reroute = self.metrics.rerouted
        self.task_opener = TaskOpener(chain, store) if open_tasks and _has_verification(chain) else None
        self.settler = Settler(chain, store, batch_size=batch_size, max_age_s=batch_max_age_s,
                               tick_s=settle_tick_s, exit_after_broadcast=exit_after_broadcast,
                               on_settled=self._on_settled, task_opener=self.task_opener)
        self._background: set[asyncio.Task] = set()

    def start(self) -> Gateway:
        self.settler.start()
        return self

    def stop(self) -> None:
        self.settler.stop(flush=True)

    def _on_settled(self, batch_id: int) -> None:
        self.accounts.settled([(r.key_hash, int(r.charge)) for r in self.store.batch_records(batch_id)])

    # ------------------------------------------------------------------ admission
    async def admit(self, signed: SignedApiKey, body: Common, kind: str) -> Job:
        self.model.check_name(body.model)
        if isinstance(body, ChatBody):
            try:
                msgs = [{"role": m.role, "content": m.text()} for m in body.messages]
            except ValueError as exc:
                raise InvalidRequest(str(exc), "invalid_value", "messages") from None
            prompt = self.model.chat_ids(msgs)
        else:
            assert isinstance(body, CompletionBody)
            prompt = self.model.text_ids(str(body.prompt))
        if not prompt:
            raise InvalidRequest("the prompt is empty", "invalid_value", "prompt")
        ctx = self.model.context_length
        limit = body.limit()
        if len(prompt) >= ctx or (limit is not None and len(prompt) + limit > ctx):
            raise InvalidRequest(
                f"this model's maximum context length is {ctx} tokens; the request has "
                f"{len(prompt)} prompt tokens + {limit or 1} max_tokens", "context_length_exceeded",
                "messages" if kind == "chat" else "prompt")
        max_tokens = limit if limit is not None else min(self.default_max_tokens, ctx - len(prompt))
        upper = self.model.info.charge(len(prompt), max_tokens)
        if self.accounts.cached(signed):  # no chain read: no thread hop either
            reservation = self.accounts.reserve(signed, upper)
        else:
            reservation = await asyncio.to_thread(self.accounts.reserve, signed, upper)
        seq = self.store.next_seq()
        job = Job(kind, body, prompt, max_tokens, seq, self.runner.request_id(seq), reservation)
        sampling = Sampling(temperature=body.temperature, top_p=body.top_p,
                            seed=body.seed if body.seed is not None else seq % 2**63)
        try:
            job.request = await self.runner.prepare(seq, len(prompt), max_tokens, sampling,
                                                    self.model.stop_ids())
        except BaseException:
            self.accounts.finish(reservation, None)
            raise
        return job

    # ------------------------------------------------------------------ generation
    async def stream(self, job: Job, on_done: Callable[[Outcome], None] | None = None
                     ) -> AsyncIterator[str | Outcome]:
        """Yield text deltas as tokens arrive, then the `Outcome` (recorded and charged)."""
        assert job.request is not None
        stops = job.body.stop or []
        hold = max((len(s) for s in stops), default=1) - 1
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        tokens: list[int] = []
        progress = Generation([])
        state = {"emitted": 0, "stopped_at": None}

        def on_token(_i: int, tok: int) -> None:
            tokens.append(tok)
            queue.put_nowait(tok)
            if stops:
                text = self.model.decode(tokens)
                hits = [text.find(s) for s in stops if s in text]
                if hits:
                    state["stopped_at"] = min(hits)
                    raise _StopSequence

        async def run() -> None:
            try:
                await self.runner.generate(job.request, job.prompt, on_token, progress)
            except _StopSequence:
                pass
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(run())
        self.metrics.inflight += 1
        charged = False
        try:
            while (await queue.get()) is not None:
                text = self.model.decode(tokens)
                if state["stopped_at"] is not None:
                    text = text[: state["stopped_at"]]
                    end = len(text)
                else:
                    end = len(text) - hold if stops else len(text)
                    if text.endswith("\ufffd"):
                        end = min(end, len(text) - 1)
                if end > state["emitted"]:
                    yield text[state["emitted"]:end]
                    state["emitted"] = end
            try:
                await task
            except Unavailable as exc:  # no replacement for a failed stage: say what failed
                cause = exc.__context__
                raise Unavailable(f"{exc.message} after: {cause}" if cause else exc.message,
                                  exc.code) from None
            except DataPlaneError as exc:
                raise Unavailable(f"the pipeline failed: {exc}", "pipeline_failed") from None
            except (OSError, TimeoutError) as exc:
                raise Unavailable(f"cannot reach the pipeline: {exc}", "pipeline_unreachable") from None
            text = self.model.decode(tokens)
            if state["stopped_at"] is not None:
                text = text[: state["stopped_at"]]
            if len(text) > state["emitted"]:
                yield text[state["emitted"]:]
            if state["stopped_at"] is not None or (tokens and tokens[-1] in job.request.stop_ids):
                reason = "stop"
            else:
                reason = "length" if len(tokens) >= job.max_tokens else "stop"
            outcome = await self._finish(job, progress, tokens, text, reason)
            charged = True
            yield outcome
        finally:
            self.metrics.inflight -= 1
            if not task.done():
                task.cancel()
                with _suppress():
                    await task
            if not charged:
                # Refused or failed mid-way: partial work is charged only if tokens were delivered,
                # after asking for the commitments — in a task of its own, since this generator
                # may be closing inside a cancelled scope.
                if tokens:
                    t = asyncio.get_running_loop().create_task(
                        self._finish(job, progress, list(tokens), self.model.decode(tokens),
                                     "cancelled"))
                    self._background.add(t)
                    t.add_done_callback(self._background.discard)
                else:
                    self.accounts.finish(job.reservation, None)

    async def complete(self, job: Job) -> Outcome:
        out: Outcome | None = None
        async for item in self.stream(job):
            if isinstance(item, Outcome):
                out = item
        assert out is not None
        return out

    async def _finish(self, job: Job, gen: Generation, tokens: list[int], text: str,
                      reason: str) -> Outcome:
        """Ask the stages for their commitments over P = prompt + generated - 1 rows, then
        record and charge."""
        req = gen.request or job.request
        assert req is not None
        commits: list[SignedStageCommit] = []
        error: str | None = None
        positions = len(job.prompt) + len(tokens) - 1
        if tokens and positions >= 1:
            commits, error = await self.runner.commitments(req, positions, [*job.prompt, *tokens])
        gen.commitments = commits
        return self._charge(job, req, tokens, text, reason, commits, error)

    def _charge(self, job: Job, req: PipelineRequest, tokens: list[int], text: str, reason: str,
                commits: list[SignedStageCommit], commits_error: str | None) -> Outcome:
        info = self.model.info
        tin, tout = len(job.prompt), len(tokens)
        # A request without its stages' signed commitments cannot be verified: it is not billed
        # (on chain such a record would be refunded and the gateway's bond slashed).
        charge = info.charge(tin, tout) if commits else 0
        stages = [[s.operator, s.start, s.end] for s in req.stages]
        root = commitment_root([c.commit for c in commits]) if commits else ZERO_ROOT
        commits_json = [c.to_json() for c in commits]
        if tout:  # (kept for its receipt; a zero charge is skipped at settlement, never paid)
            self.store.record(Served(job.seq, job.request_id, job.reservation.key_hash, info.model_id,
                                     json.dumps(stages), tin, tout, charge, root,
                                     json.dumps(commits_json) if commits else None, commits_error))
            self.settler.nudge()
        self.accounts.finish(job.reservation, charge if tout and commits else None)
        self.metrics.served(tin, tout, charge if tout else 0)
        receipt = GatewayReceipt(
            request_id=job.request_id, seq=job.seq, gateway=self.address, chain_id=self.chain_id,
            payments=self.payments,
            batch=ReceiptBatch(lookup=f"/v1/receipts/{job.request_id}"),
            pipeline=tuple(ReceiptStage(operator=s.operator, host=s.host, port=s.port,
                                        layers=(s.start, s.end)) for s in req.stages),
            commitment_root="0x" + root.hex(), commitments=tuple(commits_json),
            commitment_roots=tuple(c["root"] for c in commits_json),
            commitments_error=commits_error,
            model=ReceiptModel(id=info.model_id, name=info.name),
            model_hash="0x" + info.weights_root.hex(),
            tokens=TokenCounts(prompt=tin, completion=tout),
            price_wei=TokenPrices(prompt=str(info.price_in_wei), completion=str(info.price_out_wei)),
            charge_wei=str(charge if tout else 0),
        ).to_json()
        return Outcome(text, tokens, reason, receipt)

    # ------------------------------------------------------------------ lookups
    def receipt_status(self, request_id: str) -> dict[str, Any]:
        """Where a served request's record is now: pending, in a batch, settled (tx, batch id)."""
        row = self.store.request(request_id.lower())
        if row is None:
            raise ModelNotFound(f"no request {request_id} was served by this gateway",
                                "request_not_found", "request_id")
        out: dict[str, Any] = {
            "request_id": row.request_id, "seq": row.seq, "gateway": self.address,
            "chain_id": self.chain_id, "payments": self.payments, "model_id": row.model_id,
            "pipeline": json.loads(row.pipeline),
            "tokens": {"prompt": row.tokens_in, "completion": row.tokens_out},
            "charge_wei": row.charge, "commitment_root": "0x" + row.commitment_root.hex(),
            "commitments": json.loads(row.commitments) if row.commitments else [],
            "commitments_error": row.commitments_error,
            "batch": {"status": "pending", "batch_id": None, "tx_hash": None},
            "batch_id": None, "tx_hash": None, "leaf_index": None, "proof": None,
            "pipelines": None, "record": None,
            "task": {"state": row.task_state, "task_id": row.task_id, "error": row.task_error},
        }
        if row.batch is not None:
            b = self.store.batch(row.batch)
            if b is not None:
                out["batch"] = {"status": b.status, "batch_id": b.chain_batch_id,
                                "tx_hash": b.tx_hash, "error": b.error}
                if b.status == "settled" and row.task_state == "skipped":
                    out["batch"]["status"] = "skipped"  # not charged: not a leaf of the batch
                elif b.status == "settled":
                    bp = batch_proof(self.chain_id, self.payments, self.address,
                                     self.store.batch_records(row.batch), row.request_id)
                    lf = bp.leaf
                    out.update(
                        batch_id=b.chain_batch_id, tx_hash=b.tx_hash, leaf_index=bp.leaf_index,
                        proof=["0x" + p.hex() for p in bp.proof],
                        pipelines=pipelines_json(bp.pipelines),
                        record={"request_id": "0x" + lf.request_id.hex(),
                                "key_hash": "0x" + lf.key_hash.hex(),
                                "pipeline_index": lf.pipeline_index, "tokens_in": lf.tokens_in,
                                "tokens_out": lf.tokens_out, "charge": str(lf.charge),
                                "commitment_root": "0x" + lf.commitment_root.hex()})
        return out


def _has_verification(chain: Chain) -> bool:
    try:
        chain.verification.address  # noqa: B018 - raises if the manifest has no Verification
    except ContractsError:
        return False
    return True


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True
