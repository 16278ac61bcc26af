"""A worker killed mid-stream under `veriplex up`: the gateway's coordinator router hands its stage
to the other replica's worker for the same layers (asking the coordinator for a route without the
dead operator), the stream completes, the receipt names the new operator, and the client is
charged once, for the tokens it got."""

from __future__ import annotations

import json
import signal
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
