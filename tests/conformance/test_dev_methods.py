"""Conformance: the development methods evm_snapshot, evm_revert, evm_mine, evm_increaseTime."""

from __future__ import annotations

import time


def test_revert_to_snapshot_restores_blocks_balances_nonces_and_storage(chain, probe):
    sender, recipient = chain.accounts[1], chain.accounts[2]
    block_before = chain.block_number()
    head_before = chain.block("latest")["hash"]
    balances_before = (chain.balance(sender.address), chain.balance(recipient.address))
    nonce_before = chain.nonce(sender.address)
    total_slot = hex(probe.slots["total"])
    total_before = chain.rpc.call("eth_getStorageAt", probe.address, total_slot, "latest")

    snapshot = chain.rpc.call("evm_snapshot")
    transfer = chain.transact(sender, {"to": recipient.address, "value": 10**18})
    chain.transact(sender, {"to": probe.address, "data": probe.data("set_value", 3, 4)})
    chain.mine()
    assert chain.block_number() == block_before + 3

    assert chain.rpc.call("evm_revert", snapshot) is True

    assert chain.block_number() == block_before
    assert chain.block("latest")["hash"] == head_before
    assert (chain.balance(sender.address), chain.balance(recipient.address)) == balances_before
    assert chain.nonce(sender.address) == nonce_before
    assert chain.nonce(sender.address, "pending") == nonce_before
    assert chain.rpc.call("eth_getStorageAt", probe.address, total_slot, "latest") == total_before
    assert chain.rpc.call("eth_getTransactionReceipt", transfer["transactionHash"]) is None
    assert chain.rpc.call("eth_getBlockByNumber", hex(block_before + 1), False) is None
    # The chain continues from the restored head.
    again = chain.transact(sender, {"to": recipient.address, "value": 1})
    assert chain.rpc.quantity(again["blockNumber"]) == block_before + 1


def test_a_snapshot_can_be_reverted_only_once(chain):
    snapshot = chain.rpc.call("evm_snapshot")
    chain.mine()
    assert chain.rpc.call("evm_revert", snapshot) is True
    assert chain.rpc.call("evm_revert", snapshot) is False


def test_nested_snapshots_revert_independently(chain):
    start = chain.block_number()
    outer = chain.rpc.call("evm_snapshot")
    chain.mine()
    inner = chain.rpc.call("evm_snapshot")
    assert inner != outer
    chain.mine()
    assert chain.rpc.call("evm_revert", inner) is True
    assert chain.block_number() == start + 1
    assert chain.rpc.call("evm_revert", outer) is True
    assert chain.block_number() == start


def test_evm_mine_adds_an_empty_block_on_top_of_the_head(chain):
    head = chain.block("latest")
    block = chain.mine()
    assert block["parentHash"] == head["hash"]
    assert block["transactions"] == []
    assert block["gasUsed"] == "0x0"
    assert chain.rpc.quantity(block["timestamp"]) >= chain.rpc.quantity(head["timestamp"])


def _mine_after_increase(chain, encoded) -> tuple[int, int, int, int]:
    """(head timestamp, wall clock before, new block timestamp, wall clock after)."""
    head = chain.rpc.quantity(chain.block("latest")["timestamp"])
    wall_before = int(time.time())
    chain.rpc.call("evm_increaseTime", encoded)
    block = chain.rpc.quantity(chain.mine()["timestamp"])
    return head, wall_before, block, int(time.time())


def test_increase_time_moves_the_next_block_timestamp_forward(chain):
    # The jump is added to the node's clock (the wall clock: same host). A node that needs strictly
    # increasing timestamps may run a few seconds ahead of the wall clock after rapid mining, so
    # the lower bound is the wall clock plus the jump, not the head plus the jump.
    jump = 3600
    head, wall_before, block, wall_after = _mine_after_increase(chain, jump)
    assert block > head
    # (one second of slack below: the node truncates its own clock, read a moment apart from ours)
    assert block >= wall_before + jump - 1
    # Upper bound: head + 1 (strictly increasing) or the clock plus the jump, whichever is later.
    assert block <= max(head + 1, wall_after + jump) + 1


def test_increase_time_accepts_a_hex_quantity(chain):
    head, wall_before, block, wall_after = _mine_after_increase(chain, hex(120))
    assert wall_before + 120 - 1 <= block <= max(head + 1, wall_after + 120) + 1


def test_time_jumps_are_undone_by_evm_revert(chain):
    snapshot = chain.rpc.call("evm_snapshot")
    chain.rpc.call("evm_increaseTime", 10 * 86400)
    chain.mine()
    assert chain.rpc.call("evm_revert", snapshot) is True
    head = chain.rpc.quantity(chain.block("latest")["timestamp"])
    block = chain.rpc.quantity(chain.mine()["timestamp"])
    assert block <= max(head + 1, int(time.time())) + 1, "the 10-day jump survived evm_revert"
