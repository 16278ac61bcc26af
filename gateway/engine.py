"""What the gateway serves and how a request reaches a pipeline: the model (registry entry,
tokenizer, chat template, context length), routers (the coordinator's `/route`, or a fixed pipeline
for tests and benchmarks) and the runner that signs a `PipelineRequest` with the gateway key and
streams its tokens through `node.dataplane.client.PipelineClient`, failing over through the router,
then asks every stage for its signed commitment (`Runner.commitments`).

A pipeline whose stage refuses the request before its first token with NOT_ASSIGNED (its worker
does not serve the range the route named — e.g. it is still switching to a new epoch's layers) is
re-routed around the refusing operator (`Runner.generate`, up to `max_reroutes` times): nothing
was delivered, so the client sees one answer and is charged once, for it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from coincurve import PrivateKey

from contracts.batch import request_id as chain_request_id
from contracts.model_registry import ModelInfo
from node.dataplane.client import Generation, PipelineClient
from node.dataplane.query import SignedStageCommit, input_relay, request_commitment
from protocol.dataplane_errors import DataPlaneError, RemoteError
from protocol.frames import ErrorCode
from protocol.messages import PipelineRequest, StageAssignment
from protocol.sampling import Sampling

from .errors import InvalidRequest, ModelNotFound, Unavailable

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """The one model this gateway serves."""

    info: ModelInfo
    tokenizer: Any
    context_length: int

    @classmethod
    def load(cls, info: ModelInfo, checkpoint: Path) -> ServedModel:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
        config = json.loads((checkpoint / "config.json").read_text())
        ctx = int(config.get("max_position_embeddings") or 2048)
        return cls(info, tok, ctx)

    @property
    def name(self) -> str:
        return self.info.name

    def check_name(self, name: str) -> None:
        if name != self.name:
            raise ModelNotFound(f"the model '{name}' does not exist on this gateway; it serves "
                                f"'{self.name}' (see GET /v1/models)", "model_not_found", "model")

    def stop_ids(self) -> tuple[int, ...]:
        eos = self.tokenizer.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        return tuple(int(i) for i in ids if i is not None)

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequest(f"model '{self.name}' has no chat template; use /v1/completions",
                                 "no_chat_template", "messages")
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                 tokenize=True, return_dict=False)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return [int(t) for t in out]

    def text_ids(self, prompt: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(prompt, add_special_tokens=True)]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))


class Router(Protocol):
    async def route(self, prompt_tokens: int, output_tokens: int,
                    exclude: tuple[str, ...] = ()) -> tuple[StageAssignment, ...]: ...

    async def replacement(self, failed: StageAssignment) -> StageAssignment: ...


class StaticRouter:
    """A fixed pipeline (tests, benchmarks, a single-operator deployment); an excluded operator's
    stage is served by a spare of the same layers."""

    def __init__(self, stages: Sequence[StageAssignment], spares: Sequence[StageAssignment] = ()):
        self.stages, self.spares = tuple(stages), list(spares)

    async def route(self, prompt_tokens: int, output_tokens: int,
                    exclude: tuple[str, ...] = ()) -> tuple[StageAssignment, ...]:
        out = []
        for st in self.stages:
            if st.operator not in exclude:
                out.append(st)
                continue
            spare = next((s for s in self.spares if (s.start, s.end) == (st.start, st.end)
                          and s.operator not in exclude), None)
            if spare is None:
                raise Unavailable(f"no pipeline without {', '.join(exclude)}: no spare serves "
                                  f"layers [{st.start}, {st.end})", "no_route")
            out.append(spare)
        return tuple(out)

    async def replacement(self, failed: StageAssignment) -> StageAssignment:
        for s in self.spares:
            if (s.start, s.end) == (failed.start, failed.end) and s.operator != failed.operator:
                return s
        raise Unavailable(f"no spare serves layers [{failed.start}, {failed.end})", "no_route")


class CoordinatorRouter:
    """Pipelines from the coordinator's phase-2 router (`POST /route`).

    A stage that failed mid-request (`replacement`) is reported to the coordinator (`POST
    /report`: a hint it checks with its own probes before evicting anyone), then a route without
    the failed operator is asked for with backoff until one offers the same layers or
    `failover_wait_s` runs out: with a hot standby the coordinator needs a few seconds to evict
    the dead worker, publish the healed epoch and see the standby confirm the range. The waits
    are `asyncio.sleep`s and the HTTP calls run in threads: other requests keep streaming."""

    def __init__(self, url: str, model_id: int, failover_wait_s: float = 30.0,
                 retry_s: float = 0.25, max_retry_s: float = 1.0) -> None:
        from node.coordinator import CoordinatorClient

        self.client, self.model_id = CoordinatorClient(url), model_id
        self.failover_wait_s, self.retry_s, self.max_retry_s = failover_wait_s, retry_s, max_retry_s
        self._reports: set[asyncio.Future[str]] = set()  # held until answered (not collected)

    def _route(self, prompt_tokens: int, output_tokens: int,
               exclude: tuple[str, ...] = ()) -> tuple[StageAssignment, ...]:
        from protocol.messages import RouteRequest

        try:
            r = self.client.route(RouteRequest(model_id=self.model_id, prompt_tokens=prompt_tokens,
                                               output_tokens=output_tokens, exclude=exclude))
        except Exception as exc:  # noqa: BLE001 - any coordinator failure is "no pipeline now"
            raise Unavailable(f"no pipeline available from the coordinator: {exc}", "no_route") from None
        return tuple(StageAssignment(operator=s.operator, host=s.host, port=s.port, start=s.start,
                                     end=s.end) for s in r.stages)

    async def route(self, prompt_tokens: int, output_tokens: int,
                    exclude: tuple[str, ...] = ()) -> tuple[StageAssignment, ...]:
        return await asyncio.to_thread(self._route, prompt_tokens, output_tokens, exclude)

    def _report(self, failed: StageAssignment, why: str) -> str:
        from protocol.messages import FailureReport

        try:
            ack = self.client.report(FailureReport(model_id=self.model_id, operator=failed.operator,
                                                   reason=why[:1024]))
        except Exception as exc:  # noqa: BLE001 - a hint: the route retries go on regardless
            return f"report not taken ({exc})"
        return f"{ack.outcome.value}: {ack.detail}"

    async def replacement(self, failed: StageAssignment, why: str = "") -> StageAssignment:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.failover_wait_s
        # the report runs beside the first route attempt: another replica may serve at once
        report = asyncio.ensure_future(asyncio.to_thread(
            self._report, failed, why or f"stage [{failed.start}, {failed.end}) failed mid-request"))
        self._reports.add(report)
        report.add_done_callback(self._reports.discard)
        report.add_done_callback(lambda r: log.info(
            "stage [%d, %d) of %s failed; coordinator: %s", failed.start, failed.end,
            failed.operator, r.result() if not r.cancelled() else "report cancelled"))
        delay, tries, last = self.retry_s, 0, ""
        while True:
            tries += 1
            try:
                stages = await self.route(1, 1, (failed.operator,))
                for s in stages:
                    if (s.start, s.end) == (failed.start, failed.end):
                        return s
                last = (f"the route offered {[(s.start, s.end) for s in stages]}, none "
                        f"[{failed.start}, {failed.end})")
            except Unavailable as exc:
                last = str(exc)
            left = deadline - loop.time()
            if left <= 0:
                told = report.result() if report.done() else "no answer to the report yet"
                raise Unavailable(
                    f"no other operator serves layers [{failed.start}, {failed.end}) after "
                    f"{tries} tries in {self.failover_wait_s:g} s (the coordinator on the report: "
                    f"{told}; last answer: {last})", "no_route")
            await asyncio.sleep(min(delay, left))  # the last try falls on the deadline
            delay = min(delay * 2, self.max_retry_s)


@dataclass
class Run:
    request_id: str
    seq: int
    request: PipelineRequest
    generation: Generation


class Runner:
    """Signs and runs requests on pipelines as the gateway."""

    def __init__(self, key: bytes, chain_id: int, payments: str, gateway: str, router: Router,
                 step_timeout_s: float = 30.0, commit_timeout_s: float = 5.0,
                 commit_attempts: int = 3, max_reroutes: int = 3) -> None:
        self.client = PipelineClient(PrivateKey(key), chain_id)
        self.chain_id, self.payments, self.gateway = chain_id, payments, gateway
        self.router, self.step_timeout_s = router, step_timeout_s
        self.commit_timeout_s, self.commit_attempts = commit_timeout_s, commit_attempts
        self.max_reroutes = max_reroutes
        self.on_reroute: Callable[[str], None] | None = None  # told each refusing operator

    def request_id(self, seq: int) -> str:
        """The on-chain request id the record will settle under (known before any work)."""
        return "0x" + chain_request_id(self.chain_id, self.payments, self.gateway, seq).hex()

    async def prepare(self, seq: int, prompt_len: int, max_tokens: int, sampling: Sampling,
                      stop_ids: tuple[int, ...]) -> PipelineRequest:
        stages = await self.router.route(prompt_len, max_tokens)
        return PipelineRequest(chain_id=self.chain_id, request_id=self.request_id(seq),
                               gateway=self.gateway, stages=stages, sampling=sampling,
                               prompt_len=prompt_len, max_new_tokens=max_tokens, stop_ids=stop_ids)

    async def generate(self, req: PipelineRequest, prompt: list[int],
                       on_token: Callable[[int, int], None] | None = None,
                       progress: Generation | None = None) -> Generation:
        """Run `req`, failing over through the router; a NOT_ASSIGNED refusal before the first
        token is re-routed around the refusing operator (the module docstring says why)."""
        async def replace(k: int, r: PipelineRequest) -> StageAssignment:
            return await self.router.replacement(r.stages[k])

        progress = progress if progress is not None else Generation([])
        refused: list[str] = []
        while True:
            try:
                return await self.client.generate(req, prompt, replace=replace,
                                                  step_timeout_s=self.step_timeout_s,
                                                  on_token=on_token, progress=progress)
            except RemoteError as exc:
                ran = progress.request or req
                if (exc.code != ErrorCode.NOT_ASSIGNED or progress.tokens
                        or not 0 <= exc.stage < len(ran.stages)
                        or len(refused) >= self.max_reroutes):
                    raise
                who = ran.stages[exc.stage].operator
                refused.append(who)
                log.info("request %s: stage %d (%s) refused before the first token (%s); "
                         "re-routing without it", ran.request_id, exc.stage, who, exc)
                if self.on_reroute is not None:
                    self.on_reroute(who)
                try:
                    stages = await self.router.route(ran.prompt_len, ran.max_new_tokens,
                                                     tuple(refused))
                except Unavailable as unavailable:
                    raise unavailable from exc
                # a new epoch of the same request: stages that saw the refused one replace it
                req = PipelineRequest.model_validate(
                    {**ran.model_dump(), "epoch": ran.epoch + 1,
                     "stages": [s.model_dump() for s in stages]})

    async def commitments(self, req: PipelineRequest, positions: int, sequence: Sequence[int]
                          ) -> tuple[list[SignedStageCommit], str | None]:
        """Every stage's signed commitment over rows [0, positions), in stage order: each stage
        after the first is sent its input stage's answer to check against the rows it received
        (stage-level blame, node.dataplane.input_check). Each is retried up to `commit_attempts`
        times; on failure ([], why) — the caller records the request with a zero root and the
        reason (the client already has its tokens). `sequence`: prompt and generated token ids."""
        async def one(j: int, prev: SignedStageCommit | None) -> SignedStageCommit:
            st = req.stages[j]
            relay = (None if prev is None
                     else input_relay((prev.commit, prev.signature), j, sequence, positions))
            for attempt in range(self.commit_attempts):
                try:
                    sc, sig = await request_commitment(self.client.key, self.chain_id, req, j,
                                                       positions, self.commit_timeout_s, relay)
                    return SignedStageCommit(j, st.operator, (st.start, st.end), sc, sig)
                except (DataPlaneError, OSError, TimeoutError) as exc:
                    if attempt + 1 == self.commit_attempts:
                        raise DataPlaneError(f"stage {j} ({st.operator} at {st.host}:{st.port}): "
                                             f"{exc}") from None
                    await asyncio.sleep(0.05 * 2**attempt)
            raise AssertionError("unreachable")

        try:
            got: list[SignedStageCommit] = []
            for j in range(len(req.stages)):
                got.append(await one(j, got[-1] if got else None))
            return got, None
        except DataPlaneError as exc:
            why = f"no commitment after {self.commit_attempts} attempts from {exc}"
            log.error("request %s: %s; recorded with a zero commitment root", req.request_id, why)
            return [], why
