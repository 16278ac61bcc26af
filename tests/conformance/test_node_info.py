"""Conformance: node identity, dev accounts and fee-market queries answer like a standard node."""

from __future__ import annotations

import re


def test_client_version_is_a_nonempty_name_with_version(rpc):
    version = rpc.call("web3_clientVersion")
    assert isinstance(version, str)
    assert re.fullmatch(r"\S+/\S+.*", version), f"not 'name/version...': {version!r}"


def test_net_version_is_the_decimal_chain_id(rpc, node):
    assert rpc.quantity(rpc.call("eth_chainId")) == node.chain_id
    assert rpc.call("net_version") == str(node.chain_id)


def test_eth_accounts_are_the_funded_mnemonic_accounts_in_order(rpc, dev_accounts):
    accounts = rpc.call("eth_accounts")
    assert len(accounts) >= len(dev_accounts)
    for listed, derived in zip(accounts, dev_accounts, strict=False):
        assert listed.lower() == derived.address.lower()
        assert rpc.quantity(rpc.call("eth_getBalance", listed, "latest")) > 0


def test_balance_of_an_unused_address_is_zero(rpc):
    assert rpc.call("eth_getBalance", "0x" + "5a" * 20, "latest") == "0x0"
    assert rpc.call("eth_getTransactionCount", "0x" + "5a" * 20, "latest") == "0x0"
    assert rpc.call("eth_getCode", "0x" + "5a" * 20, "latest") == "0x"


def test_gas_price_and_priority_fee_are_quantities_consistent_with_the_base_fee(chain):
    gas_price = chain.rpc.quantity(chain.rpc.call("eth_gasPrice"))
    tip = chain.rpc.quantity(chain.rpc.call("eth_maxPriorityFeePerGas"))
    assert gas_price > 0
    assert 0 <= tip <= gas_price


def test_a_transaction_priced_at_the_suggested_fees_is_mined(chain):
    sender, recipient = chain.accounts[1], chain.accounts[2]
    tip = chain.rpc.quantity(chain.rpc.call("eth_maxPriorityFeePerGas"))
    gas_price = chain.rpc.quantity(chain.rpc.call("eth_gasPrice"))
    receipt = chain.transact(
        sender,
        {
            "to": recipient.address,
            "value": 1,
            "maxFeePerGas": gas_price,
            "maxPriorityFeePerGas": min(tip, gas_price),
        },
    )
    assert receipt["status"] == "0x1"
    legacy = chain.transact(sender, {"to": recipient.address, "value": 1, "gasPrice": gas_price})
    assert legacy["status"] == "0x1"
    assert legacy["type"] == "0x0"
    assert chain.rpc.quantity(legacy["effectiveGasPrice"]) == gas_price


def test_fee_history_matches_the_base_fees_of_its_blocks(chain):
    for _ in range(3):
        chain.mine()
    latest = chain.block_number()
    history = chain.rpc.call("eth_feeHistory", hex(3), "latest", [25, 75])
    oldest = chain.rpc.quantity(history["oldestBlock"])
    base_fees = [chain.rpc.quantity(v) for v in history["baseFeePerGas"]]
    assert oldest == latest - 2
    assert len(base_fees) == 4, "blockCount base fees plus the next block's"
    assert len(history["gasUsedRatio"]) == 3
    assert len(history["reward"]) == 3
    assert all(len(percentiles) == 2 for percentiles in history["reward"])
    for offset in range(3):
        block = chain.block(oldest + offset)
        assert base_fees[offset] == chain.rpc.quantity(block["baseFeePerGas"])
        expected_ratio = chain.rpc.quantity(block["gasUsed"]) / chain.rpc.quantity(
            block["gasLimit"]
        )
        assert abs(history["gasUsedRatio"][offset] - expected_ratio) < 1e-9
    next_block = chain.mine()
    assert chain.rpc.quantity(next_block["baseFeePerGas"]) == base_fees[-1]


def test_fee_history_accepts_a_hex_or_decimal_block_count(chain):
    for _ in range(2):
        chain.mine()
    as_hex = chain.rpc.call("eth_feeHistory", "0x2", "latest", [])
    as_int = chain.rpc.call("eth_feeHistory", 2, "latest", [])
    assert as_hex["baseFeePerGas"] == as_int["baseFeePerGas"]
    assert as_hex["oldestBlock"] == as_int["oldestBlock"]
