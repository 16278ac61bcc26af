"""Transactions, receipts, blocks and reverts on the in-process devnet (real py-evm chain)."""

from __future__ import annotations

from eth_abi import encode as abi_encode
from eth_utils import function_signature_to_4byte_selector as selector
from eth_utils import keccak

from tests.devnet.local import LocalDevnet, Probe, RpcFailed


def call_data(sig: str, types: list[str], args: list[object]) -> str:
    return "0x" + (selector(sig) + abi_encode(types, args)).hex()


def test_a_signed_transfer_moves_value_and_mines_a_block_with_a_full_receipt(local: LocalDevnet) -> None:
    alice, bob = local.accounts[0], local.accounts[1]
    before = int(local.rpc("eth_getBalance", bob.address, "latest"), 16)
    head = int(local.rpc("eth_blockNumber"), 16)
    receipt = local.send(alice, to=bob.address, value=12345)
    assert receipt["status"] == "0x1"
    assert int(receipt["blockNumber"], 16) == head + 1
    assert int(receipt["gasUsed"], 16) == 21_000
    assert receipt["from"] == alice.address.lower() and receipt["to"] == bob.address.lower()
    assert int(local.rpc("eth_getBalance", bob.address, "latest"), 16) == before + 12345
    block = local.rpc("eth_getBlockByNumber", receipt["blockNumber"], True)
    assert block["hash"] == receipt["blockHash"]
    assert block["transactions"][0]["hash"] == receipt["transactionHash"]
    assert local.rpc("eth_getBlockByHash", block["hash"], False)["transactions"] == [receipt["transactionHash"]]
    tx = local.rpc("eth_getTransactionByHash", receipt["transactionHash"])
    assert tx["blockNumber"] == receipt["blockNumber"] and int(tx["value"], 16) == 12345
    # the balance at the previous block is still readable
    assert int(local.rpc("eth_getBalance", bob.address, hex(head)), 16) == before


def test_a_contract_deploys_and_its_code_storage_and_calls_are_readable(local: LocalDevnet, probe: Probe) -> None:
    owner = local.accounts[0]
    address = local.deploy(owner, probe)
    assert local.rpc("eth_getCode", address, "latest") != "0x"
    receipt = local.send(owner, to=address, data=call_data("ping(uint256)", ["uint256"], [7]), gas=100_000)
    assert receipt["status"] == "0x1"
    assert int(local.rpc("eth_getStorageAt", address, "0x0", "latest"), 16) == 7
    out = local.rpc("eth_call", {"to": address, "data": call_data("double(uint256)", ["uint256"], [4])}, "latest")
    assert int(out, 16) == 8


def test_eth_call_revert_carries_the_abi_encoded_reason_like_anvil(local: LocalDevnet, probe: Probe) -> None:
    address = local.deploy(local.accounts[0], probe)
    try:
        local.rpc("eth_call", {"to": address, "data": call_data("double(uint256)", ["uint256"], [11])})
    except RpcFailed as err:
        assert err.code == 3
        assert err.message == "execution reverted: too big"
        assert err.data == "0x08c379a0" + abi_encode(["string"], ["too big"]).hex()
    else:
        raise AssertionError("eth_call should have reverted")


def test_estimate_gas_and_send_transaction_surface_the_revert_before_sending(
    local: LocalDevnet, probe: Probe
) -> None:
    sender = local.accounts[0]
    address = local.deploy(sender, probe)
    data = call_data("fail(string)", ["string"], ["no way"])
    head = local.rpc("eth_blockNumber")
    for method in ("eth_estimateGas", "eth_sendTransaction"):
        try:
            local.rpc(method, {"from": sender.address, "to": address, "data": data})
        except RpcFailed as err:
            assert (err.code, err.message) == (3, "execution reverted: no way")
            assert err.data.startswith("0x08c379a0")
        else:
            raise AssertionError(f"{method} should have reverted")
    assert local.rpc("eth_blockNumber") == head  # nothing was mined


def test_a_reverting_raw_transaction_is_mined_with_status_zero(local: LocalDevnet, probe: Probe) -> None:
    sender = local.accounts[0]
    address = local.deploy(sender, probe)
    nonce = int(local.rpc("eth_getTransactionCount", sender.address, "latest"), 16)
    receipt = local.send(sender, to=address, data=call_data("fail(string)", ["string"], ["x"]), gas=100_000)
    assert receipt["status"] == "0x0"
    assert receipt["logs"] == []
    assert int(local.rpc("eth_getTransactionCount", sender.address, "latest"), 16) == nonce + 1


def test_estimate_gas_is_enough_and_tight(local: LocalDevnet, probe: Probe) -> None:
    sender = local.accounts[0]
    address = local.deploy(sender, probe)
    data = call_data("ping(uint256)", ["uint256"], [5])
    estimate = int(local.rpc("eth_estimateGas", {"from": sender.address, "to": address, "data": data}), 16)
    assert local.send(sender, to=address, data=data, gas=estimate)["status"] == "0x1"
    data2 = call_data("ping(uint256)", ["uint256"], [6])
    estimate2 = int(local.rpc("eth_estimateGas", {"from": sender.address, "to": address, "data": data2}), 16)
    # one gas less than the estimate runs out of gas (the estimate is the minimum)
    assert local.send(sender, to=address, data=data2, gas=estimate2 - 1)["status"] == "0x0"


def test_send_transaction_signs_for_dev_accounts_and_refuses_others(local: LocalDevnet) -> None:
    a, b = local.accounts[2], local.accounts[3]
    tx_hash = local.rpc("eth_sendTransaction", {"from": a.address, "to": b.address, "value": "0x5"})
    assert local.rpc("eth_getTransactionReceipt", tx_hash)["status"] == "0x1"
    stranger = "0x" + "12" * 20
    try:
        local.rpc("eth_sendTransaction", {"from": stranger, "to": b.address, "value": "0x1"})
    except RpcFailed as err:
        assert err.code == -32000 and "unknown account" in err.message
    else:
        raise AssertionError("a non-dev account must be refused")


def test_a_transaction_sent_ahead_of_its_nonce_waits_for_the_gap_to_close(local: LocalDevnet) -> None:
    a, b = local.accounts[4], local.accounts[5]
    nonce = int(local.rpc("eth_getTransactionCount", a.address, "latest"), 16)
    later = local.rpc("eth_sendRawTransaction", local.sign(a, to=b.address, value=2, nonce=nonce + 1))
    assert local.rpc("eth_getTransactionReceipt", later) is None
    assert local.rpc("eth_getTransactionByHash", later)["blockNumber"] is None
    local.rpc("eth_sendRawTransaction", local.sign(a, to=b.address, value=1, nonce=nonce))
    assert local.rpc("eth_getTransactionReceipt", later)["status"] == "0x1"
    assert int(local.rpc("eth_getTransactionCount", a.address, "latest"), 16) == nonce + 2


def test_fee_methods_answer_consistently_with_the_latest_block(local: LocalDevnet) -> None:
    local.send(local.accounts[0], to=local.accounts[1].address, value=1)
    latest = local.rpc("eth_getBlockByNumber", "latest", False)
    assert int(local.rpc("eth_gasPrice"), 16) >= int(latest["baseFeePerGas"], 16)
    assert int(local.rpc("eth_maxPriorityFeePerGas"), 16) > 0
    history = local.rpc("eth_feeHistory", "0x2", "latest", [50])
    assert len(history["baseFeePerGas"]) == 3 and len(history["gasUsedRatio"]) == 2
    assert history["baseFeePerGas"][1] == latest["baseFeePerGas"]
    assert len(history["reward"]) == 2


def test_meta_methods_describe_the_devnet(local: LocalDevnet) -> None:
    assert local.rpc("eth_chainId") == hex(31337)
    assert local.rpc("net_version") == "31337"
    assert local.rpc("eth_accounts")[0] == local.accounts[0].address.lower()
    assert "veriplex" in local.rpc("web3_clientVersion")
    assert local.rpc("web3_sha3", "0x") == "0x" + keccak(b"").hex()


def test_legacy_and_access_list_transactions_are_accepted_and_reported(local: LocalDevnet) -> None:
    alice, bob = local.accounts[6], local.accounts[7]
    base = int(local.rpc("eth_getBlockByNumber", "latest", False)["baseFeePerGas"], 16)
    legacy = local.send(alice, to=bob.address, value=3, gasPrice=base + 10, type=None,
                        maxFeePerGas=None, maxPriorityFeePerGas=None)
    assert legacy["status"] == "0x1" and legacy["type"] == "0x0"
    tx = local.rpc("eth_getTransactionByHash", legacy["transactionHash"])
    assert tx["type"] == "0x0" and int(tx["gasPrice"], 16) == base + 10 and tx["chainId"] == hex(31337)
    berlin = local.send(alice, to=bob.address, value=4, gasPrice=base + 10, type=1,
                        accessList=[{"address": bob.address, "storageKeys": ["0x" + "00" * 32]}],
                        gas=30_000, maxFeePerGas=None, maxPriorityFeePerGas=None)
    assert berlin["status"] == "0x1" and berlin["type"] == "0x1"
    tx = local.rpc("eth_getTransactionByHash", berlin["transactionHash"])
    assert tx["accessList"] == [{"address": bob.address.lower(), "storageKeys": ["0x" + "00" * 32]}]
