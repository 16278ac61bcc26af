"""Conformance: reverts come back as code 3 errors carrying ABI-encoded Error(string) data.

Clients (web3, ethers, our `contracts` package) decode the revert reason from `error.data`, so a
node must return the revert data itself, not only a message. A reverting transaction that is
mined anyway (sent with an explicit gas limit) yields a receipt with status 0 and leaves the
contract state untouched.
"""

from __future__ import annotations

import pytest
from eth_abi import decode as abi_decode
from web3 import Web3
from web3.exceptions import ContractLogicError

ERROR_SELECTOR = "0x08c379a0"  # bytes4(keccak("Error(string)"))


def _reason(data: str) -> str:
    assert isinstance(data, str) and data.startswith(ERROR_SELECTOR), f"not Error(string): {data!r}"
    (reason,) = abi_decode(["string"], bytes.fromhex(data[len(ERROR_SELECTOR) :]))
    return reason


def _assert_revert(err, reason: str) -> None:
    assert err.code == 3, f"revert should be code 3, got {err.code}: {err.message}"
    assert _reason(err.data) == reason
    assert "execution reverted" in err.message
    assert reason in err.message


def test_eth_call_revert_returns_code_3_and_the_encoded_reason(chain, probe):
    err = chain.rpc.error(
        "eth_call",
        {
            "from": chain.accounts[1].address,
            "to": probe.address,
            "data": probe.data("set_value", 1, 0),
        },
        "latest",
    )
    _assert_revert(err, "probe: amount must be nonzero")


def test_view_function_revert_carries_its_reason(chain, probe):
    err = chain.rpc.error(
        "eth_call",
        {"to": probe.address, "data": probe.data("must_be_owner", "0x" + "11" * 20)},
        "latest",
    )
    _assert_revert(err, "probe: not the owner")
    ok = chain.rpc.call(
        "eth_call",
        {"to": probe.address, "data": probe.data("must_be_owner", probe.owner)},
        "latest",
    )
    assert probe.decode("must_be_owner", ok) is True


def test_estimate_gas_of_a_reverting_call_returns_the_revert(chain, probe):
    err = chain.rpc.error(
        "eth_estimateGas",
        {
            "from": chain.accounts[1].address,
            "to": probe.address,
            "data": probe.data("set_value", 1, 0),
        },
    )
    _assert_revert(err, "probe: amount must be nonzero")


def test_mined_reverting_transaction_has_status_0_and_changes_nothing_but_nonce_and_fee(
    chain, probe
):
    q = chain.rpc.quantity
    sender = chain.accounts[1]
    total_slot = hex(probe.slots["total"])
    total_before = chain.rpc.call("eth_getStorageAt", probe.address, total_slot, "latest")
    balance_before = chain.balance(sender.address)
    nonce_before = chain.nonce(sender.address)

    tx_hash = chain.send(
        sender, {"to": probe.address, "data": probe.data("set_value", 1, 0), "gas": 100_000}
    )
    receipt = chain.wait(tx_hash)

    assert receipt["status"] == "0x0"
    assert receipt["logs"] == []
    assert 21000 < q(receipt["gasUsed"]) < 100_000
    assert chain.nonce(sender.address) == nonce_before + 1
    fee = q(receipt["gasUsed"]) * q(receipt["effectiveGasPrice"])
    assert chain.balance(sender.address) == balance_before - fee
    assert chain.rpc.call("eth_getStorageAt", probe.address, total_slot, "latest") == total_before
    assert chain.rpc.call("eth_getTransactionByHash", tx_hash)["hash"] == tx_hash


def test_web3_client_surfaces_the_revert_reason_as_contract_logic_error(node, probe):
    w3 = Web3(Web3.HTTPProvider(node.url))
    contract = w3.eth.contract(address=probe.address, abi=probe.abi)
    with pytest.raises(ContractLogicError, match="probe: amount must be nonzero") as info:
        contract.functions.set_value(1, 0).call({"from": probe.owner})
    assert _reason(info.value.data) == "probe: amount must be nonzero"
    assert contract.functions.total().call() == probe.initial_total


def test_web3_client_deploys_and_transacts_through_the_node(node, chain, probe_build):
    w3 = Web3(Web3.HTTPProvider(node.url))
    sender = w3.to_checksum_address(chain.accounts[2].address)
    factory = w3.eth.contract(abi=probe_build["abi"], bytecode=probe_build["bytecode"])
    deploy_hash = factory.constructor(3).transact({"from": sender})
    deployed = w3.eth.wait_for_transaction_receipt(deploy_hash, timeout=15)
    assert deployed.status == 1
    contract = w3.eth.contract(address=deployed.contractAddress, abi=probe_build["abi"])
    tx_hash = contract.functions.set_value(4, 10).transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=15)
    assert receipt.status == 1
    (event,) = contract.events.ValueSet().process_receipt(receipt)
    assert (event.args.setter, event.args.key, event.args.value) == (sender, 4, 10)
    assert contract.functions.total().call() == 13
    assert contract.functions.owner().call() == sender


def test_custom_revert_data_is_returned_verbatim(chain, probe):
    payload = bytes.fromhex("deadbeef0102")
    err = chain.rpc.error(
        "eth_call", {"to": probe.address, "data": probe.data("fail_with", payload)}, "latest"
    )
    assert err.code == 3
    assert err.data == "0x" + payload.hex()
    assert "execution reverted" in err.message


def test_revert_without_data_is_an_execution_reverted_error(chain, probe):
    for method, params in (
        ("eth_call", [{"to": probe.address, "data": probe.data("fail_silently")}, "latest"]),
        ("eth_estimateGas", [{"to": probe.address, "data": probe.data("fail_silently")}]),
    ):
        err = chain.rpc.error(method, *params)
        # geth answers an empty revert with -32000 and no data, anvil with code 3 and data "0x".
        assert err.code in (3, -32000), f"{method}: {err.code} {err.message}"
        assert err.data in (None, "0x"), f"{method}: {err.data!r}"
        assert "execution reverted" in err.message


def test_estimated_gas_is_enough_for_the_transaction(chain, probe):
    sender = chain.accounts[1]
    data = probe.data("burn_gas", 40)
    estimate = chain.rpc.quantity(
        chain.rpc.call(
            "eth_estimateGas", {"from": sender.address, "to": probe.address, "data": data}
        )
    )
    receipt = chain.transact(sender, {"to": probe.address, "data": data, "gas": estimate})
    assert receipt["status"] == "0x1"
    assert chain.rpc.quantity(receipt["gasUsed"]) <= estimate
    transfer = chain.rpc.call(
        "eth_estimateGas", {"from": sender.address, "to": chain.accounts[2].address, "value": "0x1"}
    )
    assert chain.rpc.quantity(transfer) == 21000
