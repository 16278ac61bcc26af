"""The official `openai` client against the gateway, unmodified: chat and text completions, plain
and streamed, over a real 2-stage data-plane pipeline, paid with a real on-chain API key; every
response carries a receipt and is charged exactly once at the registry's prices."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from contracts.batch import Leaf, verify_proof
from contracts.verification import commitment_root
from node.dataplane.query import SignedStageCommit

pytestmark = pytest.mark.anvil


def chain_of(served):  # type: ignore[no-untyped-def]
    return served.gw.chain


def test_chat_completion_returns_text_usage_and_a_receipt_and_is_settled_once(
        gateway, new_client, model_info):
    client = new_client()
    api = gateway.openai(client.token)
    raw = api.chat.completions.with_raw_response.create(
        model=model_info.name, messages=[{"role": "user", "content": "hello there"}],
        max_tokens=6, temperature=0)
    resp = raw.parse()
    receipt = resp.model_extra["veriplex"]
    assert raw.headers["x-veriplex-request-id"] == receipt["request_id"]
    assert resp.object == "chat.completion" and resp.choices[0].message.role == "assistant"
    assert resp.usage.completion_tokens == receipt["tokens"]["completion"] >= 1
    assert resp.usage.prompt_tokens == receipt["tokens"]["prompt"]
    charge = model_info.charge(resp.usage.prompt_tokens, resp.usage.completion_tokens)
    assert int(receipt["charge_wei"]) == charge
    assert [s["layers"] for s in receipt["pipeline"]] == [[0, 4], [4, 8]]
    assert receipt["model_hash"] == "0x" + model_info.weights_root.hex()
    commits = [SignedStageCommit.from_json(c) for c in receipt["commitments"]]
    assert [c.operator for c in commits] == [s["operator"] for s in receipt["pipeline"]]
    rid = bytes.fromhex(receipt["request_id"][2:])
    for c in commits:  # each attested by its stage's operator
        c.check(receipt["chain_id"], rid)
        assert c.commit.positions == resp.usage.prompt_tokens + resp.usage.completion_tokens - 1
    assert [c.commit.n_tokens for c in commits] == [c.commit.positions + 1] * 2
    assert receipt["commitment_root"] == "0x" + commitment_root([c.commit for c in commits]).hex()
    assert receipt["commitment_roots"] == [c["root"] for c in receipt["commitments"]]
    assert receipt["commitments_error"] is None

    gateway.wait_settled()
    pay = chain_of(gateway).payments
    assert pay.key_state(client.signed.key_hash).spent_wei == charge
    assert pay.deposit_of(client.address) == client.deposit_wei - charge
    assert pay.is_settled(gateway.gw.address, receipt["seq"])
    status = httpx.get(f"{gateway.url}/v1/receipts/{receipt['request_id']}").json()
    assert status["batch"]["status"] == "settled" and status["batch"]["batch_id"] is not None
    assert status["commitments"] == receipt["commitments"]
    assert status["commitment_root"] == receipt["commitment_root"]
    # everything open_task and an auditor need: the record's leaf is proven in the settled root
    rec = status["record"]
    leaf = Leaf(bytes.fromhex(rec["request_id"][2:]), bytes.fromhex(rec["key_hash"][2:]),
                rec["pipeline_index"], rec["tokens_in"], rec["tokens_out"], int(rec["charge"]),
                bytes.fromhex(rec["commitment_root"][2:]))
    root = pay.batch(status["batch_id"]).root
    assert verify_proof([bytes.fromhex(p[2:]) for p in status["proof"]], root, leaf.hash())
    assert status["tx_hash"] == status["batch"]["tx_hash"] and status["leaf_index"] >= 0
    settled = pay.batch_pipelines(status["batch_id"])
    assert [[s["operator"], s["layer_start"], s["layer_end"]] for s in
            status["pipelines"][rec["pipeline_index"]]["stages"]] == [
        [s.operator, s.layer_start, s.layer_end] for s in settled[rec["pipeline_index"]].stages]


def test_streamed_chat_equals_the_plain_answer_and_ends_with_usage_and_receipt(
        gateway, new_client, model_info):
    api = gateway.openai(new_client().token)
    msgs = [{"role": "user", "content": "count with me"}]
    plain = api.chat.completions.create(model=model_info.name, messages=msgs, max_tokens=8,
                                        temperature=0)
    chunks = list(api.chat.completions.create(model=model_info.name, messages=msgs, max_tokens=8,
                                              temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    last = chunks[-1]
    assert last.choices[0].finish_reason == plain.choices[0].finish_reason
    assert last.usage.completion_tokens == plain.usage.completion_tokens
    assert last.model_extra["veriplex"]["request_id"] != plain.model_extra["veriplex"]["request_id"]


def test_text_completion_plain_and_streamed(gateway, new_client, model_info):
    api = gateway.openai(new_client().token)
    plain = api.completions.create(model=model_info.name, prompt="once upon a time", max_tokens=5,
                                   temperature=0)
    assert plain.object == "text_completion" and plain.usage.completion_tokens >= 1
    streamed = list(api.completions.create(model=model_info.name, prompt="once upon a time",
                                           max_tokens=5, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == plain.choices[0].text
    assert streamed[-1].model_extra["veriplex"]["tokens"] == plain.model_extra["veriplex"]["tokens"]


def test_models_lists_the_served_model_with_prices(gateway, new_client, model_info):
    models = gateway.openai(new_client().token).models.list().data
    assert [m.id for m in models] == [model_info.name]
    assert models[0].model_extra["veriplex"]["price_wei"]["completion"] == str(model_info.price_out_wei)


def test_twenty_concurrent_streams_all_succeed_and_each_is_charged_exactly_once(
        gateway, new_client, model_info):
    client = new_client()
    api = gateway.async_openai(client.token, timeout=120)

    async def one(i: int) -> dict:
        stream = await api.chat.completions.create(
            model=model_info.name, messages=[{"role": "user", "content": f"request {i}"}],
            max_tokens=5, stream=True, temperature=0.7, seed=i)
        last = None
        async for chunk in stream:
            last = chunk
        return last.model_extra["veriplex"]

    async def main() -> list[dict]:
        return await asyncio.gather(*(one(i) for i in range(20)))

    receipts = asyncio.run(main())
    assert len({r["request_id"] for r in receipts}) == 20
    total = sum(int(r["charge_wei"]) for r in receipts)
    gateway.wait_settled()
    pay = chain_of(gateway).payments
    assert pay.key_state(client.signed.key_hash).spent_wei == total
    assert pay.deposit_of(client.address) == client.deposit_wei - total
    assert all(pay.is_settled(gateway.gw.address, r["seq"]) for r in receipts)
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'veriplex_gateway_requests_total{endpoint="chat",status="200"} 20' in metrics


def test_a_stop_sequence_cuts_the_answer_before_it_and_status_reports_the_gateway(
        gateway, new_client, model_info):
    api = gateway.openai(new_client().token)
    kw = {"model": model_info.name, "prompt": "the quick brown", "max_tokens": 12, "temperature": 0}
    full = api.completions.create(**kw).choices[0].text
    assert len(full) >= 6, full
    stop = full[3:5]
    cut = api.completions.create(**kw, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = list(api.completions.create(**kw, stop=[stop], stream=True))
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text
    status = httpx.get(gateway.url + "/status").json()
    assert status["gateway"] == gateway.gw.address and status["store"]["requests"] == 3
