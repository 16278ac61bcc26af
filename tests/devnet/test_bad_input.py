"""Bad input gets a JSON-RPC error with a clear message; the devnet keeps serving, unchanged."""

from __future__ import annotations

import json

import pytest
from eth_account import Account

from tests.devnet.local import LocalDevnet, RpcFailed


def snapshot_of_state(local: LocalDevnet) -> tuple:
    a, b = local.accounts[0].address, local.accounts[1].address
    return (local.rpc("eth_blockNumber"), local.rpc("eth_getBalance", a, "latest"),
            local.rpc("eth_getBalance", b, "latest"), local.rpc("eth_getTransactionCount", a, "pending"))


def error_of(local: LocalDevnet, method: str, *params: object) -> RpcFailed:
    with pytest.raises(RpcFailed) as info:
        local.rpc(method, *params)
    return info.value


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ("{not json", -32700, "parse error"),
        ("[]", -32600, "empty batch"),
        ('"just a string"', -32600, "request object"),
        ('{"jsonrpc":"2.0","id":1,"method":42}', -32600, "method must be a string"),
        ('{"jsonrpc":"1.0","id":1,"method":"eth_chainId"}', -32600, "jsonrpc"),
        ('{"jsonrpc":"2.0","id":1,"method":"eth_fooBar"}', -32601, "eth_fooBar does not exist"),
        ('{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":[123]}', -32602, "20-byte"),
        ('{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":[]}', -32602, "number of parameters"),
        ('{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["0xzz",false]}', -32602, "hex"),
        ('{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["latest","yes"]}', -32602, "true or false"),
        ('{"jsonrpc":"2.0","id":1,"method":"eth_sendRawTransaction","params":["0x1234"]}', -32602, "decode"),
        ('{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{"to":"0x12","bogus":1}]}', -32602, "invalid argument 0"),
        ('{"jsonrpc":"2.0","id":1,"method":"eth_getLogs","params":[{"topics":"x"}]}', -32602, "topics"),
    ],
)
def test_malformed_requests_get_the_standard_error_code(local: LocalDevnet, body: str, code: int,
                                                        words: str) -> None:
    before = snapshot_of_state(local)
    out = local.raw(body)
    assert out["error"]["code"] == code
    assert words in out["error"]["message"]
    assert snapshot_of_state(local) == before


def test_a_batch_answers_each_request_even_when_some_fail(local: LocalDevnet) -> None:
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"},
             {"jsonrpc": "2.0", "id": 2, "method": "nope"},
             {"jsonrpc": "2.0", "method": "eth_chainId"},  # a notification: no answer
             {"jsonrpc": "2.0", "id": "three", "method": "eth_blockNumber", "params": []}]
    out = {r["id"]: r for r in local.raw(json.dumps(batch))}
    assert set(out) == {1, 2, "three"}
    assert out[1]["result"] == hex(31337) and out[2]["error"]["code"] == -32601
    assert out["three"]["result"].startswith("0x")


def test_refused_transactions_say_why_and_change_nothing(local: LocalDevnet) -> None:
    alice, bob = local.accounts[0], local.accounts[1]
    local.send(alice, to=bob.address, value=1)  # nonce 0 is used
    before = snapshot_of_state(local)
    cases = {
        "nonce too low": local.sign(alice, to=bob.address, value=1, nonce=0),
        "insufficient funds for gas * price + value": local.sign(alice, to=bob.address, value=10**30),
        "intrinsic gas too low": local.sign(alice, to=bob.address, value=1, gas=20_000),
        "invalid chain id": local.sign(alice, to=bob.address, value=1, chainId=1),
        "max fee per gas less than block base fee": local.sign(alice, to=bob.address, maxFeePerGas=1,
                                                               maxPriorityFeePerGas=1),
        "exceeds block gas limit": local.sign(alice, to=bob.address, gas=31_000_000),
    }
    for words, raw in cases.items():
        err = error_of(local, "eth_sendRawTransaction", raw)
        assert err.code == -32000, words
        assert words in err.message
        assert snapshot_of_state(local) == before
    assert local.send(alice, to=bob.address, value=1)["status"] == "0x1"  # still serving


def test_a_transaction_with_a_broken_signature_is_refused(local: LocalDevnet) -> None:
    alice = local.accounts[0]
    signed = Account.sign_transaction(
        {"chainId": 31337, "nonce": 0, "to": local.accounts[1].address, "value": 1, "gas": 21_000,
         "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 1, "type": 2}, alice.private_key)
    raw = bytes(signed.raw_transaction)
    # s = 0 is never a valid signature
    broken = raw.replace(signed.s.to_bytes(32, "big"), bytes(32))
    before = snapshot_of_state(local)
    err = error_of(local, "eth_sendRawTransaction", "0x" + broken.hex())
    assert err.code in (-32000, -32602) and ("signature" in err.message or "decode" in err.message)
    assert snapshot_of_state(local) == before


def test_state_queries_past_the_head_are_refused(local: LocalDevnet) -> None:
    err = error_of(local, "eth_getBalance", local.accounts[0].address, "0x999")
    assert err.code == -32602 and "requested was 2457" in err.message
    assert local.rpc("eth_getBlockByNumber", "0x999", False) is None
    assert local.rpc("eth_getTransactionReceipt", "0x" + "00" * 32) is None


def test_a_request_without_the_jsonrpc_version_is_invalid(local: LocalDevnet) -> None:
    out = local.raw('{"id": 7, "method": "eth_chainId", "params": []}')
    assert out["error"]["code"] == -32600 and out["id"] == 7


def test_a_database_that_refuses_writes_stops_the_devnet_instead_of_diverging(local: LocalDevnet) -> None:
    fatal: list[str] = []
    local.app.on_fatal = fatal.append
    head = local.rpc("eth_blockNumber")
    local.store.conn.exec_driver_sql("PRAGMA query_only = ON")  # every write now fails
    out = local.raw(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "evm_mine", "params": []}))
    assert out["error"]["code"] == -32603
    assert "database failure" in out["error"]["message"]
    assert fatal and "cannot write block" in fatal[0]
    local.store.conn.exec_driver_sql("PRAGMA query_only = OFF")
    local.close()
    local.open()  # what is on disk is still a consistent chain at the last good block
    assert local.rpc("eth_blockNumber") == head
    assert local.rpc("eth_getBlockByNumber", head, False)["number"] == head
