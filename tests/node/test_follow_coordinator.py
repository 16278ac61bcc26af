"""Following the coordinator: the pure decision (current range + assignment → keep / load / idle)
and real stage servers that swap shards as epochs change, checked by greedy generation through
the data plane against `generate_local`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from coincurve import PrivateKey

from node.dataplane.follower import Action, Follower, decide
from node.runtime.executor import StageExecutor, generate_local
from node.runtime.shard import load_shard
from protocol.messages import AssignmentResponse

OP = "0x" + "11" * 20
PROMPT = [5, 17, 99, 3, 250, 100, 42]
NEW = 6


def assignment(epoch: int, rng: tuple[int, int] | None, standby: bool = False) -> AssignmentResponse:
    a, b = rng or (0, 0)
    return AssignmentResponse(operator=OP, epoch=epoch, model_id=1, assigned=rng is not None,
                              layer_start=a, layer_end=b, standby=standby)


def test_a_first_assignment_loads_its_range() -> None:
    d = decide(None, assignment(1, (0, 4)))
    assert (d.action, d.layers, d.epoch) == (Action.LOAD, (0, 4), 1)


def test_the_same_range_in_a_new_epoch_is_kept() -> None:
    d = decide((0, 4), assignment(2, (0, 4)))
    assert (d.action, d.layers, d.epoch) == (Action.KEEP, (0, 4), 2)


def test_a_changed_range_loads_the_new_shard() -> None:
    assert decide((0, 4), assignment(3, (2, 8))).layers == (2, 8)
    assert decide((0, 4), assignment(3, (2, 8))).action is Action.LOAD


def test_being_unassigned_or_standby_means_idle() -> None:
    assert decide((0, 4), assignment(4, None)).action is Action.IDLE
    assert decide((0, 4), assignment(4, (0, 4), standby=True)).action is Action.IDLE
    assert decide(None, assignment(4, None)).action is Action.KEEP  # already idle


def test_no_assignment_yet_changes_nothing() -> None:
    assert decide(None, None).action is Action.IDLE
    assert decide((1, 3), None) == decide((1, 3), None)
    assert decide((1, 3), None).action is Action.KEEP


def test_serve_takes_exactly_one_of_layers_or_coordinator(tmp_path: Path, tiny_llama: Path) -> None:
    from click.testing import CliRunner

    from veriplex.cli import cli

    base = ["node", "serve", "--model", str(tiny_llama), "--store-dir", str(tmp_path / "store")]
    env = {"VERIPLEX_HOME": str(tmp_path / "home")}
    for extra in ([], ["--layers", "0:4", "--coordinator", "http://127.0.0.1:1"]):
        r = CliRunner().invoke(cli, base + extra, env=env)
        assert r.exit_code != 0
        assert "exactly one of --layers START:END or --coordinator URL" in r.output


def _local(model: Path, ranges: list[tuple[int, int]]) -> list[int]:
    return generate_local([StageExecutor(load_shard(model, a, b)) for a, b in ranges], PROMPT,
                          NEW).tokens


@pytest.mark.timeout(120)
def test_followers_swap_shards_across_epochs_and_keep_greedy_tokens_exact(
        tiny_llama: Path, tmp_path: Path) -> None:
    import secrets

    from node.dataplane.client import PipelineClient
    from node.dataplane.directory import StaticDirectory
    from node.dataplane.hidden_store import HiddenStateStore
    from node.dataplane.server import StageServer
    from protocol.identity import address_of_key
    from protocol.messages import PipelineRequest, StageAssignment

    keys = [PrivateKey(bytes([k + 1]) * 32) for k in range(2)]
    gw = PrivateKey(b"\x77" * 32)
    directory = StaticDirectory([address_of_key(k) for k in keys], [address_of_key(gw)])
    said: list[str] = []

    def builder(i: int):  # type: ignore[no-untyped-def]
        def build(rng: tuple[int, int], port: int) -> StageServer:
            store = HiddenStateStore(tmp_path / f"s{i}-{rng[0]}-{rng[1]}", 10**8, 600, 600)
            return StageServer(StageExecutor(load_shard(tiny_llama, *rng)), store, keys[i],
                               directory, 31337, port=port)
        return build

    async def generate(fs: list[Follower]) -> list[int]:
        stages = [StageAssignment(operator=address_of_key(keys[i]), host="127.0.0.1",
                                  port=f.server.port, start=f.layers[0], end=f.layers[1])
                  for i, f in enumerate(fs) if f.server is not None]
        req = PipelineRequest(chain_id=31337, request_id="0x" + secrets.token_bytes(32).hex(),
                              gateway=address_of_key(gw), stages=stages, prompt_len=len(PROMPT),
                              max_new_tokens=NEW)
        return (await PipelineClient(gw, 31337).generate(req, PROMPT)).tokens

    async def scenario() -> None:
        fs = [Follower(builder(i), 0, said.append) for i in range(2)]
        await fs[0].apply(assignment(1, (0, 3)))
        await fs[1].apply(assignment(1, (3, 8)))
        assert fs[0].layer_us > 0 and fs[1].load()["layer_us"] > 0
        assert await generate(fs) == _local(tiny_llama, [(0, 3), (3, 8)])
        port0 = fs[0].server.port
        await fs[0].apply(assignment(2, (0, 5)))
        await fs[1].apply(assignment(2, (5, 8)))
        assert fs[0].server.port == port0  # the same endpoint serves the new shard
        assert await generate(fs) == _local(tiny_llama, [(0, 5), (5, 8)])
        await fs[1].apply(assignment(3, None))
        await fs[0].apply(assignment(3, (0, 8)))
        assert fs[1].server is None and fs[1].load() == {}
        assert await generate(fs) == _local(tiny_llama, [(0, 8)])
        for f in fs:
            await f._retire()

    asyncio.run(scenario())
    assert any(s.startswith("idle: unassigned at epoch 3") for s in said)
    assert sum("serving layers" in s for s in said) == 5


@pytest.mark.timeout(120)
def test_a_range_change_drains_the_request_in_flight_before_swapping(
        tiny_llama: Path, tmp_path: Path) -> None:
    import secrets
    import time

    from node.dataplane.client import PipelineClient
    from node.dataplane.directory import StaticDirectory
    from node.dataplane.hidden_store import HiddenStateStore
    from node.dataplane.server import StageServer
    from protocol.identity import address_of_key
    from protocol.messages import PipelineRequest, StageAssignment

    keys = [PrivateKey(bytes([k + 1]) * 32) for k in range(2)]
    gw = PrivateKey(b"\x77" * 32)
    directory = StaticDirectory([address_of_key(k) for k in keys], [address_of_key(gw)])
    long = 200
    busy_at_retire: list[int] = []

    class Watched(Follower):
        async def _retire(self) -> None:
            busy_at_retire.append(0 if self.server is None else len(self.server.sessions.sessions))
            await super()._retire()

    def builder(i: int):  # type: ignore[no-untyped-def]
        def build(rng: tuple[int, int], port: int) -> StageServer:
            store = HiddenStateStore(tmp_path / f"d{i}-{rng[0]}-{rng[1]}", 10**8, 600, 600)
            return StageServer(StageExecutor(load_shard(tiny_llama, *rng)), store, keys[i],
                               directory, 31337, port=port)
        return build

    async def scenario() -> tuple[list[int], float, list[tuple[int, int] | None]]:
        fs = [Watched(builder(i), 0, lambda _: None, drain_s=20) for i in range(2)]
        await fs[0].apply(assignment(1, (0, 3)))
        await fs[1].apply(assignment(1, (3, 8)))
        stages = [StageAssignment(operator=address_of_key(keys[i]), host="127.0.0.1",
                                  port=f.server.port, start=f.layers[0], end=f.layers[1])
                  for i, f in enumerate(fs)]
        req = PipelineRequest(chain_id=31337, request_id="0x" + secrets.token_bytes(32).hex(),
                              gateway=address_of_key(gw), stages=stages, prompt_len=len(PROMPT),
                              max_new_tokens=long)
        first = asyncio.Event()
        gen = asyncio.ensure_future(PipelineClient(gw, 31337).generate(
            req, PROMPT, on_token=lambda i, _: first.set()))
        await first.wait()
        t0 = time.monotonic()
        await asyncio.gather(fs[0].apply(assignment(2, (0, 5))), fs[1].apply(assignment(2, (5, 8))))
        swap_s = time.monotonic() - t0
        tokens = (await gen).tokens
        layers = [f.layers for f in fs]
        for f in fs:
            await f._retire()
        return tokens, swap_s, layers

    tokens, swap_s, layers = asyncio.run(scenario())
    assert tokens == generate_local(
        [StageExecutor(load_shard(tiny_llama, a, b)) for a, b in [(0, 3), (3, 8)]], PROMPT,
        long).tokens  # the old pipeline finished its request: nothing was dropped
    assert layers == [(0, 5), (5, 8)]
    assert any(busy_at_retire[2:4])  # the swap really met the request still running
    assert swap_s < 20  # the drain ended when the request did, not at the timeout


# ── against a real devnet and a `veriplex coordinator run` subprocess ───────────────────────────
def _lines_of(proc, sink: list[str]) -> None:  # type: ignore[no-untyped-def]
    for line in proc.stdout:
        sink.append(line.rstrip())


def _wait_line(lines: list[str], pattern: str, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    import re
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in list(lines):
            m = re.search(pattern, line)
            if m:
                return m
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(lines[-30:]))


def _stop(proc) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.timeout(180)
def test_workers_follow_the_epoch_the_coordinator_publishes_on_the_devnet(
        tiny_llama: Path, tmp_path: Path) -> None:
    import hashlib
    import json
    import os
    import secrets
    import subprocess
    import sys
    import threading

    from eth_account import Account

    from contracts.client import Chain, dev_key
    from contracts.node_registry import Hardware
    from contracts.rpc import Signer
    from devnet.process import running_devnet
    from node.dataplane.client import PipelineClient
    from protocol.identity import address_of_key
    from protocol.messages import PipelineRequest, StageAssignment
    from protocol.settings import DEV_MNEMONIC
    from scheduler.model import ModelSpec

    # The planner sees a model too big for one 1400 MiB node (see tests/scheduler_service), so
    # each replica is a two-stage pipeline; the checkpoint served is the tiny one with as many layers.
    spec = ModelSpec(name="follow-test", layers=8, hidden=2048, heads=16, kv_heads=8,
                     intermediate=5632, vocab=32000)
    hardware = Hardware("RTX-test", 1400, 80_000, 900, 1_000, "eu-west")
    keys = [hashlib.sha256(f"veriplex follower test operator {i}".encode()).digest() for i in range(2)]
    gw = PrivateKey(b"\x77" * 32)
    procs: list[subprocess.Popen[str]] = []
    outs: list[list[str]] = []

    def spawn(args: list[str], env: dict[str, str]) -> list[str]:
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        procs.append(p)
        lines: list[str] = []
        outs.append(lines)
        threading.Thread(target=_lines_of, args=(p, lines), daemon=True).start()
        return lines

    with running_devnet(tmp_path / "devnet") as dn:
        admin = Signer.from_key(dev_key(0, DEV_MNEMONIC))
        chain = Chain.connect(dn.url, dn.manifest_path, signer=admin)
        model_id = chain.model_registry.register_model(spec.name, spec.layers, spec.hidden,
                                                       b"\x01" * 32, b"\x02" * 32, 1, 1)
        (tmp_path / "model.json").write_text(json.dumps({**spec.to_dict(), "model_id": model_id}))
        for i, key in enumerate(keys):
            owner = Signer(Account.create())
            chain.transfer(owner.address, 5 * 10**18)
            chain.node_registry.register(
                address_of_key(PrivateKey(key)), f"http://127.0.0.1:{9200 + i}", hardware,
                stake_wei=chain.node_registry.params().min_stake_wei, sender=owner)
        base = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
        env = {**base, "VERIPLEX_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1",
               "OMP_WAIT_POLICY": "PASSIVE", "VERIPLEX_COORDINATOR__TICK_S": "0.2",
               "VERIPLEX_COORDINATOR__REGISTRY_POLL_S": "0.5",
               "VERIPLEX_COORDINATOR__HEARTBEAT_TIMEOUT_S": "3"}
        root = [sys.executable, "-m", "veriplex.cli", "--rpc-url", dn.url,
                "--manifest", str(dn.manifest_path)]
        try:
            coord = spawn(root + ["coordinator", "run", "--dev-account", "0", "--model-spec",
                                  str(tmp_path / "model.json"), "--port", "0"], env)
            url = _wait_line(coord, r"coordinator ready at (http://\S+) ", 60, "the coordinator")[1]
            workers = []
            for i, key in enumerate(keys):
                kf = tmp_path / f"op{i}.key"
                kf.touch(mode=0o600)
                kf.write_text(key.hex())
                workers.append(spawn(root + [
                    "node", "serve", "--model", str(tiny_llama), "--coordinator", url,
                    "--model-id", str(model_id), "--heartbeat-s", "0.3", "--port", "0",
                    "--operator-key-file", str(kf), "--gateway", address_of_key(gw),
                    "--store-dir", str(tmp_path / f"store{i}"), "--threads", "1"], env))
            got = [_wait_line(w, r"serving layers \[(\d+), (\d+)\) at epoch (\d+) on "
                                 r"127\.0\.0\.1:(\d+) as (0x[0-9a-fA-F]{40})", 60, f"worker {i}")
                   for i, w in enumerate(workers)]
            ranges = sorted((int(m[1]), int(m[2]), int(m[4]), m[5]) for m in got)
            assert [(a, b) for a, b, _, _ in ranges][0][0] == 0 and ranges[-1][1] == spec.layers
            assert all(x[1] == y[0] for x, y in zip(ranges, ranges[1:], strict=False))
            epochs = {int(m[3]) for m in got}
            on_chain = {(e.operator.lower(), e.layer_start, e.layer_end)
                        for e in chain.scheduler.epoch_entries(max(epochs))}
            assert {(op.lower(), a, b) for a, b, _, op in ranges} <= on_chain
            stages = [StageAssignment(operator=op, host="127.0.0.1", port=port, start=a, end=b)
                      for a, b, port, op in ranges]
            req = PipelineRequest(chain_id=chain.chain_id,
                                  request_id="0x" + secrets.token_bytes(32).hex(),
                                  gateway=address_of_key(gw), stages=stages,
                                  prompt_len=len(PROMPT), max_new_tokens=NEW)
            gen = asyncio.run(PipelineClient(gw, chain.chain_id).generate(req, PROMPT))
            assert gen.tokens == _local(tiny_llama, [(a, b) for a, b, _, _ in ranges])
        finally:
            for p in reversed(procs):
                _stop(p)
    for lines in outs:
        assert "Traceback" not in "\n".join(lines), "\n".join(lines[-40:])
