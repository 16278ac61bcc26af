"""The devnet process: JSON-RPC over HTTP and WebSocket (an ASGI app on uvicorn), start, stop.

`serve(options)` opens the store (taking its lock), builds the chain, starts uvicorn on the
requested address, deploys the contracts over its own endpoint unless the manifest is already
live, prints one ``ready`` line, and mines on a timer when a block time is set. SIGINT or SIGTERM
(once) stops accepting requests, seals any pending block, closes the database and releases the
lock. All chain work runs on the event loop's thread, one request at a time, so the chain needs
no locking; blocking work (the deployment, which calls back into this server) runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from devnet.accounts import dev_accounts
from devnet.chain import DevChain
from devnet.errors import (
    DevnetError,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    RpcError,
    StoreError,
)
from devnet.rpc import Methods, RawJson
from devnet.store import ChainStore
from devnet.subscriptions import Subscriptions, WsConnection

log = logging.getLogger("devnet")

MAX_BODY = 32 * 2**20
MAX_BATCH = 10_000
_JSON = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class ServeOptions:
    host: str
    port: int
    db: Path
    block_time: float
    chain_id: int
    mnemonic: str
    accounts: int
    balance_wei: int
    gas_limit: int
    deploy: bool
    manifest_path: Path


class JsonRpcApp:
    """ASGI app: POST / with a JSON-RPC request or batch, or the same over a WebSocket."""

    def __init__(self, methods: Methods, on_fatal: Callable[[str], None] | None = None) -> None:
        self.methods = methods
        self.on_fatal = on_fatal
        self.subscriptions = Subscriptions()
        methods.chain.listeners.append(self.subscriptions.on_block)

    def answer_one(self, req: Any, conn: WsConnection | None = None) -> str | None:
        rid: Any = None
        try:
            if not isinstance(req, dict):
                raise InvalidRequest("invalid request: expected a JSON-RPC request object")
            rid = req.get("id")
            if isinstance(rid, dict | list):
                rid = None
                raise InvalidRequest("invalid request: id must be a string, number or null")
            if req.get("jsonrpc") != "2.0":
                raise InvalidRequest(f"invalid request: jsonrpc must be \"2.0\", got {req.get('jsonrpc')!r}")
            method = req.get("method")
            if not isinstance(method, str):
                raise InvalidRequest("invalid request: method must be a string")
            if method in ("eth_subscribe", "eth_unsubscribe"):
                if conn is None:
                    raise MethodNotFound(f"{method} needs a WebSocket connection (ws://...)")
                if method == "eth_subscribe":
                    result = self.subscriptions.subscribe(conn, req.get("params"))
                else:
                    result = self.subscriptions.unsubscribe(conn, req.get("params"))
            else:
                result = self.methods.call(method, req.get("params"))
            body = result.text if isinstance(result, RawJson) else _JSON(result)
            if "id" not in req:
                return None  # a notification gets no answer
            return f'{{"jsonrpc":"2.0","id":{_JSON(rid)},"result":{body}}}'
        except RpcError as exc:
            return f'{{"jsonrpc":"2.0","id":{_JSON(rid)},"error":{_JSON(exc.to_json())}}}'
        except StoreError as exc:  # the database refused a write: memory and disk now differ
            log.critical("database failure, stopping: %s", exc)
            if self.on_fatal is not None:
                self.on_fatal(str(exc))
            err = {"code": -32603, "message": f"devnet database failure, the devnet is stopping: {exc}"}
            return f'{{"jsonrpc":"2.0","id":{_JSON(rid)},"error":{_JSON(err)}}}'
        except Exception as exc:  # a bug: answer it, log it, keep serving
            log.exception("internal error")
            err = {"code": -32603, "message": f"internal error: {type(exc).__name__}: {exc}"}
            return f'{{"jsonrpc":"2.0","id":{_JSON(rid)},"error":{_JSON(err)}}}'

    def answer(self, body: bytes, conn: WsConnection | None = None) -> str:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return _JSON({"jsonrpc": "2.0", "id": None,
                          "error": ParseError(f"parse error: {exc}").to_json()})
        if isinstance(payload, list):
            if not payload:
                return _JSON({"jsonrpc": "2.0", "id": None,
                              "error": InvalidRequest("invalid request: empty batch").to_json()})
            if len(payload) > MAX_BATCH:
                return _JSON({"jsonrpc": "2.0", "id": None, "error": InvalidRequest(
                    f"invalid request: batch of {len(payload)} exceeds {MAX_BATCH}").to_json()})
            parts = [a for a in (self.answer_one(p, conn) for p in payload) if a is not None]
            return "[" + ",".join(parts) + "]" if parts else ""
        return self.answer_one(payload, conn) or ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "websocket":
            await self._websocket(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _reply(send, 405, b'{"error":"the devnet speaks JSON-RPC: POST a request to /"}')
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                await _reply(send, 413, _JSON({"jsonrpc": "2.0", "id": None, "error": InvalidRequest(
                    f"invalid request: body larger than {MAX_BODY} bytes").to_json()}).encode())
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        text = self.answer(b"".join(chunks))
        await _reply(send, 200, text.encode())


    async def _websocket(self, receive: Any, send: Any) -> None:
        """JSON-RPC over a WebSocket: the same methods, plus eth_subscribe/eth_unsubscribe."""
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        conn = WsConnection(send)
        writer = asyncio.create_task(conn.run())
        try:
            while not writer.done():
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                body = text.encode() if text is not None else (message.get("bytes") or b"")
                if len(body) > MAX_BODY:
                    conn.push(_JSON({"jsonrpc": "2.0", "id": None, "error": InvalidRequest(
                        f"invalid request: message larger than {MAX_BODY} bytes").to_json()}))
                    continue
                reply = self.answer(body, conn)
                if reply:
                    conn.push(reply)
        finally:
            self.subscriptions.drop(conn)
            writer.cancel()


async def _reply(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _Server(uvicorn.Server):
    """uvicorn whose signal handling always lets our shutdown run, on the first signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield  # unlike uvicorn, never re-raise the signal afterwards: we exit cleanly
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _deploy(url: str, opts: ServeOptions, private_key: str) -> str:
    from contracts.deploy import deploy_all
    try:
        from contracts.deploy import manifest_is_live
    except ImportError:
        from contracts.manifest import manifest_is_live

    if manifest_is_live(url, opts.manifest_path):
        return f"contracts already deployed (manifest {opts.manifest_path})"
    deploy_all(rpc_url=url, private_key=private_key, manifest_path=opts.manifest_path)
    return f"contracts deployed (manifest {opts.manifest_path})"


async def _run(opts: ServeOptions, store: ChainStore, chain: DevChain) -> int:
    accounts = dev_accounts(opts.mnemonic, opts.accounts)
    fatal: list[str] = []
    app = JsonRpcApp(Methods(chain, accounts), on_fatal=fatal.append)
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning",
                            access_log=False, lifespan="on", timeout_graceful_shutdown=3,
                            timeout_keep_alive=30)
    server = _Server(config)
    busy = f"veriplex devnet: cannot listen on {opts.host}:{opts.port} (address in use or not " \
           "available); pass another --port, or 0 for a free one"
    if not _can_bind(opts.host, opts.port):  # a clear error rather than uvicorn's traceback
        print(busy, file=sys.stderr, flush=True)
        return 2
    # uvicorn binds itself: handing it a socket we bound loses TCP_NODELAY under uvloop (40 ms
    # delayed-ACK stalls per request)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            with contextlib.suppress(BaseException):
                await serving
            print(busy, file=sys.stderr, flush=True)
            return 2
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://{opts.host}:{port}"
    status = 0
    miner: asyncio.Task[None] | None = None
    try:
        if opts.block_time > 0:  # before deploying: with timed blocks the deployment needs them
            miner = asyncio.create_task(_mine_every(chain, opts.block_time, fatal))
        if opts.deploy:
            deploying = asyncio.create_task(asyncio.to_thread(_deploy, url, opts, accounts[0].private_key))
            await asyncio.wait({deploying, serving}, return_when=asyncio.FIRST_COMPLETED)
            if not deploying.done():
                return 0  # stopped while deploying
            try:
                print(f"veriplex devnet: {deploying.result()}", flush=True)
            except Exception as exc:
                print(f"veriplex devnet: deploying the contracts failed: {exc}", file=sys.stderr, flush=True)
                server.should_exit = True
                status = 1
                return status
        print(f"veriplex devnet: ready at {url} (chain id {opts.chain_id}, block "
              f"{chain.head.block_number}, db {opts.db}, manifest {opts.manifest_path})", flush=True)
        while not serving.done():
            if fatal:
                server.should_exit = True
                status = 1
            await asyncio.wait({serving}, timeout=0.2)
    finally:
        server.should_exit = True
        if miner is not None:
            miner.cancel()
        with contextlib.suppress(BaseException):
            await serving
    return status


def _can_bind(host: str, port: int) -> bool:
    if port == 0:
        return True
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError:
        return False
    return True


async def _mine_every(chain: DevChain, seconds: float, fatal: list[str]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            chain.mine()
        except StoreError as exc:
            log.critical("database failure, stopping: %s", exc)
            fatal.append(str(exc))
            return
        except Exception:
            log.exception("mining on the block timer failed")


def serve(opts: ServeOptions) -> int:
    """Run the devnet until SIGINT/SIGTERM. Returns the process exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        store = ChainStore(opts.db)
    except DevnetError as exc:
        print(f"veriplex devnet: {exc}", file=sys.stderr)
        return 2
    try:
        accounts = dev_accounts(opts.mnemonic, opts.accounts)
        chain = DevChain(store, chain_id=opts.chain_id, accounts=accounts,
                         balance_wei=opts.balance_wei, gas_limit=opts.gas_limit,
                         instant=opts.block_time <= 0)
        status = asyncio.run(_run(opts, store, chain))
        if status == 0:
            chain.close()
            print(f"veriplex devnet: stopped at block {chain.head.block_number}", flush=True)
        return status
    except DevnetError as exc:
        print(f"veriplex devnet: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
