"""Test helpers: an in-process devnet (the real chain and JSON-RPC layer, without HTTP) and the
source of a small probe contract."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_utils import to_checksum_address

from devnet.accounts import DevAccount, dev_accounts
from devnet.chain import DevChain
from devnet.rpc import Methods
from devnet.server import JsonRpcApp
from devnet.store import ChainStore
from protocol.settings import DEV_MNEMONIC

PROBE_SOURCE = """
# pragma version ^0.4.0
event Pinged:
    sender: indexed(address)
    n: indexed(uint256)
    note: String[32]

stored: public(uint256)

@external
def ping(n: uint256):
    self.stored = n
    log Pinged(sender=msg.sender, n=n, note="hi")

@external
def fail(reason: String[64]):
    raise reason

@external
@view
def double(n: uint256) -> uint256:
    assert n < 10, "too big"
    return n * 2
"""


@dataclass(frozen=True)
class Probe:
    abi: list[dict[str, Any]]
    bytecode: bytes


class RpcFailed(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error['code']}: {error['message']}")
        self.code = error["code"]
        self.message = error["message"]
        self.data = error.get("data")


class LocalDevnet:
    """A devnet without HTTP: the same JsonRpcApp the server runs, fed JSON text."""

    def __init__(self, db: Path, *, instant: bool = True) -> None:
        self.db = db
        self.accounts: tuple[DevAccount, ...] = dev_accounts(DEV_MNEMONIC, 10)
        self.instant = instant
        self.open()

    def open(self) -> None:
        self.store = ChainStore(self.db)
        self.chain = DevChain(self.store, chain_id=31337, accounts=self.accounts,
                              balance_wei=10_000 * 10**18, gas_limit=30_000_000,
                              instant=self.instant)
        self.app = JsonRpcApp(Methods(self.chain, self.accounts))

    def close(self) -> None:
        self.chain.close()
        self.store.close()

    def raw(self, body: str | bytes) -> Any:
        text = self.app.answer(body.encode() if isinstance(body, str) else body)
        return json.loads(text) if text else None

    def rpc(self, method: str, *params: Any) -> Any:
        out = self.raw(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}))
        if "error" in out:
            raise RpcFailed(out["error"])
        return out["result"]

    def sign(self, account: DevAccount, **fields: Any) -> str:
        tx = {"chainId": 31337, "gas": 21_000, "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 1,
              "type": 2, "value": 0}
        tx.update(fields)
        tx = {k: v for k, v in tx.items() if v is not None}  # None drops a default field
        if isinstance(tx.get("to"), str):
            tx["to"] = to_checksum_address(tx["to"])
        if "nonce" not in tx:
            tx["nonce"] = int(self.rpc("eth_getTransactionCount", account.address, "pending"), 16)
        return "0x" + bytes(Account.sign_transaction(tx, account.private_key).raw_transaction).hex()

    def send(self, account: DevAccount, **fields: Any) -> dict[str, Any]:
        tx_hash = self.rpc("eth_sendRawTransaction", self.sign(account, **fields))
        return self.rpc("eth_getTransactionReceipt", tx_hash)

    def deploy(self, account: DevAccount, probe: Probe) -> str:
        receipt = self.send(account, data=probe.bytecode, gas=1_000_000)
        assert receipt["status"] == "0x1"
        return receipt["contractAddress"]
