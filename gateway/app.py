"""The gateway's HTTP face (FastAPI): OpenAI's `/v1/chat/completions`, `/v1/completions` (JSON or
SSE streams exactly as OpenAI sends them: `data: {json}\\n\\n` chunks then `data: [DONE]`),
`/v1/models`, plus `/v1/receipts/{request_id}` (settlement state of a served request), `/status`
and Prometheus `/metrics`. Every completion carries a `veriplex` receipt object and an
`x-veriplex-request-id` header; every refusal is an OpenAI-shaped error."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from .bodies import ChatBody, CompletionBody, parse
from .errors import ApiError
from .service import Gateway, Job, Outcome

HEADER = "x-veriplex-request-id"


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def _usage(o: Outcome) -> dict[str, int]:
    t = o.receipt["tokens"]
    return {"prompt_tokens": t["prompt"], "completion_tokens": t["completion"],
            "total_tokens": t["prompt"] + t["completion"]}


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def create_app(gw: Gateway) -> FastAPI:
    app = FastAPI(title="Veriplex gateway", docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, e: ApiError) -> JSONResponse:
        return error_response(e)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        m = gw.model
        return {"object": "list", "data": [{
            "id": m.name, "object": "model", "created": 0, "owned_by": "veriplex",
            "veriplex": {"model_id": m.info.model_id, "layers": m.info.layers,
                         "context_length": m.context_length,
                         "weights_root": "0x" + m.info.weights_root.hex(),
                         "price_wei": {"prompt": str(m.info.price_in_wei),
                                       "completion": str(m.info.price_out_wei)}}}]}

    async def handle(request: Request, kind: str) -> Response:
        endpoint = "chat" if kind == "chat" else "completions"
        try:
            signed = gw.accounts.parse(request.headers.get("authorization"))
            body = parse(await request.body(), ChatBody if kind == "chat" else CompletionBody)
            job = await gw.admit(signed, body, kind)
        except ApiError as e:
            gw.metrics.observe(endpoint, e.status)
            return error_response(e)
        headers = {HEADER: job.request_id}
        if body.stream:
            return StreamingResponse(_stream(gw, job, kind, endpoint), media_type="text/event-stream",
                                     headers={**headers, "cache-control": "no-cache"})
        try:
            out = await gw.complete(job)
        except ApiError as e:
            gw.metrics.observe(endpoint, e.status)
            return JSONResponse(e.body(), status_code=e.status, headers=headers)
        gw.metrics.observe(endpoint, 200, time.perf_counter() - job.started)
        return JSONResponse(_full(job, kind, out), headers=headers)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await handle(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, "text")

    @app.get("/v1/receipts/{request_id}")
    async def receipt(request_id: str) -> dict[str, Any]:
        return gw.receipt_status(request_id)

    @app.get("/status")
    async def status() -> dict[str, Any]:
        s = gw.settler
        return {"gateway": gw.address, "chain_id": gw.chain_id, "payments": gw.payments,
                "model": {"id": gw.model.info.model_id, "name": gw.model.name},
                "inflight": gw.metrics.inflight, "store": gw.store.counts(),
                "settlement": {"settled_batches": s.settled_batches,
                               "failed_passes": s.failed_passes, "last_error": s.last_error}}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(gw.metrics.render(gw.store.counts()),
                                 media_type="text/plain; version=0.0.4")

    return app


def _full(job: Job, kind: str, out: Outcome) -> dict[str, Any]:
    base = {"id": _id(job, kind), "created": job.created, "model": job.body.model,
            "usage": _usage(out), "veriplex": out.receipt}
    if kind == "chat":
        return {**base, "object": "chat.completion", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": out.text},
            "finish_reason": out.finish_reason, "logprobs": None}]}
    return {**base, "object": "text_completion", "choices": [{
        "index": 0, "text": out.text, "finish_reason": out.finish_reason, "logprobs": None}]}


def _id(job: Job, kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + job.request_id[2:34]


async def _stream(gw: Gateway, job: Job, kind: str, endpoint: str) -> AsyncIterator[str]:
    head = {"id": _id(job, kind), "created": job.created, "model": job.body.model,
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion"}

    def chunk(delta: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        if kind == "chat":
            d: dict[str, Any] = {"role": "assistant"} if role else {}
            if delta is not None:
                d["content"] = delta
            return {**head, "choices": [{"index": 0, "delta": d, "finish_reason": finish,
                                         "logprobs": None}]}
        return {**head, "choices": [{"index": 0, "text": delta or "", "finish_reason": finish,
                                     "logprobs": None}]}

    if kind == "chat":
        yield _sse(chunk("", None, role=True))
    try:
        async for item in gw.stream(job):
            if isinstance(item, Outcome):
                final = chunk(None if kind == "chat" else "", item.finish_reason)
                yield _sse({**final, "usage": _usage(item), "veriplex": item.receipt})
            else:
                yield _sse(chunk(item, None))
    except ApiError as e:
        gw.metrics.observe(endpoint, e.status)
        yield _sse(e.body())
        yield "data: [DONE]\n\n"
        return
    gw.metrics.observe(endpoint, 200, time.perf_counter() - job.started)
    yield "data: [DONE]\n\n"
