"""Interval mining: transactions wait in the pending block until the next block is sealed."""

from __future__ import annotations

from pathlib import Path

from tests.devnet.local import LocalDevnet


def test_without_automine_transactions_pend_until_a_block_is_mined(tmp_path: Path) -> None:
    local = LocalDevnet(tmp_path / "bt.sqlite", instant=False)
    try:
        alice, bob = local.accounts[0], local.accounts[1]
        head = int(local.rpc("eth_blockNumber"), 16)
        h1 = local.rpc("eth_sendRawTransaction", local.sign(alice, to=bob.address, value=1))
        h2 = local.rpc("eth_sendRawTransaction", local.sign(alice, to=bob.address, value=2))
        assert local.rpc("eth_getTransactionReceipt", h1) is None
        assert int(local.rpc("eth_blockNumber"), 16) == head
        assert int(local.rpc("eth_getTransactionCount", alice.address, "pending"), 16) == 2
        assert int(local.rpc("eth_getTransactionCount", alice.address, "latest"), 16) == 0
        local.rpc("evm_mine")
        r1 = local.rpc("eth_getTransactionReceipt", h1)
        r2 = local.rpc("eth_getTransactionReceipt", h2)
        assert r1["blockNumber"] == r2["blockNumber"] == hex(head + 1)
        assert (r1["transactionIndex"], r2["transactionIndex"]) == ("0x0", "0x1")
        assert int(r2["cumulativeGasUsed"], 16) == 42_000 and int(r2["gasUsed"], 16) == 21_000
        h3 = local.rpc("eth_sendRawTransaction", local.sign(alice, to=bob.address, value=3))
    finally:
        local.close()  # a clean stop seals what is pending
    local.open()
    try:
        assert local.rpc("eth_getTransactionReceipt", h3)["status"] == "0x1"
    finally:
        local.close()


def test_instant_mining_seals_the_same_blocks_as_the_general_path(tmp_path: Path) -> None:
    """Instant mode's one-VM shortcut must build the same state, tx and receipt roots."""
    fast = LocalDevnet(tmp_path / "fast.sqlite", instant=True)
    slow = LocalDevnet(tmp_path / "slow.sqlite", instant=False)
    try:
        alice, bob = fast.accounts[0], fast.accounts[1]
        raws = [fast.sign(alice, to=bob.address, value=v, nonce=i) for i, v in enumerate((1, 2, 3))]
        raws.append(fast.sign(alice, data=bytes.fromhex("600a600c600039600a6000f3602a60005260206000f3"),
                              gas=100_000, nonce=3))  # a contract creation
        keys = ("stateRoot", "transactionsRoot", "receiptsRoot", "gasUsed", "logsBloom")
        for raw in raws:
            fast.rpc("eth_sendRawTransaction", raw)
            slow.rpc("eth_sendRawTransaction", raw)
            slow.rpc("evm_mine")
            a = fast.rpc("eth_getBlockByNumber", "latest", False)
            b = slow.rpc("eth_getBlockByNumber", "latest", False)
            assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    finally:
        fast.close()
        slow.close()
