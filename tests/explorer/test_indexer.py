"""The indexer against a real devnet: it resumes where it stopped (explorer restarted, or the node
restarted on its database), follows an `evm_revert` by
re-indexing the new branch, records revert reasons of failed transactions, and reports an
unreachable node as "behind" instead of failing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eth_account import Account
from eth_utils import function_signature_to_4byte_selector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contracts.client import dev_key
from devnet.explorer.models import Block, Log, Tx
from devnet.process import running_devnet
from protocol.settings import DEV_MNEMONIC
from tests.support.explorer import Activity, free_port, make_explorer


def _rpc(ex: Any, method: str, *params: Any) -> Any:
    reply = ex.rpc.w3.provider.make_request(method, list(params))
    assert "error" not in reply, reply
    return reply["result"]


def _send(ex: Any, key_index: int, tx: dict[str, Any]) -> str:
    acct = Account.from_key(dev_key(key_index, DEV_MNEMONIC))
    w3 = ex.rpc.w3
    full = {"chainId": w3.eth.chain_id, "nonce": w3.eth.get_transaction_count(acct.address),
            "gas": 100_000, "maxFeePerGas": 2 * w3.eth.get_block("latest")["baseFeePerGas"] + 10**9,
            "maxPriorityFeePerGas": 10**9, "value": 0, **tx}
    h = w3.eth.send_raw_transaction(acct.sign_transaction(full).raw_transaction)
    w3.eth.wait_for_transaction_receipt(h, timeout=30)
    return "0x" + bytes(h).hex()


def test_indexing_resumes_where_a_previous_explorer_stopped(activity: Activity, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'index.sqlite'}"
    first = make_explorer(activity.devnet.url, db, activity.manifest)
    assert first.indexer.sync_once(max_blocks=5) == 5
    second = make_explorer(activity.devnet.url, db, activity.manifest)  # a restarted explorer
    head = second.rpc.block_number()
    assert second.indexer.sync_once() == head + 1 - 5
    with Session(second.engine) as s:
        numbers = list(s.scalars(select(Block.number).order_by(Block.number)))
        assert numbers == list(range(head + 1))
        assert s.get(Tx, activity.settle_tx) is not None
    assert second.status.indexed == second.status.head == head and not second.status.behind()


def test_an_evm_revert_is_detected_and_the_new_branch_reindexed(activity: Activity,
                                                                tmp_path: Path) -> None:
    ex = make_explorer(activity.devnet.url, f"sqlite:///{tmp_path / 'i.sqlite'}", activity.manifest)
    snap = _rpc(ex, "evm_snapshot")
    gone = _send(ex, 5, {"to": Account.create().address, "value": 1234})
    ex.indexer.sync_once()
    with Session(ex.engine) as s:
        assert s.get(Tx, gone) is not None
    assert _rpc(ex, "evm_revert", snap) is True
    kept = _send(ex, 6, {"to": Account.create().address, "value": 5678})  # same height, new hash
    ex.indexer.sync_once()
    assert ex.status.reorgs == 1
    with Session(ex.engine) as s:
        assert s.get(Tx, gone) is None
        assert s.get(Tx, kept) is not None
        tip = s.scalars(select(Block).order_by(Block.number.desc()).limit(1)).one()
        assert tip.number == ex.rpc.block_number()
        assert tip.hash == ex.rpc.w3.eth.get_block(tip.number)["hash"].to_0x_hex().lower()


def test_a_failed_transaction_is_indexed_with_its_revert_reason(activity: Activity,
                                                                tmp_path: Path) -> None:
    ex = make_explorer(activity.devnet.url, f"sqlite:///{tmp_path / 'i.sqlite'}", activity.manifest)
    payments = activity.manifest.address("Payments")
    data = "0x" + function_signature_to_4byte_selector("withdraw()").hex()  # nothing to withdraw
    failed = _send(ex, 7, {"to": payments, "data": data})
    ex.indexer.sync_once()
    with Session(ex.engine) as s:
        tx = s.get(Tx, failed)
        assert tx is not None and tx.status is False
        assert tx.contract == "Payments" and tx.method == "withdraw"
        assert tx.revert_reason and tx.revert_reason.startswith("payments:")
        assert s.scalar(select(func.count()).select_from(Log).where(Log.tx_hash == failed)) == 0


def test_an_unreachable_node_leaves_the_index_intact_and_marks_it_behind(
        activity: Activity, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'i.sqlite'}"
    ok = make_explorer(activity.devnet.url, db, activity.manifest)
    ok.indexer.sync_once()
    dead = make_explorer(f"http://127.0.0.1:{free_port()}", db, activity.manifest)
    assert dead.indexer.sync_once() == 0
    assert dead.status.behind() and "cannot reach" in (dead.status.last_error or "")
    with Session(dead.engine) as s:
        assert s.scalar(select(func.count()).select_from(Block)) == ok.status.indexed + 1


def test_without_a_manifest_our_events_are_still_decoded_by_their_signatures(
        activity: Activity, tmp_path: Path) -> None:
    ex = make_explorer(activity.devnet.url, f"sqlite:///{tmp_path / 'i.sqlite'}", None)
    ex.indexer.sync_once()
    with Session(ex.engine) as s:
        settled = s.scalars(select(Log).where(Log.tx_hash == activity.settle_tx)
                            .order_by(Log.log_index)).all()
        assert [(lg.contract, lg.event) for lg in settled] == [
            ("Payments", "RequestSettled"), ("Payments", "BatchSettled")]
        assert settled[0].args["commitment_root"] == activity.commitment_root
        shared = s.scalars(select(Log).where(Log.event == "OwnershipTransferred")).all()
        assert shared and all(lg.contract is None for lg in shared)  # in every contract: no name
        assert s.get(Tx, activity.settle_tx).method is None  # calls need the manifest's addresses


def test_indexing_resumes_when_the_node_comes_back_after_a_restart(tmp_path: Path) -> None:
    work = tmp_path / "devnet"
    db = f"sqlite:///{tmp_path / 'i.sqlite'}"
    with running_devnet(work, deploy=False) as dn:
        ex = make_explorer(dn.url, db, None)
        before = _send(ex, 3, {"to": Account.create().address, "value": 1})
        ex.indexer.sync_once()
        first_head = ex.status.indexed
    assert ex.indexer.sync_once() == 0  # the node is down: the index stays, marked behind
    assert ex.status.behind() and ex.status.indexed == first_head
    port = dn.url.rsplit(":", 1)[1]
    with running_devnet(work, deploy=False, extra_args=("--port", port)) as again:
        assert again.url == dn.url  # the same node, restarted on its database
        after = _send(ex, 4, {"to": Account.create().address, "value": 2})
        head = ex.rpc.block_number()
        assert ex.indexer.sync_once() == head - (first_head or 0)
    assert not ex.status.behind() and ex.status.reorgs == 0
    with Session(ex.engine) as s:
        assert list(s.scalars(select(Block.number).order_by(Block.number))) == list(range(head + 1))
        assert s.get(Tx, before) is not None and s.get(Tx, after) is not None
