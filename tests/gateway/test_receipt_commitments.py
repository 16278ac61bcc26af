"""Requests cut short still carry real stage commitments: a stop sequence (the gateway cancels the
pipeline) and a client that hangs up mid-stream (recorded in the background) both commit exactly
the positions the client's tokens cover, attested by the pipeline's operators."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from contracts.verification import commitment_root
from node.dataplane.query import SignedStageCommit

pytestmark = pytest.mark.anvil


def check_commitments(receipt_or_status: dict, prompt: int, completion: int) -> None:
    commits = [SignedStageCommit.from_json(c) for c in receipt_or_status["commitments"]]
    assert len(commits) == 2
    rid = bytes.fromhex(receipt_or_status["request_id"][2:])
    for c in commits:
        c.check(receipt_or_status["chain_id"], rid)
        assert c.commit.positions == prompt + completion - 1
    assert receipt_or_status["commitment_root"] == "0x" + commitment_root(
        [c.commit for c in commits]).hex()


def test_a_stop_sequence_commits_only_the_tokens_delivered(gateway, new_client, model_info):
    api = gateway.openai(new_client().token)
    msgs = [{"role": "user", "content": "tell me a long story"}]
    full = api.chat.completions.create(model=model_info.name, messages=msgs, max_tokens=12,
                                       temperature=0)
    text = full.choices[0].message.content
    assert len(text) >= 4
    stop = text[len(text) // 2: len(text) // 2 + 2]
    cut = api.chat.completions.create(model=model_info.name, messages=msgs, max_tokens=12,
                                      temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].message.content
    assert cut.usage.completion_tokens < full.usage.completion_tokens
    check_commitments(cut.model_extra["veriplex"], cut.usage.prompt_tokens,
                      cut.usage.completion_tokens)


def test_a_client_hanging_up_mid_stream_is_recorded_with_commitments(gateway, new_client,
                                                                    model_info):
    body = {"model": model_info.name, "messages": [{"role": "user", "content": "go on"}],
            "max_tokens": 64, "temperature": 0, "stream": True}
    headers = {"authorization": f"Bearer {new_client().token}"}
    with httpx.Client(timeout=30) as h, h.stream("POST", f"{gateway.url}/v1/chat/completions",
                                                 json=body, headers=headers) as r:
        rid = r.headers["x-veriplex-request-id"]
        for line in r.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get(
                    "content"):
                break  # hang up after the first text
    deadline = time.monotonic() + 30
    while (row := gateway.gw.store.request(rid)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert row is not None, "the cancelled request was never recorded"
    whole = httpx.post(f"{gateway.url}/v1/chat/completions", json={**body, "stream": False},
                       headers=headers, timeout=60).json()
    assert 1 <= row.tokens_out < whole["usage"]["completion_tokens"]  # cut short by the hang-up
    status = httpx.get(f"{gateway.url}/v1/receipts/{rid}").json()
    assert status["commitments_error"] is None
    check_commitments(status, row.tokens_in, row.tokens_out)
