"""The indexer follows any EVM JSON-RPC endpoint, not only our devnet: anvil with our contracts
deployed, a decoded call, a failed call with its revert reason recovered from anvil, a plain
transfer, and the pages over that index."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_account import Account
from eth_utils import function_signature_to_4byte_selector
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contracts.client import dev_key
from contracts.deploy import deploy_all
from devnet.explorer.app import create_app
from devnet.explorer.models import Block, Tx
from devnet.process import running_anvil
from protocol.settings import DEV_MNEMONIC
from tests.support.explorer import make_explorer

from .test_indexer import _send

pytestmark = pytest.mark.anvil


def test_an_anvil_chain_is_indexed_with_decoded_calls_and_revert_reasons(tmp_path: Path) -> None:
    with running_anvil(tmp_path) as node:
        manifest = deploy_all(node.url, dev_key(0, DEV_MNEMONIC), tmp_path / "manifest.json")
        ex = make_explorer(node.url, f"sqlite:///{tmp_path / 'i.sqlite'}", manifest)
        to = Account.create().address
        paid = _send(ex, 3, {"to": to, "value": 777})
        withdraw = "0x" + function_signature_to_4byte_selector("withdraw()").hex()
        failed = _send(ex, 4, {"to": manifest.address("Payments"), "data": withdraw})
        head = ex.rpc.block_number()
        assert ex.indexer.sync_once() == head + 1
        assert ex.status.indexed == head and not ex.status.behind()
        with Session(ex.engine) as s:
            assert s.scalar(select(func.count()).select_from(Block)) == head + 1
            bad = s.get(Tx, failed)
            assert bad is not None and bad.status is False and bad.method == "withdraw"
            assert bad.revert_reason and bad.revert_reason.startswith("payments:")
        c = TestClient(create_app(ex.engine, ex.status, ex.rpc))
        tx = c.get(f"/api/tx/{paid}").json()["data"]["transaction"]
        assert (tx["to"], int(tx["value_wei"]), tx["status"]) == (to.lower(), 777, True)
        assert int(c.get(f"/api/address/{to}").json()["data"]["balance_wei"]) == 777
        assert bad.revert_reason in c.get(f"/tx/{failed}").text
