"""evm_snapshot/evm_revert, time travel, and state surviving a stop/start of the store."""

from __future__ import annotations

import sqlite3

from eth_abi import encode as abi_encode
from eth_utils import function_signature_to_4byte_selector

from tests.devnet.local import LocalDevnet, Probe


def ping_data(n: int) -> str:
    return "0x" + (function_signature_to_4byte_selector("ping(uint256)") + abi_encode(["uint256"], [n])).hex()


def test_revert_restores_state_blocks_receipts_and_logs(local: LocalDevnet, probe: Probe) -> None:
    owner, bob = local.accounts[0], local.accounts[1]
    address = local.deploy(owner, probe)
    local.send(owner, to=address, data=ping_data(1), gas=100_000)
    head = local.rpc("eth_blockNumber")
    balance = local.rpc("eth_getBalance", bob.address, "latest")
    snap = local.rpc("evm_snapshot")
    r = local.send(owner, to=address, data=ping_data(2), gas=100_000)
    local.send(owner, to=bob.address, value=10**18)
    assert local.rpc("evm_revert", snap) is True
    assert local.rpc("eth_blockNumber") == head
    assert local.rpc("eth_getBalance", bob.address, "latest") == balance
    assert int(local.rpc("eth_getStorageAt", address, "0x0", "latest"), 16) == 1
    assert local.rpc("eth_getTransactionReceipt", r["transactionHash"]) is None
    assert len(local.rpc("eth_getLogs", {"fromBlock": "0x0", "address": address})) == 1
    assert local.rpc("evm_revert", snap) is False  # a snapshot is used up by reverting to it
    # the chain goes on from the snapshot, with new blocks at the reverted heights
    again = local.send(owner, to=address, data=ping_data(3), gas=100_000)
    assert int(again["blockNumber"], 16) == int(head, 16) + 1
    assert again["blockHash"] != r["blockHash"]
    assert local.rpc("eth_getBlockByNumber", again["blockNumber"], False)["hash"] == again["blockHash"]
    # and the file agrees after a restart: the reverted branch is gone for good
    local.close()
    local.open()
    assert local.rpc("eth_getTransactionReceipt", r["transactionHash"]) is None
    assert local.rpc("eth_getTransactionReceipt", again["transactionHash"]) == again
    assert local.rpc("eth_getBalance", bob.address, "latest") == balance
    assert [int(lg["topics"][2], 16) for lg in local.rpc("eth_getLogs", {"fromBlock": "0x0", "address": address})] == [1, 3]


def test_revert_to_an_earlier_snapshot_drops_the_later_ones(local: LocalDevnet) -> None:
    first = local.rpc("evm_snapshot")
    local.rpc("evm_mine")
    second = local.rpc("evm_snapshot")
    local.rpc("evm_mine")
    assert local.rpc("evm_revert", first) is True
    assert local.rpc("evm_revert", second) is False


def test_increase_time_moves_the_next_block_timestamp(local: LocalDevnet) -> None:
    local.rpc("evm_mine")
    before = int(local.rpc("eth_getBlockByNumber", "latest", False)["timestamp"], 16)
    total = local.rpc("evm_increaseTime", "0xe10")  # one hour
    assert total >= 3600
    local.rpc("evm_mine")
    after = int(local.rpc("eth_getBlockByNumber", "latest", False)["timestamp"], 16)
    assert after >= before + 3600
    local.rpc("evm_mine", hex(after + 100))
    assert int(local.rpc("eth_getBlockByNumber", "latest", False)["timestamp"], 16) == after + 100


def test_stop_and_start_keeps_blocks_balances_storage_receipts_logs_and_time(
    local: LocalDevnet, probe: Probe
) -> None:
    owner, bob = local.accounts[0], local.accounts[1]
    address = local.deploy(owner, probe)
    receipt = local.send(owner, to=address, data=ping_data(42), gas=100_000)
    local.send(owner, to=bob.address, value=777)
    local.rpc("evm_increaseTime", "0x100")
    seen = {
        "head": local.rpc("eth_blockNumber"),
        "block": local.rpc("eth_getBlockByNumber", "latest", True),
        "balance": local.rpc("eth_getBalance", bob.address, "latest"),
        "nonce": local.rpc("eth_getTransactionCount", owner.address, "latest"),
        "storage": local.rpc("eth_getStorageAt", address, "0x0", "latest"),
        "receipt": local.rpc("eth_getTransactionReceipt", receipt["transactionHash"]),
        "logs": local.rpc("eth_getLogs", {"fromBlock": "0x0", "address": address}),
        "code": local.rpc("eth_getCode", address, "latest"),
    }
    offset = local.chain.time_offset
    local.close()
    local.open()
    assert local.chain.time_offset == offset
    assert seen == {
        "head": local.rpc("eth_blockNumber"),
        "block": local.rpc("eth_getBlockByNumber", "latest", True),
        "balance": local.rpc("eth_getBalance", bob.address, "latest"),
        "nonce": local.rpc("eth_getTransactionCount", owner.address, "latest"),
        "storage": local.rpc("eth_getStorageAt", address, "0x0", "latest"),
        "receipt": local.rpc("eth_getTransactionReceipt", receipt["transactionHash"]),
        "logs": local.rpc("eth_getLogs", {"fromBlock": "0x0", "address": address}),
        "code": local.rpc("eth_getCode", address, "latest"),
    }
    # and the chain continues from where it stopped
    nxt = local.send(owner, to=bob.address, value=1)
    assert int(nxt["blockNumber"], 16) == int(seen["head"], 16) + 1


def test_everything_lives_in_one_sqlite_file_with_an_indexed_logs_table(local: LocalDevnet) -> None:
    local.rpc("evm_mine")
    con = sqlite3.connect(local.db)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"kv", "meta", "blocks", "txs", "logs"} <= tables
    plan = " ".join(str(r) for r in con.execute(
        "EXPLAIN QUERY PLAN SELECT body FROM logs WHERE block_number BETWEEN 0 AND 99 "
        "AND address IN (?) AND topic0 IN (?) ORDER BY block_number, log_index",
        (b"\x01" * 20, b"\x02" * 32)))
    con.close()
    assert "USING INDEX" in plan and "SCAN logs" not in plan.replace("USING INDEX", "")
