"""Property: any mix of transactions, mining, snapshots and reverts leaves a file that reopens to
exactly the state that was being served, with no index rows above the head."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.devnet.local import LocalDevnet

ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 3), st.integers(0, 3), st.integers(1, 10**18)),
        st.tuples(st.just("mine")),
        st.tuples(st.just("snapshot")),
        st.tuples(st.just("revert"), st.integers(0, 5)),
    ),
    min_size=1, max_size=25,
)


def observe(local: LocalDevnet) -> dict:
    head = local.rpc("eth_blockNumber")
    return {
        "head": head,
        "block": local.rpc("eth_getBlockByNumber", head, True),
        "balances": [local.rpc("eth_getBalance", a.address, "latest") for a in local.accounts[:4]],
        "nonces": [local.rpc("eth_getTransactionCount", a.address, "latest") for a in local.accounts[:4]],
    }


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_any_history_of_snapshots_and_reverts_reopens_to_the_served_state(history) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        local = LocalDevnet(Path(tmp) / "p.sqlite")
        snapshots: list[str] = []
        sent: list[str] = []
        try:
            for op in history:
                if op[0] == "send":
                    _, i, j, value = op
                    receipt = local.send(local.accounts[i], to=local.accounts[j].address, value=value)
                    sent.append(receipt["transactionHash"])
                elif op[0] == "mine":
                    local.rpc("evm_mine")
                elif op[0] == "snapshot":
                    snapshots.append(local.rpc("evm_snapshot"))
                elif snapshots:
                    sid = snapshots[op[1] % len(snapshots)]
                    assert local.rpc("evm_revert", sid) is True
                    snapshots = snapshots[: snapshots.index(sid)]
            served = observe(local)
            receipts = [local.rpc("eth_getTransactionReceipt", h) for h in sent]
        finally:
            local.close()
        local.open()
        try:
            assert observe(local) == served
            assert [local.rpc("eth_getTransactionReceipt", h) for h in sent] == receipts
        finally:
            local.close()
        con = sqlite3.connect(local.db)
        head = int(served["head"], 16)
        assert con.execute("SELECT COUNT(*), MAX(number) FROM blocks").fetchone() == (head + 1, head)
        assert con.execute("SELECT COUNT(*) FROM txs WHERE block_number > ?", (head,)).fetchone()[0] == 0
        con.close()
