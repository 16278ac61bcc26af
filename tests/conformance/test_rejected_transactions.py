"""Conformance: transactions a node must refuse at submission, with state left untouched.

Codes differ legitimately between nodes here (geth answers -32000 for all of these, anvil -32003
for pool rejections and -32602 for undecodable signatures), so the tests pin the behaviour — an
error object whose message names the cause the way geth and anvil both word it — rather than one
code. After each refusal the node must still serve, nothing is mined, and the sender's balance and
nonces (latest and pending) are as before.
"""

from __future__ import annotations

import re

import pytest
import rlp
from eth_account import Account
from eth_utils import keccak

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@pytest.fixture
def frozen(chain):
    """Records head, balances and nonces of the dev accounts; asserts they are unchanged after."""

    def snapshot():
        head = chain.block("latest")["hash"]
        per_account = [
            (chain.balance(a.address), chain.nonce(a.address), chain.nonce(a.address, "pending"))
            for a in chain.accounts
        ]
        return head, per_account

    before = snapshot()
    yield chain
    assert snapshot() == before, "a refused transaction changed the chain"
    receipt = chain.transact(chain.accounts[3], {"to": chain.accounts[0].address, "value": 1})
    assert receipt["status"] == "0x1", "node no longer mines good transactions after a refusal"


def _refused(chain, raw: str, pattern: str) -> None:
    err = chain.rpc.error("eth_sendRawTransaction", raw)
    assert re.search(pattern, err.message, re.IGNORECASE), f"{err.code}: {err.message!r}"
    tx_hash = "0x" + keccak(bytes.fromhex(raw[2:])).hex()
    assert chain.rpc.call("eth_getTransactionByHash", tx_hash) is None


def _resign_fields(raw: str, **changes: bytes) -> str:
    """Re-encode a signed EIP-1559 transaction with some of y_parity / r / s replaced."""
    payload = bytes.fromhex(raw[2:])
    assert payload[0] == 2, "expects a type-2 transaction"
    items = rlp.decode(payload[1:])
    index = {"y_parity": 9, "r": 10, "s": 11}
    for name, value in changes.items():
        items[index[name]] = value
    return "0x02" + rlp.encode(items).hex()


def test_transaction_with_an_invalid_signature_is_refused(frozen):
    raw = frozen.sign(frozen.accounts[1], {"to": frozen.accounts[2].address, "value": 1})
    high_s = _resign_fields(raw, s=(SECP256K1_N + 1).to_bytes(32, "big"))
    _refused(frozen, high_s, r"sign|v, r, s")
    zero_r = _resign_fields(raw, r=b"")
    _refused(frozen, zero_r, r"sign|v, r, s")


def test_transaction_signed_for_another_chain_is_refused(frozen):
    raw = frozen.sign(
        frozen.accounts[1], {"to": frozen.accounts[2].address, "value": 1, "chainId": 1}
    )
    _refused(frozen, raw, r"chain ?id")


def test_transaction_with_a_used_nonce_is_refused(chain):
    sender = chain.accounts[1]
    chain.transact(sender, {"to": chain.accounts[2].address, "value": 1})
    used = chain.nonce(sender.address) - 1
    raw = chain.sign(sender, {"to": chain.accounts[2].address, "value": 2, "nonce": used})
    balance, nonce = chain.balance(sender.address), chain.nonce(sender.address, "pending")
    head = chain.block_number()
    _refused(chain, raw, r"nonce too low")
    assert (chain.balance(sender.address), chain.nonce(sender.address, "pending")) == (
        balance,
        nonce,
    )
    assert chain.block_number() == head


def test_transaction_from_an_unfunded_account_is_refused(frozen):
    poor = Account.from_key(keccak(text="veriplex conformance: unfunded"))
    assert frozen.balance(poor.address) == 0
    raw = frozen.sign(poor, {"to": frozen.accounts[2].address, "value": 1, "gas": 21000})
    _refused(frozen, raw, r"insufficient funds")
    assert frozen.balance(poor.address) == 0
    assert frozen.nonce(poor.address, "pending") == 0


def test_transaction_sending_more_than_the_balance_is_refused(frozen):
    sender = frozen.accounts[1]
    too_much = frozen.balance(sender.address) + 1
    raw = frozen.sign(sender, {"to": frozen.accounts[2].address, "value": too_much, "gas": 21000})
    _refused(frozen, raw, r"insufficient funds")


def test_transaction_with_gas_below_the_intrinsic_cost_is_refused(frozen):
    raw = frozen.sign(
        frozen.accounts[1], {"to": frozen.accounts[2].address, "value": 1, "gas": 20999}
    )
    _refused(frozen, raw, r"intrinsic gas too low")


def test_transaction_with_fee_cap_below_the_base_fee_is_refused(frozen):
    # The last entry of eth_feeHistory is the base fee the next block will charge.
    history = frozen.rpc.call("eth_feeHistory", "0x1", "latest", [])
    next_base_fee = frozen.rpc.quantity(history["baseFeePerGas"][-1])
    assert next_base_fee > 1
    raw = frozen.sign(
        frozen.accounts[1],
        {
            "to": frozen.accounts[2].address,
            "value": 1,
            "gas": 21000,
            "maxFeePerGas": next_base_fee // 2,
            "maxPriorityFeePerGas": 0,
        },
    )
    _refused(frozen, raw, r"fee.*(less|lower|below).*base ?fee|fee cap.*too low")


def test_undecodable_raw_transaction_is_refused(frozen):
    raw = frozen.sign(frozen.accounts[1], {"to": frozen.accounts[2].address, "value": 1})
    err = frozen.rpc.error("eth_sendRawTransaction", raw[:-10])
    assert re.search(r"decode|rlp|invalid|malformed", err.message, re.IGNORECASE), err.message


def test_send_transaction_from_an_account_the_node_does_not_hold_is_refused(frozen):
    stranger = Account.from_key(keccak(text="veriplex conformance: stranger"))
    err = frozen.rpc.error(
        "eth_sendTransaction",
        {"from": stranger.address, "to": frozen.accounts[2].address, "value": "0x1"},
    )
    assert re.search(r"sign|unknown account|not.*(unlocked|available)", err.message, re.I), (
        err.message
    )
