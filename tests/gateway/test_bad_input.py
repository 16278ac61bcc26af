"""Bad input is refused before any work with an OpenAI-shaped 4xx error and a clear message, and
nothing is recorded or charged: missing/invalid/foreign/expired/over-cap keys, unknown models,
prompts over the context length, malformed bodies."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from contracts.apikeys import create_api_key

pytestmark = pytest.mark.anvil


def post(gateway, path: str, body: object, token: str | None) -> httpx.Response:  # type: ignore[no-untyped-def]
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if isinstance(body, (bytes, str)):
        return httpx.post(gateway.url + path, content=body, headers=headers, timeout=30)
    return httpx.post(gateway.url + path, json=body, headers=headers, timeout=30)


def assert_error(r: httpx.Response, status: int, code: str, *fragments: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code
    for f in fragments:
        assert f in err["message"], err["message"]
    return err


def assert_nothing_charged(gateway, client) -> None:  # type: ignore[no-untyped-def]
    assert gateway.gw.store.counts()["requests"] == 0
    pay = gateway.gw.chain.payments
    assert pay.key_state(client.signed.key_hash).spent_wei == 0
    assert pay.deposit_of(client.address) == client.deposit_wei


def test_missing_and_malformed_keys_are_refused_with_401(gateway, new_client, model_info):
    body = {"model": model_info.name, "messages": [{"role": "user", "content": "hi"}]}
    assert_error(post(gateway, "/v1/chat/completions", body, None), 401, "missing_api_key",
                 "missing API key")
    assert_error(post(gateway, "/v1/chat/completions", body, "sk-not-ours"), 401,
                 "invalid_api_key", "vpx_")
    assert_error(post(gateway, "/v1/chat/completions", body, "vpx_AAAA"), 401, "invalid_api_key",
                 "malformed API key")
    with pytest.raises(openai.AuthenticationError) as e:
        gateway.openai("vpx_garbage").chat.completions.create(**body)
    assert e.value.body["code"] == "invalid_api_key"


def test_a_key_for_another_gateway_or_unregistered_is_refused(gateway, new_client, model_info):
    client = new_client()
    chain = gateway.gw.chain
    other = create_api_key(client.key, "0x" + "11" * 20, 10**18, int(time.time()) + 3600, 7,
                           chain.chain_id, chain.payments.address)
    body = {"model": model_info.name, "prompt": "hi"}
    assert_error(post(gateway, "/v1/completions", body, other.token()), 401, "invalid_api_key",
                 "not this gateway", gateway.gw.address)
    unregistered = create_api_key(client.key, gateway.gw.address, 10**18, int(time.time()) + 3600,
                                  8, chain.chain_id, chain.payments.address)
    assert_error(post(gateway, "/v1/completions", body, unregistered.token()), 401,
                 "invalid_api_key", "not registered")
    assert_nothing_charged(gateway, client)


def test_over_cap_and_over_deposit_and_expired_keys_are_refused_with_402(
        gateway, new_client, model_info):
    body = {"model": model_info.name, "prompt": "hello", "max_tokens": 100}
    small_cap = new_client(cap_wei=model_info.charge(5, 10))
    err = assert_error(post(gateway, "/v1/completions", body, small_cap.token), 402,
                       "key_cap_exceeded", "cap exceeded")
    assert str(small_cap.signed.key.cap_wei) in err["message"]
    assert_nothing_charged(gateway, small_cap)

    poor = new_client(deposit_wei=model_info.charge(5, 10), cap_wei=10**18)
    assert_error(post(gateway, "/v1/completions", body, poor.token), 402, "insufficient_deposit",
                 "insufficient deposit")
    assert_nothing_charged(gateway, poor)

    expiring = new_client(expires_in_s=2)
    time.sleep(3.1)
    assert_error(post(gateway, "/v1/completions", body, expiring.token), 402, "expired_api_key",
                 "expired")
    assert_nothing_charged(gateway, expiring)


def test_unknown_model_and_too_long_prompt_are_refused(gateway, new_client, model_info):
    client = new_client()
    with pytest.raises(openai.NotFoundError) as e:
        gateway.openai(client.token).chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found" and model_info.name in e.value.body["message"]
    ctx = gateway.gw.model.context_length
    long_prompt = "word " * (ctx + 50)
    with pytest.raises(openai.BadRequestError) as e:
        gateway.openai(client.token).completions.create(model=model_info.name, prompt=long_prompt)
    assert e.value.body["code"] == "context_length_exceeded"
    assert f"maximum context length is {ctx} tokens" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        gateway.openai(client.token).completions.create(model=model_info.name, prompt="hi",
                                                        max_tokens=ctx)
    assert e.value.body["code"] == "context_length_exceeded"
    assert_nothing_charged(gateway, client)


@pytest.mark.parametrize(("body", "param", "fragment"), [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "model", "'model'"),
    ({"model": "m"}, "messages", "'messages'"),
    ({"model": "m", "messages": []}, "messages", "'messages'"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages", "role"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 7}, "temperature",
     "'temperature'"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens",
     "'max_tokens'"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 3}, "n", "'n'"),
])
def test_malformed_bodies_get_400_naming_the_field(gateway, new_client, body, param, fragment):
    client = new_client()
    err = assert_error(post(gateway, "/v1/chat/completions", body, client.token), 400,
                       "invalid_json" if param is None else "invalid_value", fragment)
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert_nothing_charged(gateway, client)
