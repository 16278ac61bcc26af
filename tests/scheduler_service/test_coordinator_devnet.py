"""The coordinator against a real devnet: `veriplex coordinator run` as a subprocess, nodes
registered on the NodeRegistry with their own funded owner wallets, heartbeats over HTTP, epochs
read back from the Scheduler contract."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from contracts.client import Chain, dev_key
from contracts.deploy import deploy_all
from contracts.node_registry import Hardware
from contracts.rpc import Signer
from devnet.process import running_anvil, running_devnet
from node.coordinator import HeartbeatClient, HeartbeatLoop
from protocol.api_errors import ModelNotServed
from protocol.messages import (
    AssignmentResponse,
    Heartbeat,
    RouteRequest,
    sign_heartbeat,
)
from protocol.settings import DEV_MNEMONIC
from scheduler.model import Plan
from scheduler.schema import parse_snapshot
from scheduler.service.chain_io import current_epoch_matching
from scheduler.service.state import Publication
from tests.support.coordinator import MODEL, REGION, VRAM_MIB, Operator, beat, operator, wait_for

READY = re.compile(r"coordinator ready at (http://\S+) ")
HEARTBEAT_TIMEOUT_S = 2.5
BEAT_EVERY_S = 0.4
REPORT_SILENCE_S = 1.5  # below the timeout, above three beats: a report can only be faster
HARDWARE = Hardware("RTX-test", VRAM_MIB, 80_000, 900, 1_000, REGION)


@dataclass
class Cluster:
    url: str
    chain: Chain
    model_id: int
    ops: list[Operator]
    owners: list[Signer]
    alive: set[str] = field(default_factory=set)
    rejected: list[int] = field(default_factory=list)

    def status(self) -> dict:  # type: ignore[type-arg]
        r = httpx.get(f"{self.url}/status", timeout=5)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def register(self, i: int) -> None:
        self.chain.node_registry.register(
            self.ops[i].address, f"http://127.0.0.1:{9100 + i}", HARDWARE,
            stake_wei=self.chain.node_registry.params().min_stake_wei, sender=self.owners[i])


def serving(a: AssignmentResponse | dict | None) -> dict[str, int]:  # type: ignore[type-arg]
    """The heartbeat fields of a worker that loaded assignment `a` at once."""
    if isinstance(a, dict):
        a = AssignmentResponse.model_validate(a)
    if a is None or not a.assigned:
        return {}
    return {"epoch": a.epoch, "layer_start": a.layer_start, "layer_end": a.layer_end}


def _pump(cl: Cluster, stop: threading.Event) -> None:
    """Heartbeats of workers that load what they are assigned at once: each beat confirms the
    range the previous acknowledgement assigned."""
    held: dict[str, dict[str, int]] = {}
    with httpx.Client(timeout=5) as http:
        while not stop.wait(BEAT_EVERY_S):
            for op in list(cl.ops):
                if op.address not in cl.alive:
                    held.pop(op.address, None)
                    continue
                body = beat(op, time.time(), chain_id=cl.chain.chain_id, layer_us=0,
                            **held.get(op.address, {}))
                try:
                    r = http.post(f"{cl.url}/heartbeat", content=body.model_dump_json())
                except httpx.HTTPError:
                    continue
                if r.status_code != 200:
                    cl.rejected.append(r.status_code)
                else:
                    held[op.address] = serving(r.json().get("assignment"))


def _all_confirmed(st: dict[str, Any]) -> bool:
    published = {r[0] for r in st["published_rows"]}
    confirmed = {n["operator"] for n in st["nodes"] if n["confirmed"]}
    return bool(published) and published <= confirmed


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"coordinator pid {proc.pid} ignored SIGTERM") from None


def _coordinator_cmd(url: str, manifest: Path, spec: Path, dev_account: int) -> list[str]:
    return [sys.executable, "-m", "veriplex.cli", "--rpc-url", url, "--manifest", str(manifest),
            "coordinator", "run", "--dev-account", str(dev_account), "--model-spec", str(spec),
            "--port", "0"]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
    env.update(VERIPLEX_HOME=str(home), PYTHONUNBUFFERED="1",
               VERIPLEX_COORDINATOR__HEARTBEAT_TIMEOUT_S=str(HEARTBEAT_TIMEOUT_S),
               VERIPLEX_COORDINATOR__REPORT_SILENCE_S=str(REPORT_SILENCE_S),
               VERIPLEX_COORDINATOR__REGISTRY_POLL_S="0.5",
               VERIPLEX_COORDINATOR__TICK_S="0.2",
               VERIPLEX_COORDINATOR__REBALANCE_INTERVAL_S="3600")
    return env


@contextmanager
def _anvil(home: Path) -> Iterator[tuple[str, Path, Path]]:
    """anvil with the contracts deployed by dev account 0 (as the devnet does)."""
    with running_anvil(home) as anvil:
        manifest = home / "deployments" / "anvil.json"
        deploy_all(anvil.url, dev_key(0, DEV_MNEMONIC), manifest)
        yield anvil.url, manifest, home


@pytest.fixture(scope="module",
                params=["devnet", pytest.param("anvil", marks=pytest.mark.anvil)])
def devnet(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """The embedded devnet, and anvil: the coordinator must not care which EVM node it talks to."""
    home = tmp_path_factory.mktemp(f"coord-{request.param}")
    if request.param == "anvil":
        with _anvil(home) as handle:
            yield handle
        return
    with running_devnet(home) as dn:
        yield dn.url, dn.manifest_path, home


@pytest.fixture(scope="module")
def cluster(devnet: tuple[str, Path, Path]) -> Iterator[Cluster]:
    url, manifest, home = devnet
    admin = Signer.from_key(dev_key(0, DEV_MNEMONIC))
    chain = Chain.connect(url, manifest, signer=admin)
    assert chain.scheduler.coordinator() == admin.address  # deploy_all gave dev account 0 the role
    model_id = chain.model_registry.register_model(
        MODEL.name, MODEL.layers, MODEL.hidden, b"\x01" * 32, b"\x02" * 32, 1, 1)
    spec = home / "model.json"
    spec.write_text(json.dumps({**MODEL.to_dict(), "model_id": model_id}))
    ops = [operator(i) for i in range(6)]  # 4 at start, 1 newcomer, 1 with bogus hardware
    owners = [Signer(Account.create()) for _ in ops]
    for owner in owners:  # all funding from dev account 0 happens before the coordinator uses it
        chain.transfer(owner.address, 5 * 10**18)
    cl = Cluster("", chain, model_id, ops, owners)
    for i in range(4):
        cl.register(i)
    proc = subprocess.Popen(_coordinator_cmd(url, manifest, spec, 0), env=_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            m = READY.search(line)
            if m and not found.is_set():
                cl.url = m.group(1)
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stop = threading.Event()
    pump = threading.Thread(target=_pump, args=(cl, stop), daemon=True)
    try:
        if not found.wait(60):
            raise AssertionError("coordinator never became ready:\n" + "\n".join(lines[-30:]))
        cl.alive.update(op.address for op in ops[:4])
        pump.start()
        wait_for(lambda: cl.status()["epoch"] >= 1, 20, "the first epoch")
        # the pumped workers confirm their ranges on the beat after their assignment: routes
        # name only confirmed stages, so the tests start once every published one is
        wait_for(lambda: _all_confirmed(cl.status()), 20, "every published stage confirmed")
        yield cl
    finally:
        stop.set()
        if pump.is_alive():
            pump.join(timeout=5)
        _stop(proc)
        reader.join(timeout=2)
        assert "Traceback" not in "\n".join(lines), "\n".join(lines[-40:])


def _entries(chain: Chain, epoch: int) -> set[tuple[str, int, int, int]]:
    return {(e.operator, e.model_id, e.layer_start, e.layer_end)
            for e in chain.scheduler.epoch_entries(epoch)}


def _rows(status: dict) -> set[tuple[str, int, int, int]]:  # type: ignore[type-arg]
    return {tuple(r) for r in status["published_rows"]}  # type: ignore[misc]


def test_the_coordinator_publishes_an_epoch_that_reads_back_from_the_chain(
        cluster: Cluster) -> None:
    st = cluster.status()
    epoch, chain = st["epoch"], cluster.chain
    assert chain.scheduler.epoch() == epoch
    assert _entries(chain, epoch) == _rows(st)
    assert "0x" + chain.scheduler.snapshot_hash(epoch).hex() == st["snapshot_hash"]
    doc = httpx.get(f"{cluster.url}/snapshot/{st['snapshot_hash']}", timeout=5)
    assert "0x" + hashlib.sha256(doc.content).hexdigest() == st["snapshot_hash"]
    assert {n["id"] for n in doc.json()["nodes"]} >= {r[0] for r in _rows(st)}
    # a restarted coordinator adopts the chain's epoch when it holds exactly its allocation
    snap = parse_snapshot(doc.json())
    rows = tuple(sorted(_rows(st)))
    same = Publication(snap, Plan(model=snap.model, replicas=()), rows, st["snapshot_hash"], "")
    assert current_epoch_matching(chain, same) == epoch
    op0, m0, a0, b0 = rows[0]
    moved = replace(same, rows=((op0, m0, a0, b0 - 1),) + rows[1:])
    assert current_epoch_matching(chain, moved) == 0
    for op, model_id, start, end in _rows(st):
        on_chain = chain.scheduler.current_assignment(op)
        assert on_chain is not None and (on_chain.layer_start, on_chain.layer_end) == (start, end)
        told = httpx.get(f"{cluster.url}/assignment/{op}", timeout=5).json()
        assert (told["assigned"], told["epoch"], told["layer_start"], told["layer_end"],
                told["model_id"]) == (True, epoch, start, end, model_id)


def test_route_answers_are_contiguous_pipelines_of_published_operators(cluster: Cluster) -> None:
    reg = cluster.chain.node_registry
    endpoints = {n.operator: n.endpoint for n in reg.nodes()}
    for prompt, out in ((1, 1), (64, 32), (512, 128)):
        r = httpx.post(f"{cluster.url}/route", timeout=5, json={
            "model_id": cluster.model_id, "prompt_tokens": prompt, "output_tokens": out})
        assert r.status_code == 200, r.text
        ans = r.json()
        rows = _entries(cluster.chain, ans["epoch"])
        stages = ans["stages"]
        assert stages[0]["start"] == 0 and stages[-1]["end"] == MODEL.layers
        for a, b in zip(stages, stages[1:], strict=False):
            assert a["end"] == b["start"]
        for s in stages:
            held = [(a, b) for op, _, a, b in rows if op == s["operator"]]
            assert held and held[0][0] <= s["start"] < s["end"] <= held[0][1]
            assert s["endpoint"] == endpoints[s["operator"]]
        assert ans["expected_ms"] > 0


def test_bad_heartbeats_get_a_4xx_with_a_clear_message_and_the_service_keeps_serving(
        cluster: Cluster) -> None:
    op, now, cid = cluster.ops[0], time.time(), cluster.chain.chain_id
    good = beat(op, now, chain_id=cid)
    doc = json.loads(good.model_dump_json())
    forged = {**doc, "heartbeat": {**doc["heartbeat"], "queue_ms": 1}}
    out_of_range = {**doc, "heartbeat": {**doc["heartbeat"], "active": -3}}
    stranger = operator(42)
    cases = [
        (b"{not json", 422, "malformed", "json"),
        (b"", 422, "malformed", "json"),
        (json.dumps(out_of_range).encode(), 422, "malformed", "active"),
        (json.dumps(forged).encode(), 401, "bad_signature", "signed by"),
        (beat(stranger, now, chain_id=cid).model_dump_json().encode(), 403, "unknown_operator",
         stranger.address),
        (beat(op, now, chain_id=cid + 1).model_dump_json().encode(), 400, "wrong_chain",
         "chain id"),
        (beat(op, now - 600, chain_id=cid).model_dump_json().encode(), 400, "stale", "clock"),
        (sign_heartbeat(op.key, Heartbeat(chain_id=cid, operator=op.address, seq=1,
                                          timestamp_ms=int(now * 1000))).model_dump_json()
         .encode(), 409, "replay", "seq 1"),
        (b"x" * 70_000, 422, "malformed", "bytes"),
    ]
    with httpx.Client(timeout=5) as http:
        # one accepted beat first, so the seq-1 replay below is a replay even if the pump has
        # not beaten for this operator yet (the first epoch can land within one pump interval)
        # (fresh, and again if the pump's own beat for this operator overtook it meanwhile)
        for _ in range(5):
            first = http.post(f"{cluster.url}/heartbeat",
                              content=beat(op, time.time(), chain_id=cid).model_dump_json())
            if first.status_code != 409:
                break
        assert first.status_code == 200, first.text
        for body, status, code, text in cases:
            r = http.post(f"{cluster.url}/heartbeat", content=body)
            assert r.status_code == status, (body[:80], r.text)
            err = r.json()["error"]
            assert err["code"] == code and text.lower() in err["message"].lower(), err
        fresh = beat(op, time.time(), chain_id=cid)  # the pump has moved seq on meanwhile
        ok = http.post(f"{cluster.url}/heartbeat", content=fresh.model_dump_json())
        assert ok.status_code == 200, ok.text
        assert ok.json()["accepted"] and ok.json()["assignment"]["operator"] == op.address
        assert http.get(f"{cluster.url}/assignment/not-an-address").status_code == 422
        bad_route = http.post(f"{cluster.url}/route", json={"model_id": cluster.model_id,
                                                            "prompt_tokens": 0})
        assert bad_route.status_code == 422 and "prompt_tokens" in bad_route.text
        other = http.post(f"{cluster.url}/route", json={"model_id": cluster.model_id + 7})
        assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_served"
    assert cluster.status()["epoch"] >= 1


def test_a_node_that_stops_heartbeating_is_evicted_in_a_new_epoch_and_rejoins_when_back(
        cluster: Cluster) -> None:
    chain, victim = cluster.chain, cluster.ops[1].address
    start = wait_for(lambda: (s := cluster.status()) and victim in {r[0] for r in _rows(s)}
                     and s, 15, "the victim to be assigned")
    cluster.alive.discard(victim)
    evicted = wait_for(lambda: (s := cluster.status())["epoch"] > start["epoch"] and s,
                       HEARTBEAT_TIMEOUT_S + 10, "an epoch without the silent node")
    assert victim not in {r[0] for r in _rows(evicted)}
    assert chain.scheduler.current_assignment(victim) is None
    assert _entries(chain, evicted["epoch"]) == _rows(evicted)
    r = httpx.post(f"{cluster.url}/route", timeout=5, json={"model_id": cluster.model_id})
    assert r.status_code == 200 and victim not in {s["operator"] for s in r.json()["stages"]}
    cluster.alive.add(victim)
    back = wait_for(lambda: (s := cluster.status()) and victim in {r[0] for r in _rows(s)}
                    and s, 10, "the node to rejoin")
    assert back["epoch"] > evicted["epoch"]
    assert chain.scheduler.current_assignment(victim) is not None


def test_a_newly_registered_node_joins_in_a_new_epoch(cluster: Cluster) -> None:
    newcomer = cluster.ops[4].address
    before = cluster.status()["epoch"]
    cluster.alive.add(newcomer)
    cluster.register(4)
    joined = wait_for(lambda: (s := cluster.status()) and newcomer in {r[0] for r in _rows(s)}
                      and s, 10, "the newcomer in an epoch")
    assert joined["epoch"] > before
    assert _entries(cluster.chain, joined["epoch"]) == _rows(joined)


def test_a_worker_loop_follows_its_assignment_and_its_leave_evicts_it_at_once(
        cluster: Cluster) -> None:
    op = cluster.ops[2]
    wait_for(lambda: op.address in {r[0] for r in _rows(cluster.status())}, 15,
             "the worker to be assigned")
    hb = HeartbeatClient(cluster.url, cluster.chain.chain_id, op.key, cluster.model_id)
    seen: list[AssignmentResponse] = []
    load = {"active": 1, "queue_ms": 3, "kv_used_bytes": 1 << 20, "kv_capacity_bytes": 1 << 30,
            "layer_us": 900}
    loop = HeartbeatLoop(hb, BEAT_EVERY_S, lambda: {**load, **serving(seen[-1] if seen else None)},
                         seen.append)
    cluster.alive.discard(op.address)  # from now on the worker loop alone speaks for it
    try:
        loop.start()
        got = wait_for(lambda: seen and seen[-1], 5, "the loop's first acknowledged assignment")
        on_chain = cluster.chain.scheduler.current_assignment(op.address)
        assert got.assigned and on_chain is not None and got.epoch == on_chain.epoch
        assert (got.layer_start, got.layer_end) == (on_chain.layer_start, on_chain.layer_end)
        node = next(n for n in cluster.status()["nodes"] if n["operator"] == op.address)
        assert node["load"]["active"] == 1 and node["layer_ms"] == 0.9
        route = hb.route(RouteRequest(model_id=cluster.model_id, prompt_tokens=8))
        assert route.stages[0].start == 0 and route.stages[-1].end == MODEL.layers
        with pytest.raises(ModelNotServed):
            hb.route(RouteRequest(model_id=cluster.model_id + 7))
        before = cluster.status()["epoch"]
        loop.stop(leave=True)
        gone = wait_for(lambda: (s := cluster.status())["epoch"] > before and s, 5,
                        "an epoch after the leave")  # well before the heartbeat timeout
        assert op.address not in {r[0] for r in _rows(gone)}
        assert hb.assignment(op.address).assigned is False
        assert loop.last_error == ""
    finally:
        loop.stop()
        cluster.alive.add(op.address)
        hb.close()
    wait_for(lambda: op.address in {r[0] for r in _rows(cluster.status())}, 10,
             "the worker to rejoin")


def test_the_coordinator_refuses_to_start_with_a_key_that_is_not_the_schedulers_coordinator(
        devnet: tuple[str, Path, Path], cluster: Cluster) -> None:
    url, manifest, home = devnet
    res = subprocess.run(_coordinator_cmd(url, manifest, home / "model.json", 3),
                         env=_env(home), capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "is not the Scheduler's coordinator" in res.stderr


def test_a_node_that_unbonds_its_stake_is_evicted_in_a_new_epoch(cluster: Cluster) -> None:
    i = 3
    op = cluster.ops[i].address
    wait_for(lambda: op in {r[0] for r in _rows(cluster.status())}, 15, "the node assigned")
    before = cluster.status()["epoch"]
    stake = cluster.chain.node_registry.node(cluster.owners[i].address).stake_wei
    cluster.chain.node_registry.request_unbond(stake, sender=cluster.owners[i])
    assert not cluster.chain.node_registry.is_active(op)
    gone = wait_for(lambda: (s := cluster.status())["epoch"] > before
                    and op not in {r[0] for r in _rows(s)} and s, 10, "an epoch without it")
    assert _entries(cluster.chain, gone["epoch"]) == _rows(gone)
    r = httpx.post(f"{cluster.url}/heartbeat", timeout=5, content=beat(
        cluster.ops[i], time.time(), chain_id=cluster.chain.chain_id).model_dump_json())
    assert r.status_code == 403 and r.json()["error"]["code"] == "unknown_operator"
    cluster.alive.discard(op)


def test_a_node_registered_with_unusable_hardware_is_left_out_and_planning_goes_on(
        cluster: Cluster) -> None:
    """The NodeRegistry stores any profile; zero TFLOPS or a 2^200 MiB GPU must not stall the
    solver."""
    bad = cluster.ops[5]
    reg = cluster.chain.node_registry
    reg.register(bad.address, "http://127.0.0.1:9105",
                 replace(HARDWARE, tflops_milli=0, vram_mib=2**200),
                 stake_wei=reg.params().min_stake_wei, sender=cluster.owners[5])
    assert reg.is_active(bad.address)
    victim = cluster.ops[0].address
    start = wait_for(lambda: (s := cluster.status()) and victim in {r[0] for r in _rows(s)}
                     and s, 15, "the victim to be assigned")
    time.sleep(1.5)  # three registry polls with the bad profile on chain
    cluster.alive.discard(victim)  # a real change the coordinator must still plan and publish
    evicted = wait_for(lambda: (s := cluster.status())["epoch"] > start["epoch"] and s,
                       HEARTBEAT_TIMEOUT_S + 10, "an epoch without the silent node")
    assert victim not in {r[0] for r in _rows(evicted)}
    assert bad.address not in {r[0] for r in _rows(evicted)}
    assert bad.address not in {n["operator"] for n in evicted["nodes"]}
    r = httpx.post(f"{cluster.url}/heartbeat", timeout=5, content=beat(
        bad, time.time(), chain_id=cluster.chain.chain_id).model_dump_json())
    assert r.status_code == 403 and r.json()["error"]["code"] == "unknown_operator"
    cluster.alive.add(victim)
    wait_for(lambda: victim in {r[0] for r in _rows(cluster.status())}, 10, "the victim back")


def test_a_reported_node_that_is_unreachable_and_silent_is_evicted_before_the_heartbeat_timeout(
        cluster: Cluster) -> None:
    """The pumped nodes have no data port (nothing listens on their endpoints), so only their
    heartbeats speak for them: a report on one that still beats is a suspicion, nothing more;
    once it falls silent the report evicts it before the timeout would have."""
    victim = cluster.ops[1].address
    start = wait_for(lambda: (s := cluster.status()) and victim in {r[0] for r in _rows(s)}
                     and s, 15, "the victim to be assigned")
    report = {"model_id": cluster.model_id, "operator": victim, "reason": "stage 1 closed"}
    with httpx.Client(timeout=10) as http:
        r = http.post(f"{cluster.url}/report", json=report)
        assert r.status_code == 200, r.text
        assert r.json()["outcome"] == "suspected" and "unreachable" in r.json()["detail"]
        cluster.alive.discard(victim)
        silent_at = time.monotonic()
        gone = wait_for(lambda: (s := cluster.status())["epoch"] > start["epoch"] and s,
                        HEARTBEAT_TIMEOUT_S + 10, "an epoch without the reported node")
        assert time.monotonic() - silent_at < HEARTBEAT_TIMEOUT_S + 1.0
        assert victim not in {r[0] for r in _rows(gone)}
        assert any(f"{victim} evicted (reported failed" in e for e in gone["events"]), gone["events"]
        assert gone["failure_reports"]["evicted"] >= 1
        again = http.post(f"{cluster.url}/report", json=report)
        assert again.status_code == 200 and again.json()["outcome"] == "evicted"
        bad = [({**report, "operator": operator(43).address}, 403, "unknown_operator"),
               ({**report, "model_id": cluster.model_id + 7}, 404, "model_not_served"),
               ({**report, "operator": "0x1234"}, 422, "malformed"),
               ({**report, "reason": "x" * 5000}, 422, "malformed")]
        for body, status, code in bad:
            r = http.post(f"{cluster.url}/report", json=body)
            assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    cluster.alive.add(victim)
    wait_for(lambda: victim in {r[0] for r in _rows(cluster.status())}, 10, "the node back")


def test_the_gateways_router_reports_the_stage_and_waits_a_bounded_time_for_a_replacement(
        cluster: Cluster) -> None:
    """No worker serves layers [0, 1) alone, so the gateway's router reports the failed stage,
    keeps asking for a route without it, and gives up with no_route after `failover_wait_s` —
    naming what the coordinator found — without blocking the event loop meanwhile."""
    import asyncio

    from gateway.engine import CoordinatorRouter
    from gateway.errors import Unavailable
    from protocol.messages import StageAssignment

    victim = cluster.ops[0].address
    failed = StageAssignment(operator=victim, host="127.0.0.1", port=9100, start=0, end=1)
    router = CoordinatorRouter(cluster.url, cluster.model_id, failover_wait_s=1.5)
    before = cluster.status()["failure_reports"]["reports"]

    async def main() -> tuple[float, int, str]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        t = asyncio.create_task(ticker())
        t0 = time.monotonic()
        try:
            await router.replacement(failed)
        except Unavailable as exc:
            return time.monotonic() - t0, ticks, str(exc)
        finally:
            t.cancel()
        raise AssertionError("a replacement for a range nobody serves alone")

    took, ticks, why = asyncio.run(main())
    assert 1.0 <= took < 4.0, took
    assert ticks >= 10  # the loop kept running while the router waited
    assert "[0, 1)" in why and "tries" in why and "suspected" in why, why
    assert cluster.status()["failure_reports"]["reports"] == before + 1
    assert victim in {n["operator"] for n in cluster.status()["nodes"] if n["live"]}
