"""Harness for the gateway's tests and benchmark (no pytest here): a 2-stage data-plane pipeline
of in-process stage servers on a background event loop, its operators registered on the
NodeRegistry, a `Gateway` built against a chain and served by uvicorn on a thread, and a TCP proxy
that can make the RPC endpoint hang; and the same parts as real processes — `StageProcess`
(`veriplex node serve`) and `GatewayProcess` (`veriplex gateway run`)."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from coincurve import PrivateKey

from contracts.apikeys import SignedApiKey
from contracts.client import Chain
from contracts.model_registry import ModelInfo
from contracts.rpc import Signer
from tests.support.chain import ETH

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
RANGES = [(0, 4), (4, 8)]
SERVING = re.compile(r"serving layers \[(\d+), (\d+)\) of .* on (\S+):(\d+) as (0x[0-9a-fA-F]{40})")
GATEWAY_READY = re.compile(r"gateway ready at (http://\S+)")


def rpc(url: str, method: str, *params: object) -> object:
    body = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                 "params": list(params)}, timeout=10).json()
    if "error" in body:
        raise RuntimeError(f"{method}: {body['error']}")
    return body["result"]


class DataPlane:
    """Stage servers for `ranges` (default RANGES) of the tiny model, in an event loop on a
    background thread; server `k`'s operator key is `bytes([key_base + k]) * 32`."""

    def __init__(self, model: Path, store_root: Path, gateways: list[str], chain_id: int = 31337,
                 ranges: list[tuple[int, int]] | None = None, key_base: int = 11):
        from coincurve import PrivateKey

        self.model, self.store_root, self.chain_id = model, store_root, chain_id
        self.ranges = list(ranges or RANGES)
        self.keys = [PrivateKey(bytes([k + key_base]) * 32) for k in range(len(self.ranges))]
        self.gateways = gateways
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.servers: list = []

    def start(self) -> DataPlane:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)
        return self

    async def _start(self) -> None:
        from node.dataplane.directory import StaticDirectory
        from node.dataplane.hidden_store import HiddenStateStore
        from node.dataplane.server import StageServer
        from node.runtime.executor import StageExecutor
        from node.runtime.shard import load_shard
        from protocol.identity import address_of_key

        directory = StaticDirectory([address_of_key(k) for k in self.keys], self.gateways)
        for k, ((a, b), key) in enumerate(zip(self.ranges, self.keys, strict=True)):
            store = HiddenStateStore(self.store_root / f"stage-{k}-{a}-{b}", 10**9, 600, 600)
            srv = StageServer(StageExecutor(load_shard(self.model, a, b)), store, key, directory,
                              self.chain_id, kv_budget_bytes=2**30, session_timeout_s=60)
            await srv.start()
            self.servers.append(srv)

    def stages(self) -> list:
        from protocol.identity import address_of_key
        from protocol.messages import StageAssignment

        return [StageAssignment(operator=address_of_key(k), host="127.0.0.1", port=s.port,
                                start=a, end=b)
                for (a, b), k, s in zip(self.ranges, self.keys, self.servers, strict=True)]

    def stage_args(self) -> list[str]:
        out = []
        for s in self.stages():
            out += ["--stage", f"{s.operator}@{s.host}:{s.port}/{s.start}-{s.end}"]
        return out

    def stop(self) -> None:
        async def _stop() -> None:
            for s in self.servers:
                await s.stop()

        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(30)

        async def _drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(_drain(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def register_operators(rpc_url: str, deployment: Path, dp: DataPlane) -> None:
    """Each stage's operator on the NodeRegistry (staked by a fresh owner): settlement pays them."""
    for s in dp.stages():
        register_operator(rpc_url, deployment, s.operator, f"tcp://{s.host}:{s.port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServedGateway:
    """A `Gateway` served by uvicorn on a thread; `.url` is the OpenAI base URL's root."""

    def __init__(self, gw, port: int) -> None:  # type: ignore[no-untyped-def]
        import uvicorn

        from gateway.app import create_app

        self.gw, self.port = gw, port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(gw), host="127.0.0.1", port=port,
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ServedGateway:
        self.gw.start()
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            time.sleep(0.02)
        raise RuntimeError("gateway did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.gw.stop()

    def openai(self, token: str, **kw):  # type: ignore[no-untyped-def]
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=token, max_retries=0, **kw)

    def async_openai(self, token: str, **kw):  # type: ignore[no-untyped-def]
        import openai

        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=token, max_retries=0, **kw)

    def wait_settled(self, timeout_s: float = 30.0) -> dict[str, int]:
        """Until every record is in a settled batch."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.gw.settler.nudge()
            c = self.gw.store.counts()
            if c.get("batches_failed", 0):
                from sqlalchemy import select
                from sqlalchemy.orm import Session

                from gateway.store import BatchRow

                with Session(self.gw.store.engine) as s:
                    errors = list(s.scalars(select(BatchRow.error).where(BatchRow.status == "failed")))
                raise AssertionError(f"a settlement batch was refused: {errors}")
            open_ = c.get("batches_built", 0) + c.get("batches_broadcast", 0)
            if c["requests_unbatched"] == 0 and open_ == 0:
                return c
            time.sleep(0.1)
        raise AssertionError(f"not settled in {timeout_s} s: {self.gw.store.counts()}, "
                             f"last error {self.gw.settler.last_error}")


def make_gateway(rpc_url: str, deployment: Path, signer: Signer, model: Path, info: ModelInfo,
                 stages: list, db_url: str, timeout_s: float = 10.0, **kw):  # type: ignore[no-untyped-def]
    from gateway.engine import ServedModel, StaticRouter
    from gateway.service import Gateway
    from gateway.store import Store

    chain = Chain.connect(rpc_url, deployment, signer=signer, timeout_s=timeout_s)
    opts = {"batch_size": 8, "batch_max_age_s": 0.3, "settle_tick_s": 0.1, **kw}
    return Gateway(chain, Store(db_url), ServedModel.load(info, model), StaticRouter(stages), **opts)


class BlackholeProxy:
    """A loopback TCP proxy in front of the RPC endpoint; `.blackhole = True` makes it swallow
    everything (requests time out, as with an RPC provider that hangs), `False` forwards again."""

    def __init__(self, upstream_url: str) -> None:
        hostport = upstream_url.split("//", 1)[1]
        self.upstream = (hostport.split(":")[0], int(hostport.split(":")[1]))
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.blackhole = False
        self.swallowed = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                conn.close()
                continue
            up.settimeout(None)
            threading.Thread(target=self._pipe, args=(conn, up), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, conn), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.blackhole:
                    self.swallowed += len(data)
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self.sock.close()


def _wait_line(proc: subprocess.Popen, log: Path, pattern: re.Pattern, timeout_s: float,
               what: str) -> re.Match:
    """The first match of `pattern` in a child's log, waiting for it; fails if the child exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = pattern.search(log.read_text(errors="replace"))
        if m:
            return m
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{what} did not start:\n{log.read_text()}")


def _terminate(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM, then SIGKILL after `grace_s`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class StageProcess:
    """`veriplex node serve --layers A:B` as a child process with its own operator key."""

    def __init__(self, model: Path, layers: tuple[int, int], key: bytes, allow: list[str],
                 gateway: str, workdir: Path) -> None:
        from protocol.identity import address_of_key

        workdir.mkdir(parents=True, exist_ok=True)
        kf = workdir / "operator.key"
        kf.touch(mode=0o600)
        kf.write_text(key.hex())
        self.address = address_of_key(PrivateKey(key))
        env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
        env.update(VERIPLEX_HOME=str(workdir), PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE")
        argv = [sys.executable, "-m", "veriplex.cli", "node", "serve", "--model", str(model),
                "--layers", f"{layers[0]}:{layers[1]}", "--port", "0", "--operator-key-file",
                str(kf), "--directory", "static", "--gateway", gateway, "--store-dir",
                str(workdir / "store"), "--threads", "1", "--no-verify"]
        for a in allow:
            argv += ["--allow", a]
        self.log = workdir / "serve.log"
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
        self.layers = layers
        self.port = 0

    def wait_ready(self, timeout_s: float = 90) -> StageProcess:
        self.port = int(_wait_line(self.proc, self.log, SERVING, timeout_s, f"stage {self.layers}")[4])
        return self

    def assignment(self):  # type: ignore[no-untyped-def]
        from protocol.messages import StageAssignment

        return StageAssignment(operator=self.address, host="127.0.0.1", port=self.port,
                               start=self.layers[0], end=self.layers[1])

    def stop(self) -> None:
        _terminate(self.proc, 15)


def register_operator(anvil_url: str, deployment: Path, operator: str,
                      endpoint: str = "http://127.0.0.1:1") -> None:
    """The operator on the NodeRegistry, staked by a fresh owner (settlement pays it); anvil only
    (the owner is funded with `anvil_setBalance`)."""
    from contracts.node_registry import Hardware

    owner = Signer.from_key("0x" + secrets.token_hex(32))
    rpc(anvil_url, "anvil_setBalance", owner.address, hex(10 * ETH))
    chain = Chain.connect(anvil_url, deployment, signer=owner)
    chain.node_registry.register(operator, endpoint,
                                 Hardware("cpu", 1024, 1000, 10, 1000, "local"), 2 * ETH)


class GatewayProcess:
    """`veriplex gateway run` as a child process on a fixed pipeline (`--stage` per assignment),
    the gateway key being dev account `dev_account` of the devnet mnemonic; `.url` once ready.
    `settings` are extra `VERIPLEX_GATEWAY__*` values (e.g. {"batch_max_age_s": "1"})."""

    def __init__(self, rpc_url: str, deployment: Path, model: Path, model_id: int, stages: list,
                 dev_account: int, workdir: Path, settings: dict[str, str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
        env.update(VERIPLEX_HOME=str(workdir), PYTHONUNBUFFERED="1")
        env.update({f"VERIPLEX_GATEWAY__{k.upper()}": v for k, v in (settings or {}).items()})
        argv = [sys.executable, "-m", "veriplex.cli", "--rpc-url", rpc_url, "--manifest",
                str(deployment), "gateway", "run", "--checkpoint", str(model), "--model-id",
                str(model_id), "--port", "0", "--dev-account", str(dev_account), "--db-url",
                f"sqlite:///{workdir / 'gateway.sqlite'}"]
        for s in stages:
            argv += ["--stage", f"{s.operator}@{s.host}:{s.port}/{s.start}-{s.end}"]
        self.log = workdir / "gateway.log"
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
        self.url = ""

    def wait_ready(self, timeout_s: float = 90) -> GatewayProcess:
        self.url = _wait_line(self.proc, self.log, GATEWAY_READY, timeout_s, "the gateway")[1]
        return self

    def wait_settled(self, timeout_s: float = 60.0) -> dict[str, int]:
        """Until `/status` shows every record in a settled batch."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            st = httpx.get(self.url + "/status", timeout=10).json()["store"]
            if st.get("batches_failed", 0):
                raise AssertionError(f"a settlement batch was refused: {st}")
            if st["requests_unbatched"] == 0 and not st.get("batches_built", 0) \
                    and not st.get("batches_broadcast", 0):
                return st
            time.sleep(0.2)
        raise AssertionError(f"not settled in {timeout_s} s")

    def stop(self) -> None:
        _terminate(self.proc, 30)


GATEWAY_DEV_INDEX = 3


@dataclass
class Client:
    address: str
    key: str
    signed: SignedApiKey
    deposit_wei: int

    @property
    def token(self) -> str:
        return self.signed.token()
