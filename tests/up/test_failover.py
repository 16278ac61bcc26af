"""A worker killed mid-stream under `veriplex up`: the gateway's coordinator router hands its stage
to the other replica's worker for the same layers (asking the coordinator for a route without the
dead operator), the stream completes, the receipt names the new operator, and the client is
charged once, for the tokens it got."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from contracts.client import Chain
from tests.support.up import paying_client
from veriplex.up import UpOptions, bring_up


def serving(net, rid: str) -> list:  # type: ignore[no-untyped-def]
    """The workers whose hidden-state stores hold request `rid`."""
    return [w for w in net.workers
            if list((net.data_dir / "workers" / str(w.index)).glob(f"hidden-states/*/{rid[2:]}-*"))]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_worker_killed_mid_stream_is_replaced_through_the_coordinator_and_charged_once(
        chat_tiny: Path, tmp_path: Path) -> None:
    net = bring_up(UpOptions(data_dir=tmp_path / "up", models_dir=tmp_path, model=str(chat_tiny),
                             workers=4, verifiers=0, stages=2), say=lambda _: None)
    try:
        chain = Chain.connect(net.rpc_url, net.manifest)
        entries = chain.scheduler.epoch_entries(chain.scheduler.epoch())
        ranges = sorted((e.layer_start, e.layer_end) for e in entries)
        assert len(entries) == 4 and ranges[0::2] == ranges[1::2]  # two replicas, same split
        token = paying_client(net.rpc_url, net.manifest, net.gateway_address)
        body = {"model": net.model_name, "max_tokens": 200, "temperature": 0, "stream": True,
                "messages": [{"role": "user", "content": "go on"}]}
        victim = None
        events = []
        with httpx.stream("POST", net.gateway_url + "/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {token}"}, timeout=120) as r:
            assert r.status_code == 200
            rid = r.headers["x-veriplex-request-id"]
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                events.append(json.loads(line[6:]))
                if victim is None and events[-1].get("choices", [{}])[0].get("delta", {}).get("content"):
                    on_it = serving(net, rid)
                    assert on_it, "no worker holds the request"
                    victim = max(on_it, key=lambda w: w.index)
                    victim.child.proc.send_signal(signal.SIGKILL)
                    victim.child.proc.wait(10)
        assert victim is not None and "error" not in events[-1], events[-1]
        receipt = events[-1]["veriplex"]
        operators = [s["operator"] for s in receipt["pipeline"]]
        assert victim.address not in operators and len(operators) == 2
        tin, tout = receipt["tokens"]["prompt"], receipt["tokens"]["completion"]
        info = chain.model_registry.model(net.model_id)
        assert tout >= 1 and int(receipt["charge_wei"]) == info.charge(tin, tout)
        deadline = time.monotonic() + 90
        spent = 0
        while time.monotonic() < deadline:
            key_hash = chain.payments.events("KeyRegistered")[-1].args["key_hash"]
            spent = chain.payments.key_state(key_hash).spent_wei
            if spent:
                break
            time.sleep(1.0)
        assert spent == int(receipt["charge_wei"])
    finally:
        net.stop()


def _stream(url: str, token: str, body: dict, got_token: threading.Event, out: dict) -> None:
    """One streaming chat completion: its request id, events, and whether it saw a content token."""
    events: list[dict] = out.setdefault("events", [])  # live: the test reads it mid-stream
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {token}"}, timeout=180) as r:
            out["status"] = r.status_code
            out["rid"] = r.headers.get("x-veriplex-request-id")
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                events.append(json.loads(line[6:]))
                if events[-1].get("choices", [{}])[0].get("delta", {}).get("content"):
                    got_token.set()
    except Exception as e:  # reported by the test, with what the stream had delivered
        out["exception"] = repr(e)
    finally:
        got_token.set()


@pytest.mark.slow
@pytest.mark.timeout(500)
@pytest.mark.parametrize(("workers", "standby"), [
    (4, 0),
    (3, 1),
], ids=["two-replicas", "hot-standby"])
def test_concurrent_requests_survive_a_stage_killed_mid_batch_each_completed_and_charged_once(
        chat_tiny: Path, tmp_path: Path, workers: int, standby: int) -> None:
    """Several requests stream at once through the gateway; the worker on the path of most of them
    is killed while they are all mid-generation (sharing its batched steps). Every request ends
    with one receipt, the killed operator on none of the re-routed ones, each request is settled
    on chain exactly once at its receipt's charge, and the client's spend is the sum of those.
    Two replicas: the other replica's worker for the same layers takes the stage over. One replica
    and a hot standby: nothing can take the stage over until the coordinator has evicted the dead
    worker and promoted the standby, so the gateway reports the stage (the coordinator probes the
    worker itself, finds it unreachable and silent, evicts it and heals onto the standby in a new
    epoch) and the requests wait for the standby to confirm the range, well inside the heartbeat
    timeout (45 s under up) — the receipts name the standby."""
    n = 4
    net = bring_up(UpOptions(data_dir=tmp_path / "up", models_dir=tmp_path, model=str(chat_tiny),
                             workers=workers, verifiers=standby, stages=2), say=lambda _: None)
    try:
        chain = Chain.connect(net.rpc_url, net.manifest)
        token = paying_client(net.rpc_url, net.manifest, net.gateway_address)
        body = {"model": net.model_name, "max_tokens": 160, "temperature": 0, "stream": True,
                "messages": [{"role": "user", "content": "go on"}]}
        started = [threading.Event() for _ in range(n)]
        outs: list[dict] = [{} for _ in range(n)]
        threads = [threading.Thread(target=_stream, args=(net.gateway_url, token, body, started[k],
                                                          outs[k]), daemon=True) for k in range(n)]
        for t in threads:
            t.start()
        for e in started:
            assert e.wait(120), "a request never got its first token"
        rids = [o.get("rid") for o in outs]
        assert all(rids) and len(set(rids)) == n, outs
        # the worker holding the most requests now (the later stage on a tie) dies mid-batch
        on = {w.index: [r for r in rids if w in serving(net, r)] for w in net.workers}
        victim = max(net.workers, key=lambda w: (len(on[w.index]), w.index))
        in_flight = [not any("veriplex" in e for e in o["events"]) for o in outs]
        victim.child.proc.send_signal(signal.SIGKILL)
        victim.child.proc.wait(10)
        assert all(in_flight), in_flight  # none had finished when the stage died
        assert len(on[victim.index]) >= 2, on  # it really was serving a batch of them
        for t in threads:
            t.join(240)
        info = chain.model_registry.model(net.model_id)
        charges = {}
        for o in outs:
            assert "exception" not in o and o["status"] == 200, o.get("exception")
            last = o["events"][-1]
            assert "error" not in last and "veriplex" in last, last
            assert sum("veriplex" in e for e in o["events"]) == 1  # one receipt per request
            receipt = last["veriplex"]
            operators = [s["operator"] for s in receipt["pipeline"]]
            assert len(operators) == 2
            if o["rid"] in on[victim.index]:
                assert victim.address not in operators  # re-routed around the dead stage
            tin, tout = receipt["tokens"]["prompt"], receipt["tokens"]["completion"]
            assert tout >= 1 and int(receipt["charge_wei"]) == info.charge(tin, tout)
            charges[o["rid"]] = int(receipt["charge_wei"])
        if standby:  # healed on the gateway's report, checked by the coordinator's own probes
            events = httpx.get(net.coordinator_url + "/status", timeout=10).json()["events"]
            assert any(f"{victim.address} evicted (reported failed" in e and "standby" in e
                       for e in events), events
        key_hash = chain.payments.events("KeyRegistered")[-1].args["key_hash"]
        deadline = time.monotonic() + 120
        settled: list = []
        while time.monotonic() < deadline:
            settled = [e for e in chain.payments.events("RequestSettled")
                       if bytes(e.args["key_hash"]) == bytes(key_hash)]
            if len(settled) >= n:
                break
            time.sleep(1.0)
        by_rid: dict[str, list[int]] = {}
        for e in settled:
            by_rid.setdefault("0x" + bytes(e.args["request_id"]).hex(), []).append(int(e.args["charge"]))
        assert by_rid == {rid: [c] for rid, c in charges.items()}  # each settled once, at its charge
        spent = chain.payments.key_state(key_hash).spent_wei
        assert spent == sum(charges.values())
    finally:
        net.stop()
