"""Conformance: deploy, value transfer, calls, state queries, transactions, receipts and blocks."""

from __future__ import annotations

from eth_utils import keccak


def _word(value: int) -> str:
    return "0x" + value.to_bytes(32, "big").hex()


def test_value_transfer_moves_exactly_value_plus_fee(chain):
    q = chain.rpc.quantity
    sender, recipient = chain.accounts[1], chain.accounts[2]
    value = 10**15 + 12345
    before_block = chain.block_number()
    sender_before = chain.balance(sender.address)
    recipient_before = chain.balance(recipient.address)
    nonce_before = chain.nonce(sender.address)

    receipt = chain.transact(sender, {"to": recipient.address, "value": value})

    assert receipt["status"] == "0x1"
    assert q(receipt["gasUsed"]) == 21000
    fee = q(receipt["gasUsed"]) * q(receipt["effectiveGasPrice"])
    assert chain.balance(sender.address) == sender_before - value - fee
    assert chain.balance(recipient.address) == recipient_before + value
    assert chain.nonce(sender.address) == nonce_before + 1
    # Historical state is still answered at the block before the transfer.
    assert chain.balance(sender.address, before_block) == sender_before
    assert chain.balance(recipient.address, before_block) == recipient_before


def test_send_transaction_signs_with_an_unlocked_dev_account(chain):
    sender, recipient = chain.accounts[0], chain.accounts[3]
    recipient_before = chain.balance(recipient.address)
    tx_hash = chain.rpc.call(
        "eth_sendTransaction",
        {"from": sender.address, "to": recipient.address, "value": hex(777)},
    )
    receipt = chain.wait(tx_hash)
    assert receipt["status"] == "0x1"
    assert receipt["from"].lower() == sender.address.lower()
    assert chain.balance(recipient.address) == recipient_before + 777
    tx = chain.rpc.call("eth_getTransactionByHash", tx_hash)
    assert tx["from"].lower() == sender.address.lower()
    assert chain.rpc.quantity(tx["value"]) == 777


def test_deployment_receipt_names_the_contract_whose_code_is_the_runtime_bytecode(chain, probe):
    receipt = probe.deploy_receipt
    assert receipt["to"] is None
    assert receipt["contractAddress"].lower() == probe.address.lower()
    assert chain.rpc.call("eth_getCode", probe.address, "latest") == probe.runtime
    deploy_block = chain.rpc.quantity(receipt["blockNumber"])
    assert chain.rpc.call("eth_getCode", probe.address, hex(deploy_block - 1)) == "0x"


def test_storage_slots_hold_the_constructor_state(chain, probe):
    owner_word = chain.rpc.call(
        "eth_getStorageAt", probe.address, hex(probe.slots["owner"]), "latest"
    )
    assert owner_word == "0x" + "00" * 12 + probe.owner[2:].lower()
    total_word = chain.rpc.call(
        "eth_getStorageAt", probe.address, hex(probe.slots["total"]), "latest"
    )
    assert total_word == _word(probe.initial_total)
    assert chain.rpc.call("eth_getStorageAt", probe.address, hex(99), "latest") == _word(0)


def test_a_state_change_is_visible_to_eth_call_and_storage(chain, probe):
    key, amount = 5, 41
    receipt = chain.transact(
        chain.accounts[1], {"to": probe.address, "data": probe.data("set_value", key, amount)}
    )
    assert receipt["status"] == "0x1"
    call = {"to": probe.address, "data": probe.data("values", key)}
    assert probe.decode("values", chain.rpc.call("eth_call", call, "latest")) == amount
    total_call = {"to": probe.address, "data": probe.data("total")}
    assert probe.decode("total", chain.rpc.call("eth_call", total_call, "latest")) == (
        probe.initial_total + amount
    )
    # eth_call at the previous block sees the old state.
    before = hex(chain.rpc.quantity(receipt["blockNumber"]) - 1)
    assert probe.decode("values", chain.rpc.call("eth_call", call, before)) == 0
    # Vyper places HashMap entries at keccak(slot . key) (Solidity's order is the reverse).
    slot = keccak(probe.slots["values"].to_bytes(32, "big") + key.to_bytes(32, "big"))
    stored = chain.rpc.call("eth_getStorageAt", probe.address, "0x" + slot.hex(), "latest")
    assert stored == _word(amount)


def test_transaction_count_counts_mined_transactions_including_pending_tag(chain):
    sender = chain.accounts[2]
    latest = chain.nonce(sender.address, "latest")
    assert chain.nonce(sender.address, "pending") == latest
    chain.transact(sender, {"to": chain.accounts[3].address, "value": 1})
    assert chain.nonce(sender.address, "latest") == latest + 1
    assert chain.nonce(sender.address, "pending") == latest + 1
    assert chain.nonce(sender.address, hex(chain.block_number() - 1)) == latest


def test_transaction_by_hash_returns_the_signed_fields(chain, probe):
    q = chain.rpc.quantity
    sender = chain.accounts[1]
    data = probe.data("set_value", 9, 3)
    tx_hash = chain.send(sender, {"to": probe.address, "data": data, "value": 0})
    receipt = chain.wait(tx_hash)
    tx = chain.rpc.call("eth_getTransactionByHash", tx_hash)
    assert tx["hash"] == tx_hash
    assert tx["from"].lower() == sender.address.lower()
    assert tx["to"].lower() == probe.address.lower()
    assert tx["input"] == data
    assert tx["type"] == "0x2"
    assert q(tx["chainId"]) == chain.chain_id
    assert tx["blockHash"] == receipt["blockHash"]
    assert tx["blockNumber"] == receipt["blockNumber"]
    assert tx["transactionIndex"] == receipt["transactionIndex"]
    assert q(tx["nonce"]) == chain.nonce(sender.address) - 1
    for name in ("gas", "maxFeePerGas", "maxPriorityFeePerGas", "value", "r", "s"):
        q(tx[name])
    assert tx.get("yParity", tx.get("v")) in ("0x0", "0x1")
    assert chain.rpc.call("eth_getTransactionByHash", "0x" + "ab" * 32) is None
    assert chain.rpc.call("eth_getTransactionReceipt", "0x" + "ab" * 32) is None


def test_receipt_fields_describe_the_mined_transaction(chain, probe):
    q = chain.rpc.quantity
    sender = chain.accounts[1]
    receipt = chain.transact(sender, {"to": probe.address, "data": probe.data("set_value", 2, 8)})
    block = chain.block(q(receipt["blockNumber"]))
    assert receipt["blockHash"] == block["hash"]
    assert receipt["transactionHash"] in block["transactions"]
    assert receipt["from"].lower() == sender.address.lower()
    assert receipt["to"].lower() == probe.address.lower()
    assert receipt["contractAddress"] is None
    assert receipt["type"] == "0x2"
    assert q(receipt["cumulativeGasUsed"]) >= q(receipt["gasUsed"]) > 21000
    base_fee = q(block["baseFeePerGas"])
    assert q(receipt["effectiveGasPrice"]) >= base_fee
    assert len(receipt["logsBloom"]) == 2 + 512
    assert int(receipt["logsBloom"], 16) != 0, "a receipt with a log has a nonzero bloom"
    (log,) = receipt["logs"]
    assert log["transactionHash"] == receipt["transactionHash"]
    assert log["blockHash"] == receipt["blockHash"]
    assert log["blockNumber"] == receipt["blockNumber"]
    assert log["address"].lower() == probe.address.lower()
    assert log["removed"] is False


def test_blocks_chain_by_parent_hash_with_consistent_fields(chain):
    q = chain.rpc.quantity
    sender = chain.accounts[1]
    first = chain.transact(sender, {"to": chain.accounts[2].address, "value": 5})
    second = chain.transact(sender, {"to": chain.accounts[3].address, "value": 6})
    block = chain.block(q(second["blockNumber"]), full=False)
    parent = chain.block(q(second["blockNumber"]) - 1, full=False)

    assert q(block["number"]) == q(parent["number"]) + 1
    assert block["parentHash"] == parent["hash"]
    assert q(block["timestamp"]) >= q(parent["timestamp"])
    assert len(block["hash"]) == 66 and block["hash"] != parent["hash"]
    assert second["transactionHash"] in block["transactions"]
    assert first["transactionHash"] in parent["transactions"], "instant mining: one block per tx"
    assert q(block["gasUsed"]) == sum(
        q(chain.rpc.call("eth_getTransactionReceipt", h)["gasUsed"]) for h in block["transactions"]
    )
    assert q(block["gasLimit"]) >= q(block["gasUsed"])
    q(block["baseFeePerGas"])
    assert chain.rpc.call("eth_getBlockByHash", block["hash"], False) == block
    assert chain.block("latest")["hash"] == chain.block(chain.block_number())["hash"]
    assert chain.rpc.call("eth_getBlockByNumber", hex(chain.block_number() + 1000), False) is None
    assert chain.rpc.call("eth_getBlockByHash", "0x" + "cd" * 32, False) is None


def test_full_blocks_carry_transaction_objects_matching_the_hash_list(chain):
    receipt = chain.transact(chain.accounts[1], {"to": chain.accounts[2].address, "value": 9})
    number = chain.rpc.quantity(receipt["blockNumber"])
    hashes = chain.block(number, full=False)["transactions"]
    full = chain.block(number, full=True)["transactions"]
    assert [tx["hash"] for tx in full] == hashes
    for index, tx in enumerate(full):
        assert tx == chain.rpc.call("eth_getTransactionByHash", tx["hash"])
        assert chain.rpc.quantity(tx["transactionIndex"]) == index
    genesis = chain.block(0)
    assert chain.rpc.quantity(genesis["number"]) == 0
    assert genesis["parentHash"] == "0x" + "00" * 32


def test_a_batch_of_signed_transactions_is_mined_in_nonce_order(chain):
    sender, recipient = chain.accounts[1], chain.accounts[2]
    nonce = chain.nonce(sender.address, "pending")
    recipient_before = chain.balance(recipient.address)
    raws = [
        chain.sign(sender, {"to": recipient.address, "value": 100 + i, "nonce": nonce + i})
        for i in range(3)
    ]
    batch = [
        {"jsonrpc": "2.0", "id": i, "method": "eth_sendRawTransaction", "params": [raw]}
        for i, raw in enumerate(raws)
    ]
    answers = {a["id"]: a for a in chain.rpc.post_json(batch).json()}
    hashes = [answers[i]["result"] for i in range(3)]
    receipts = [chain.wait(h) for h in hashes]
    assert [r["status"] for r in receipts] == ["0x1"] * 3
    numbers = [chain.rpc.quantity(r["blockNumber"]) for r in receipts]
    assert numbers == sorted(numbers)
    txs = [chain.rpc.call("eth_getTransactionByHash", h) for h in hashes]
    assert [chain.rpc.quantity(tx["nonce"]) for tx in txs] == [nonce, nonce + 1, nonce + 2]
    assert chain.nonce(sender.address) == nonce + 3
    assert chain.balance(recipient.address) == recipient_before + 100 + 101 + 102
