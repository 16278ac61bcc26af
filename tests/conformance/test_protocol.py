"""Conformance: the JSON-RPC 2.0 envelope — batches, malformed input, unknown methods, bad params.

Every bad request must come back as a JSON-RPC error object with a code and a readable message,
and the node must keep serving with its state unchanged. Where anvil (the reference) deviates from
the JSON-RPC 2.0 specification, the test accepts both the specified and anvil's answer and says so:
anvil answers unparsable JSON with -32600 (Invalid Request) where the spec says -32700 (Parse error),
and a batch of non-objects with one error object where the spec wants one error per entry.
"""

from __future__ import annotations

import pytest

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602


@pytest.fixture
def unchanged(chain):
    """Asserts after the test that the head block and a dev account's balance/nonce are as before."""
    address = chain.accounts[0].address
    before = (
        chain.block("latest")["hash"],
        chain.balance(address),
        chain.nonce(address, "pending"),
    )
    yield chain
    after = (chain.block("latest")["hash"], chain.balance(address), chain.nonce(address, "pending"))
    assert after == before, "a rejected request changed the chain"
    assert chain.rpc.quantity(chain.rpc.call("eth_chainId")) == chain.chain_id, (
        "node stopped serving"
    )


def _single_error(response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict), body
    assert body.get("jsonrpc") == "2.0", body
    assert "result" not in body, body
    error = body["error"]
    assert isinstance(error["code"], int) and error["message"].strip(), body
    return body


@pytest.mark.parametrize(
    "text",
    ["{bad json", "not json at all", '{"jsonrpc":"2.0","id":1,"method":"eth_chainId"', ""],
    ids=["broken-object", "plain-text", "truncated", "empty-body"],
)
def test_malformed_json_is_a_parse_error_with_null_id(unchanged, text):
    body = _single_error(unchanged.rpc.post_text(text))
    # Spec: -32700; anvil 1.7.1 answers -32600 (see module docstring).
    assert body["error"]["code"] in (PARSE_ERROR, INVALID_REQUEST), body
    assert body["id"] is None


@pytest.mark.parametrize(
    "payload",
    [
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "id": 1, "method": 5, "params": []},
        {"jsonrpc": "1.0", "id": 1, "method": "eth_chainId", "params": []},
        {"jsonrpc": 2.0, "id": 1, "method": "eth_chainId", "params": []},
        {"id": 1, "method": "eth_chainId", "params": []},
        "a string",
        42,
    ],
    ids=[
        "no-method",
        "method-not-string",
        "wrong-version",
        "version-as-number",
        "no-version",
        "string",
        "number",
    ],
)
def test_invalid_request_objects_get_invalid_request(unchanged, payload):
    body = _single_error(unchanged.rpc.post_json(payload))
    assert body["error"]["code"] == INVALID_REQUEST, body
    if isinstance(payload, dict):
        assert body["id"] in (payload["id"], None)


def test_unknown_method_gets_method_not_found(unchanged):
    err = unchanged.rpc.error("eth_noSuchMethod", 1, 2)
    assert err.code == METHOD_NOT_FOUND
    assert "not found" in err.message.lower() or "not exist" in err.message.lower()


@pytest.mark.parametrize(
    ("method", "params"),
    [
        pytest.param("eth_getBalance", [123, "latest"], id="address-as-number"),
        pytest.param("eth_getBalance", ["0x12", "latest"], id="address-too-short"),
        pytest.param("eth_getBalance", [], id="missing-params"),
        pytest.param("eth_getBlockByNumber", ["banana", False], id="block-tag-unknown"),
        pytest.param("eth_getBlockByNumber", [{"number": 1}, False], id="block-tag-object"),
        pytest.param("eth_getTransactionByHash", ["0x1234"], id="hash-too-short"),
        pytest.param(
            "eth_getStorageAt", ["0x" + "11" * 20, "not-a-slot", "latest"], id="slot-not-hex"
        ),
        pytest.param("eth_call", ["not-an-object", "latest"], id="call-not-an-object"),
        pytest.param("eth_sendRawTransaction", ["zz"], id="raw-tx-not-hex"),
        pytest.param("eth_sendRawTransaction", ["0x1234"], id="raw-tx-garbage"),
        pytest.param("eth_getLogs", [{"fromBlock": "yesterday"}], id="logs-bad-block"),
        pytest.param("evm_revert", ["not-a-snapshot"], id="snapshot-id-not-hex"),
    ],
)
def test_wrong_parameter_types_get_invalid_params_with_a_message(unchanged, method, params):
    err = unchanged.rpc.error(method, *params)
    assert err.code == INVALID_PARAMS, f"{method}{params}: {err.code} {err.message}"


def test_params_as_an_object_where_a_list_is_expected_is_invalid_params(unchanged):
    payload = {"jsonrpc": "2.0", "id": 7, "method": "eth_getBalance", "params": {"a": 1}}
    body = _single_error(unchanged.rpc.post_json(payload))
    assert body["error"]["code"] == INVALID_PARAMS
    assert body["id"] == 7


def test_batch_answers_every_entry_by_id(rpc, node):
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "id": "two", "method": "net_version", "params": []},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_blockNumber", "params": []},
    ]
    response = rpc.post_json(batch)
    assert response.status_code == 200
    answers = response.json()
    assert isinstance(answers, list) and len(answers) == 3
    by_id = {answer["id"]: answer for answer in answers}
    assert rpc.quantity(by_id[1]["result"]) == node.chain_id
    assert by_id["two"]["result"] == str(node.chain_id)
    assert rpc.quantity(by_id[3]["result"]) == rpc.quantity(rpc.call("eth_blockNumber"))


def test_batch_with_invalid_entries_answers_each_entry_on_its_own(unchanged):
    rpc = unchanged.rpc
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "id": 2, "method": "eth_noSuchMethod", "params": []},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_getBalance", "params": [123, "latest"]},
        {"foo": "bar"},
        {
            "jsonrpc": "2.0",
            "id": 5,
            "method": "eth_getBalance",
            "params": [unchanged.accounts[0].address, "latest"],
        },
    ]
    response = rpc.post_json(batch)
    assert response.status_code == 200
    answers = response.json()
    assert isinstance(answers, list) and len(answers) == 5
    by_id: dict = {}
    for answer in answers:
        assert answer["jsonrpc"] == "2.0"
        by_id.setdefault(answer["id"], []).append(answer)
    assert rpc.quantity(by_id[1][0]["result"]) == unchanged.chain_id
    assert by_id[2][0]["error"]["code"] == METHOD_NOT_FOUND
    assert by_id[3][0]["error"]["code"] == INVALID_PARAMS
    assert [a["error"]["code"] for a in by_id[None]] == [INVALID_REQUEST]
    assert rpc.quantity(by_id[5][0]["result"]) == unchanged.balance(unchanged.accounts[0].address)


def test_batch_of_non_objects_is_answered_with_invalid_request(unchanged):
    response = unchanged.rpc.post_json([1, "two"])
    assert response.status_code == 200
    body = response.json()
    # Spec: one Invalid Request per entry; anvil 1.7.1 answers one error object for the batch.
    errors = body if isinstance(body, list) else [body]
    assert len(errors) in (1, 2)
    for answer in errors:
        assert answer["id"] is None
        assert answer["error"]["code"] == INVALID_REQUEST


def test_empty_batch_is_one_invalid_request_error(unchanged):
    body = _single_error(unchanged.rpc.post_json([]))
    assert body["error"]["code"] == INVALID_REQUEST


def test_notification_without_id_gets_no_response_body(unchanged):
    response = unchanged.rpc.post_json({"jsonrpc": "2.0", "method": "eth_chainId", "params": []})
    assert response.status_code in (200, 204)
    assert response.content.strip() == b""


def test_omitted_params_mean_an_empty_list(rpc, node):
    response = rpc.post_json({"jsonrpc": "2.0", "id": 9, "method": "eth_chainId"})
    assert rpc.quantity(response.json()["result"]) == node.chain_id
