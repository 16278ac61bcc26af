"""Conformance under interval mining: pending transactions, and blocks holding several of them.

With instant mining every transaction gets its own block, so "pending" state and per-block
indices (transactionIndex, block-wide logIndex, cumulativeGasUsed) are never exercised. Here each
kind of node runs a second instance that mines every `block_time` seconds; the test acts
right after a block so it has nearly a whole interval before the next one.
"""

from __future__ import annotations

import time


def _wait_for_next_block(chain, interval: int) -> int:
    start = chain.block_number()
    deadline = time.monotonic() + 5 * interval
    while time.monotonic() < deadline:
        number = chain.block_number()
        if number > start:
            return number
        time.sleep(0.01)
    raise AssertionError(f"no block mined within {5 * interval} s on an interval-mining node")


def test_pending_transactions_count_then_share_one_block_with_block_wide_indices(
    interval_node, interval_chain, interval_probe
):
    chain, probe = interval_chain, interval_probe
    q = chain.rpc.quantity
    sender = chain.accounts[1]
    deposit = {"to": probe.address, "data": probe.data("deposit"), "gas": 100_000}
    head = _wait_for_next_block(chain, interval_node.block_time)
    nonce = chain.nonce(sender.address)
    raws = [chain.sign(sender, {**deposit, "value": 1 + i, "nonce": nonce + i}) for i in range(2)]
    batch = [
        {"jsonrpc": "2.0", "id": i, "method": "eth_sendRawTransaction", "params": [raw]}
        for i, raw in enumerate(raws)
    ]
    answers = {a["id"]: a for a in chain.rpc.post_json(batch).json()}
    hashes = [answers[i]["result"] for i in range(2)]

    # Before the next block: the pool counts them, nothing is mined.
    assert chain.nonce(sender.address, "pending") == nonce + 2
    assert chain.nonce(sender.address, "latest") == nonce
    assert [chain.rpc.call("eth_getTransactionReceipt", h) for h in hashes] == [None, None]
    pending_tx = chain.rpc.call("eth_getTransactionByHash", hashes[0])
    assert pending_tx["hash"] == hashes[0]
    assert pending_tx["blockHash"] is None and pending_tx["blockNumber"] is None
    assert chain.block_number() == head, "the checks above raced the next block (machine stalled)"

    receipts = [chain.wait(h) for h in hashes]

    assert receipts[0]["blockHash"] == receipts[1]["blockHash"]
    assert [q(r["transactionIndex"]) for r in receipts] == [0, 1]
    assert [r["status"] for r in receipts] == ["0x1", "0x1"]
    assert q(receipts[0]["cumulativeGasUsed"]) == q(receipts[0]["gasUsed"])
    assert q(receipts[1]["cumulativeGasUsed"]) == (
        q(receipts[0]["gasUsed"]) + q(receipts[1]["gasUsed"])
    )
    # logIndex counts logs across the whole block, not per transaction.
    assert [q(r["logs"][0]["logIndex"]) for r in receipts] == [0, 1]
    assert [q(r["logs"][0]["transactionIndex"]) for r in receipts] == [0, 1]

    number = q(receipts[0]["blockNumber"])
    block = chain.block(number)
    assert block["transactions"] == hashes
    assert q(block["gasUsed"]) == q(receipts[1]["cumulativeGasUsed"])
    full = chain.block(number, full=True)["transactions"]
    assert [tx["hash"] for tx in full] == hashes
    assert [q(tx["nonce"]) for tx in full] == [nonce, nonce + 1]
    logs = chain.rpc.call("eth_getLogs", {"blockHash": block["hash"]})
    assert logs == [receipts[0]["logs"][0], receipts[1]["logs"][0]]
    assert chain.nonce(sender.address, "pending") == chain.nonce(sender.address) == nonce + 2


def test_blocks_keep_coming_without_transactions(interval_node, interval_chain):
    interval = interval_node.block_time
    first = _wait_for_next_block(interval_chain, interval)
    second = _wait_for_next_block(interval_chain, interval)
    assert second == first + 1
    a, b = interval_chain.block(first), interval_chain.block(second)
    assert b["parentHash"] == a["hash"]
    gap = interval_chain.rpc.quantity(b["timestamp"]) - interval_chain.rpc.quantity(a["timestamp"])
    assert interval - 1 <= gap <= interval + 1
