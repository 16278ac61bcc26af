"""The explorer's web UI: FastAPI routes rendering Jinja2 pages, each mirrored by a JSON endpoint
under `/api` that returns the same data. Page data comes from `queries`; this module only parses
paths, picks the template, and maps errors (`BadQuery` -> 400, `NotFound` and unknown paths -> a
friendly 404). The indexer's status is shown on every page, so an unreachable RPC endpoint reads as
"indexer behind" while the UI keeps serving what is indexed."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from contracts.errors import ChainError
from contracts.rpc import Rpc
from devnet.explorer import BadQuery, ExplorerError, NotFound, queries
from devnet.explorer.indexer import IndexerStatus, indexed_chain_id
from devnet.explorer.models import Block

HERE = Path(__file__).parent
RECEIPT_NOTE = (
    "Built by the explorer from the chain alone. The chain keeps each record's commitment root; "
    "the per-stage commitments are on chain only when the request was opened for verification "
    "(see 'commitments'), and the stage operators' signatures never are: they are in the "
    "gateway's receipt (see 'gateway_receipt'). `veriplex audit` on this file checks settlement, "
    "inclusion, pipeline, verification and payouts; on the gateway's receipt it also checks "
    "every stage's commitment and signature (see 'audit_commands').")
ETH = 10**18


def fmt_eth(wei: Any) -> str:
    """Wei as an exact ETH string (no float rounding)."""
    try:
        w = int(wei)
    except (TypeError, ValueError):
        return str(wei)
    sign, w = ("-" if w < 0 else ""), abs(w)
    whole, frac = divmod(w, ETH)
    frac_s = f"{frac:018d}".rstrip("0")
    return f"{sign}{whole}{'.' + frac_s if frac_s else ''} ETH"


def fmt_short(text: Any, n: int = 10) -> str:
    s = str(text or "")
    return s if len(s) <= 2 * n + 1 else f"{s[:n]}…{s[-6:]}"


def fmt_time(ts: int) -> str:
    return dt.datetime.fromtimestamp(int(ts), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class TipCache:
    """Page data of the heavier aggregate pages (network, nodes, node), kept per indexed tip
    (block number and hash): the index only changes when blocks are added or a reorg replaces
    them, and either changes the tip, so a hit is exactly what a recomputation would give."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.lock = threading.Lock()
        self.data: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()

    def get(self, s: Session, key: str, fn: Callable[[Session], dict[str, Any]]) -> dict[str, Any]:
        tip = s.execute(select(Block.number, Block.hash).order_by(Block.number.desc())
                        .limit(1)).first()
        k = (key, tuple(tip) if tip is not None else None)
        with self.lock:
            if k in self.data:
                self.data.move_to_end(k)
                return self.data[k]
        data = fn(s)
        with self.lock:
            self.data[k] = data
            while len(self.data) > self.size:
                self.data.popitem(last=False)
        return data


def create_app(engine: Engine, status: IndexerStatus, rpc: Rpc | None = None,
               gateway_url: str | None = None) -> FastAPI:
    """The web app over `engine`'s index; `rpc` (optional) serves live balances; `gateway_url`
    (optional) is where request pages send auditors for the gateway's receipts."""
    app = FastAPI(title="Veriplex explorer", docs_url="/api/docs", openapi_url="/api/openapi.json")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(eth=fmt_eth, short=fmt_short, time=fmt_time,
                                 tojson_pretty=lambda v: json.dumps(v, indent=2, default=str))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def status_json() -> dict[str, Any]:
        with status.lock:
            return status.as_json()

    def page(request: Request, template: str, data: dict[str, Any], code: int = 200) -> Response:
        return templates.TemplateResponse(
            request, template, {"d": data, "indexer": status_json()}, status_code=code)

    def render(request: Request, api: bool, template: str,
               fn: Callable[[Session], dict[str, Any]]) -> Response:
        with Session(engine) as s:
            data = fn(s)
        if api:
            return JSONResponse({"data": json.loads(json.dumps(data, default=str)),
                                 "indexer": status_json()})
        return page(request, template, data)

    @app.exception_handler(ExplorerError)
    async def explorer_error(request: Request, exc: ExplorerError) -> Response:
        code = 400 if isinstance(exc, BadQuery) else 404 if isinstance(exc, NotFound) else 500
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc), "status": code}, status_code=code)
        return page(request, "error.html", {"code": code, "message": str(exc)}, code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        msg = "no such page" if exc.status_code == 404 else str(exc.detail)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": msg, "status": exc.status_code}, status_code=exc.status_code)
        return page(request, "error.html", {"code": exc.status_code, "message": msg}, exc.status_code)

    @app.get("/api/status")
    def api_status() -> dict[str, Any]:
        return status_json()

    def both(path: str, template: str, build: Callable[..., Callable[[Session], dict[str, Any]]],
             ) -> None:
        """Register `path` (HTML) and `/api` + `path` (JSON) with the same data."""

        def html(request: Request, key: str) -> Response:
            return render(request, False, template, build(key))

        def api(request: Request, key: str) -> Response:
            return render(request, True, template, build(key))

        app.add_api_route(path, html, methods=["GET"], response_class=HTMLResponse)
        app.add_api_route("/api" + path, api, methods=["GET"])

    @app.get("/", response_class=HTMLResponse)
    def home_page(request: Request) -> Response:
        return render(request, False, "home.html", queries.home)

    @app.get("/api/home")
    def home_api(request: Request) -> Response:
        return render(request, True, "home.html", queries.home)

    tip_cache = TipCache()
    for path, template, fn in (("/network", "network.html", queries.network_page),
                               ("/nodes", "nodes.html", queries.nodes)):
        def html_view(request: Request, _t: str = template, _f: Any = fn,
                      _p: str = path) -> Response:
            return render(request, False, _t, lambda s: tip_cache.get(s, _p, _f))

        def api_view(request: Request, _t: str = template, _f: Any = fn,
                     _p: str = path) -> Response:
            return render(request, True, _t, lambda s: tip_cache.get(s, _p, _f))

        app.add_api_route(path, html_view, methods=["GET"], response_class=HTMLResponse)
        app.add_api_route("/api" + path, api_view, methods=["GET"])

    both("/block/{key}", "block.html",
         lambda k: lambda s: queries.block(s, queries.parse_number(k)))
    both("/tx/{key}", "tx.html",
         lambda k: lambda s: queries.transaction(s, queries.parse_hash(k, "transaction hash")))

    def address_data(k: str) -> Callable[[Session], dict[str, Any]]:
        def fn(s: Session) -> dict[str, Any]:
            addr = queries.parse_address(k)
            data = queries.address(s, addr)
            try:
                data["balance_wei"] = str(rpc.balance(addr)) if rpc else None
            except ChainError:
                data["balance_wei"] = None  # the node is down: show what is indexed
            return data
        return fn

    both("/address/{key}", "address.html", address_data)
    both("/node/{key}", "node.html", lambda k: lambda s: tip_cache.get(
        s, "/node/" + queries.parse_address(k), lambda s2: queries.node(s2, k.lower())))

    def request_data(k: str) -> Callable[[Session], dict[str, Any]]:
        return lambda s: queries.request(s, queries.parse_hash(k, "request id"), status.rpc_url,
                                         gateway_url)

    both("/request/{key}", "request.html", request_data)
    both("/epoch/{key}", "epoch.html",
         lambda k: lambda s: queries.epoch(s, queries.parse_number(k, "epoch")))
    both("/model/{key}", "model.html",
         lambda k: lambda s: queries.model(s, queries.parse_number(k, "model id")))

    @app.get("/request/{key}/receipt.json")
    def receipt(key: str) -> Response:
        rid = queries.parse_hash(key, "request id")
        with Session(engine) as s:
            data = request_data(key)(s)
            chain_id = indexed_chain_id(s)
        if chain_id is None:
            try:  # `veriplex audit` checks the receipt is for the chain it is pointed at
                chain_id = rpc.chain_id if rpc is not None else None
            except ChainError:
                chain_id = None
        body = json.dumps({"kind": "veriplex.explorer.request", "version": 1,
                           "chain_id": chain_id, "note": RECEIPT_NOTE, **data},
                          indent=2, default=str)
        return Response(body, media_type="application/json", headers={
            "Content-Disposition": f'attachment; filename="request-{rid}.json"'})

    @app.get("/search")
    def search(q: str = "") -> Response:
        with Session(engine) as s:
            return RedirectResponse(queries.search(s, q), status_code=303)

    @app.get("/api/search")
    def search_api(q: str = "") -> dict[str, Any]:
        with Session(engine) as s:
            return {"location": queries.search(s, q)}

    return app
