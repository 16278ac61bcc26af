"""Faults the gateway must ride out without charging for what it did not deliver.

(a) A stage process SIGKILLed while a streaming request runs through it: with a spare serving the
same layers, the request completes through the spare (the gateway's router hands the stage over and
the spare rebuilds its KV cache by replaying the sequence), the receipt names the spare, and the
client is charged once, for exactly the tokens it got. Without a spare the stream ends with an
OpenAI-shaped error, and only the tokens generated before the failure are charged, once.
(b) The RPC endpoint timing out (a proxy that swallows every byte): a client the gateway has never
seen — so nothing is cached for it — gets a clear OpenAI-shaped 503 within the chain timeout, not
a hang, and is charged nothing; once the endpoint answers again the same key is served and its
request settled exactly once.

The stages in (a) are real `veriplex node serve` processes (static directory) on the tiny model,
routed by a fixed router with a spare; the same hand-over through the coordinator's router, with
workers following its epochs under `veriplex up`, is tests/up/test_failover.py. The chain is the
gateway tests' anvil (fixtures in tests/gateway/conftest.py).
"""

from __future__ import annotations

import secrets
import signal
import time
from pathlib import Path

import httpx
import pytest
from coincurve import PrivateKey

from contracts.client import Chain
from contracts.rpc import Signer
from protocol.identity import address_of_key
from protocol.messages import StageAssignment
from tests.support.gateway import (
    BlackholeProxy,
    ServedGateway,
    StageProcess,
    free_port,
    make_gateway,
    register_operator,
)

pytestmark = pytest.mark.anvil


@pytest.fixture(scope="module")
def stage_processes(chat_model: Path, gateway_signer: Signer, anvil_url: str, deployment: Path,
                    tmp_path_factory: pytest.TempPathFactory):
    """[0,4), a spare [4,8), and one [4,8) for each test that kills its middle stage, each its own
    `node serve` process, started together once: a test kills only the middle stage it was
    given, the first stage and the spare serve each request under its own id."""
    tmp = tmp_path_factory.mktemp("stages")
    keys = [secrets.token_bytes(32) for _ in range(4)]
    addrs = [address_of_key(PrivateKey(k)) for k in keys]
    plan = [(0, 4), (4, 8), (4, 8), (4, 8)]
    procs = [StageProcess(chat_model, rng, k, addrs, gateway_signer.address, tmp / f"s{i}")
             for i, (rng, k) in enumerate(zip(plan, keys, strict=True))]
    try:
        for p in procs:
            p.wait_ready()
            register_operator(anvil_url, deployment, p.address)
        first, spare, *middles = procs
        yield first, spare, middles
    finally:
        for p in procs:
            p.stop()


@pytest.fixture
def stages(stage_processes):
    """[0,4), a [4,8) no other test has used (the test may kill it), and the spare [4,8)."""
    first, spare, middles = stage_processes
    assert middles, "more tests kill a middle stage than stage_processes starts"
    return first, middles.pop(0), spare


def serve_gateway(anvil_url: str, deployment: Path, signer: Signer, model: Path, info,  # type: ignore[no-untyped-def]
                  pipeline: list[StageAssignment], spares: list[StageAssignment],
                  db: Path) -> ServedGateway:
    from gateway.engine import StaticRouter

    gw = make_gateway(anvil_url, deployment, signer, model, info, pipeline, f"sqlite:///{db}",
                      step_timeout_s=5.0)
    gw.runner.router = StaticRouter(pipeline, spares)
    return ServedGateway(gw, free_port()).start()


def stream_and_kill(api, model: str, victim: StageProcess, max_tokens: int):  # type: ignore[no-untyped-def]
    """Stream a long request; SIGKILL `victim` once the first text arrives. Returns (text
    received, the final receipt or None, the error raised or None)."""
    import openai

    text, receipt, error, killed = [], None, None, False
    stream = api.chat.completions.create(model=model, max_tokens=max_tokens, temperature=0,
                                         stream=True, messages=[{"role": "user", "content": "go"}])
    try:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
                if not killed:
                    victim.proc.send_signal(signal.SIGKILL)
                    victim.proc.wait(10)
                    killed = True
            if (chunk.model_extra or {}).get("veriplex"):
                receipt = chunk.model_extra["veriplex"]
    except openai.APIError as exc:
        error = exc
    assert killed, "the stream produced no text before it ended"
    return "".join(text), receipt, error


@pytest.mark.timeout(240)
def test_a_stage_killed_mid_stream_hands_over_to_the_spare_and_charges_once_for_what_was_sent(
        anvil_url, deployment, gateway_signer, chat_model, model_info, stages, new_client,
        tmp_path):
    first, middle, spare = stages
    client = new_client()
    served = serve_gateway(anvil_url, deployment, gateway_signer, chat_model, model_info,
                           [first.assignment(), middle.assignment()], [spare.assignment()],
                           tmp_path / "gw.sqlite")
    try:
        api = served.openai(client.token, timeout=120)
        text, receipt, error = stream_and_kill(api, model_info.name, middle, max_tokens=200)
        assert error is None and receipt is not None
        assert [s["operator"] for s in receipt["pipeline"]] == [first.address, spare.address]
        tin, tout = receipt["tokens"]["prompt"], receipt["tokens"]["completion"]
        assert tout >= 1 and text  # the client got the whole answer, across the hand-over
        assert int(receipt["charge_wei"]) == model_info.charge(tin, tout)
        # the spare, which rebuilt the whole sequence, commits to it like any stage
        assert receipt["commitments_error"] is None
        assert [c["operator"] for c in receipt["commitments"]] == [first.address, spare.address]
        assert {c["positions"] for c in receipt["commitments"]} == {tin + tout - 1}
        served.wait_settled(timeout_s=60)
    finally:
        served.stop()
    pay = Chain.connect(anvil_url, deployment).payments
    assert pay.key_state(client.signed.key_hash).spent_wei == int(receipt["charge_wei"])
    assert pay.deposit_of(client.address) == client.deposit_wei - int(receipt["charge_wei"])


@pytest.mark.timeout(240)
def test_without_a_spare_the_stream_ends_with_an_openai_error_and_the_unverifiable_partial_answer_is_not_charged(
        anvil_url, deployment, gateway_signer, chat_model, model_info, stages, new_client,
        tmp_path):
    first, middle, _ = stages
    client = new_client()
    served = serve_gateway(anvil_url, deployment, gateway_signer, chat_model, model_info,
                           [first.assignment(), middle.assignment()], [], tmp_path / "gw.sqlite")
    try:
        api = served.openai(client.token, timeout=120)
        _, receipt, error = stream_and_kill(api, model_info.name, middle, max_tokens=200)
        assert receipt is None and error is not None
        assert "no spare serves layers [4, 8)" in str(error)
        # the partial record is written once the gateway gave up asking the dead stage to commit
        deadline = time.monotonic() + 60
        while not _request_ids(served) and time.monotonic() < deadline:
            time.sleep(0.2)
        served.wait_settled(timeout_s=60)
        records = served.gw.store.counts()
        rows = [served.gw.receipt_status(r) for r in _request_ids(served)]
    finally:
        served.stop()
    assert records["requests_unbatched"] == 0
    assert len(rows) == 1 and rows[0]["tokens"]["completion"] < 200  # cut short, not finished
    # Nothing unattested is paid (issue 14): the dead stage never signed its commitment, so the
    # delivered tokens cannot be verified — the record is kept for the receipt but charges 0.
    assert rows[0]["commitments_error"]
    assert int(rows[0]["charge_wei"]) == 0
    pay = Chain.connect(anvil_url, deployment).payments
    assert pay.key_state(client.signed.key_hash).spent_wei == 0


def _request_ids(served: ServedGateway) -> list[str]:
    from sqlalchemy import text

    with served.gw.store.engine.connect() as c:
        return [r[0] for r in c.execute(text("SELECT request_id FROM requests"))]


@pytest.mark.timeout(180)
def test_a_new_client_gets_a_clear_503_while_the_rpc_hangs_and_is_served_once_it_answers(
        anvil_url, deployment, gateway_signer, chat_model, model_info, dataplane, new_client,
        tmp_path):
    client = new_client()
    proxy = BlackholeProxy(anvil_url)
    gw = make_gateway(proxy.url, deployment, gateway_signer, chat_model, model_info,
                      dataplane.stages(), f"sqlite:///{tmp_path / 'gw.sqlite'}", timeout_s=1.0,
                      chain_cache_s=0.0)
    served = ServedGateway(gw, free_port()).start()
    body = {"model": model_info.name, "max_tokens": 3, "temperature": 0,
            "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {client.token}"}
    try:
        proxy.blackhole = True
        t0 = time.monotonic()
        r = httpx.post(served.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
        took = time.monotonic() - t0
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert set(err) >= {"message", "type", "code"} and err["message"]
        assert took < 30  # bounded by the chain timeout, not a hang
        assert gw.store.counts()["requests_unbatched"] == 0  # nothing recorded, nothing charged
        proxy.blackhole = False
        r = httpx.post(served.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        charge = int(r.json()["veriplex"]["charge_wei"])
        served.wait_settled(timeout_s=60)
    finally:
        served.stop()
        proxy.close()
    pay = Chain.connect(anvil_url, deployment).payments
    assert pay.key_state(client.signed.key_hash).spent_wei == charge
    assert pay.deposit_of(client.address) == client.deposit_wei - charge
