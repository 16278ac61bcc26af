"""JSON-RPC transport and transaction sending: the one place that turns web3 into our errors.

`Rpc` wraps a web3 HTTP connection: every call goes through `Rpc.request`, which maps transport
failures to `RpcUnreachable`/`RpcTimeout`, node refusals to `RpcRejected`, and reverts (JSON-RPC
error code 3 with `data`, or web3's `ContractLogicError`) to the typed `Revert` tree of
`contracts.errors`. `Signer` holds a local account; nonces are tracked per (RPC URL, sender) for
the whole process and resynced from the node after a refusal or a timeout. `Rpc.transact`
estimates gas (which surfaces a revert before anything is sent), signs locally, sends the raw
transaction, waits for the receipt, and re-runs a failed transaction as `eth_call` to recover its
reason.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import (
    ContractLogicError,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)
from web3.providers.rpc import HTTPProvider

from contracts.errors import (
    ChainError,
    Revert,
    RpcRejected,
    RpcTimeout,
    RpcUnreachable,
    decode_revert,
    revert_from_reason,
)

T = TypeVar("T")
GAS_MARGIN_NUM, GAS_MARGIN_DEN = 6, 5  # send 1.2x the estimate: estimates can be tight


def _revert_from_rpc_error(err: dict[str, Any]) -> Revert | None:
    data = err.get("data")
    if isinstance(data, dict):  # some nodes nest it: {"data": {"data": "0x..."}}
        data = data.get("data")
    message = str(err.get("message", ""))
    if isinstance(data, str) and data.startswith("0x") and len(data) > 2:
        return decode_revert(data)
    if err.get("code") == 3 or "revert" in message.lower():
        reason = message.split("execution reverted:", 1)[-1].strip() if ":" in message else ""
        return revert_from_reason(reason) if reason else decode_revert(None)
    return None


def translate_error(exc: BaseException, url: str) -> ChainError | Revert | None:
    """Our exception for a web3/requests exception, or None if it is not a chain error."""
    if isinstance(exc, Revert | ChainError):
        return exc
    if isinstance(exc, ContractLogicError):
        if exc.data and isinstance(exc.data, str) and exc.data.startswith("0x"):
            return decode_revert(exc.data)
        reason = str(exc.message or exc).split("execution reverted:", 1)[-1].strip()
        return revert_from_reason(reason) if reason else decode_revert(None)
    if isinstance(exc, Web3RPCError):
        rpc = exc.rpc_response or {}
        err = rpc.get("error") if isinstance(rpc, dict) else None
        if isinstance(err, dict):
            rev = _revert_from_rpc_error(err)
            if rev is not None:
                return rev
            return RpcRejected(f"{url} refused the request: {err.get('message', err)}")
        return RpcRejected(f"{url} refused the request: {exc}")
    if isinstance(exc, requests.exceptions.Timeout | TimeExhausted):
        return RpcTimeout(f"{url} did not answer in time: {exc}")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return RpcUnreachable(f"cannot reach the JSON-RPC node at {url}")
    return None


# Next nonce per (RPC URL, sender), shared by every `Rpc` of the process: one signer may be used
# on several chains (each has its own nonces) and through several `Chain`s to one node.
_NONCES: dict[tuple[str, str], int] = {}
_NONCE_LOCK = threading.Lock()


@dataclass
class Signer:
    """A local account that signs transactions; never printed (repr hides the key)."""

    account: LocalAccount

    @classmethod
    def from_key(cls, private_key: str | bytes) -> Signer:
        return cls(Account.from_key(private_key))

    @property
    def address(self) -> str:
        return str(self.account.address)

    def __repr__(self) -> str:
        return f"Signer({self.address})"


class Rpc:
    """A web3 connection whose every failure is one of our exceptions."""

    def __init__(self, url: str, timeout_s: float = 10.0, receipt_timeout_s: float = 60.0) -> None:
        self.url = url
        self.receipt_timeout_s = receipt_timeout_s
        self.w3 = Web3(
            HTTPProvider(
                url, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None
            )
        )
        # Transactions are signed here with an explicit chainId, and no name is an ENS name: web3's
        # validation middleware would add an eth_chainId round trip to every eth_call (half the
        # cost of a view), and the ENS one a lookup per address argument.
        for name in ("validation", "ens_name_to_address"):
            self.w3.middleware_onion.remove(name)
        self._chain_id: int | None = None

    def request(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one web3 call, translating its failures."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            ours = translate_error(exc, self.url)
            if ours is None:
                raise
            raise ours from exc

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.request(lambda: self.w3.eth.chain_id))
        return self._chain_id

    def block_number(self) -> int:
        return int(self.request(lambda: self.w3.eth.block_number))

    def balance(self, address: str) -> int:
        return int(self.request(self.w3.eth.get_balance, Web3.to_checksum_address(address)))

    def raw_request(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call by name, its `result` as the node sent it (hex strings, no decoding)."""
        reply = self.request(self.w3.provider.make_request, method, params)
        if "error" in reply:
            raise ChainError(f"{method} failed at {self.url}: {reply['error']}")
        return reply.get("result")

    def failed_transactions(self, from_block: int, to_block: int) -> list[dict[str, Any]]:
        """Every transaction mined in [from_block, to_block] whose receipt says it reverted, as
        `{"hash", "block", "from", "to", "input"}` (hex strings; for audits and demos)."""
        out = []
        for n in range(from_block, to_block + 1):
            block = self.raw_request("eth_getBlockByNumber", [hex(n), True])
            if not block or not block["transactions"]:
                continue
            try:
                receipts = {r["transactionHash"]: r for r in
                            self.raw_request("eth_getBlockReceipts", [hex(n)]) or []}
            except ChainError:  # a node without eth_getBlockReceipts
                receipts = {}
            for tx in block["transactions"]:
                r = receipts.get(tx["hash"]) or self.raw_request("eth_getTransactionReceipt",
                                                                 [tx["hash"]])
                if int(r["status"], 16) != 1:
                    out.append({"hash": tx["hash"], "block": n, "from": tx["from"],
                                "to": tx.get("to"), "input": tx.get("input", "0x")})
        return out

    def mine(self, blocks: int = 1) -> None:
        """Mine `blocks` empty blocks (dev chains only: `evm_mine`, as anvil and our devnet serve)."""
        for _ in range(blocks):
            self.raw_request("evm_mine", [])

    def latest_timestamp(self) -> int:
        """Timestamp of the latest block (chain time, which API-key expiry is measured in)."""
        return int(self.request(self.w3.eth.get_block, "latest")["timestamp"])

    def receipt(self, tx_hash: bytes) -> dict[str, Any] | None:
        """The receipt of a mined transaction, or None while it is not mined (or unknown)."""
        try:
            return dict(self.request(self.w3.eth.get_transaction_receipt, tx_hash))
        except TransactionNotFound:
            return None

    def is_pending(self, tx_hash: bytes) -> bool:
        """Whether the node knows the transaction (mined or in its pool)."""
        try:
            self.request(self.w3.eth.get_transaction, tx_hash)
        except TransactionNotFound:
            return False
        return True

    def code(self, address: str) -> bytes:
        return bytes(self.request(self.w3.eth.get_code, Web3.to_checksum_address(address)))

    def call(self, to: str, data: bytes, sender: str | None = None, block: Any = "latest") -> bytes:
        tx: dict[str, Any] = {"to": Web3.to_checksum_address(to), "data": data}
        if sender:
            tx["from"] = Web3.to_checksum_address(sender)
        return bytes(self.request(self.w3.eth.call, tx, block))

    def _fees(self) -> dict[str, int]:
        block = self.request(self.w3.eth.get_block, "latest")
        base = block.get("baseFeePerGas")
        if base is None:
            return {"gasPrice": int(self.request(lambda: self.w3.eth.gas_price))}
        try:
            tip = int(self.request(lambda: self.w3.eth.max_priority_fee))
        except ChainError:
            tip = 10**9
        return {"maxFeePerGas": 2 * int(base) + tip, "maxPriorityFeePerGas": tip}

    def transact(
        self,
        signer: Signer,
        to: str | None,
        data: bytes,
        value: int = 0,
        gas: int | None = None,
        *,
        on_signed: Callable[[bytes, bytes], None] | None = None,
        on_sent: Callable[[bytes], None] | None = None,
    ) -> dict[str, Any]:
        """Sign and send one transaction, wait for its receipt, raise `Revert` if it failed.

        `on_signed(tx_hash, raw)` runs after signing and before broadcasting (a caller that must
        send exactly once persists the raw transaction there); `on_sent(tx_hash)` runs after the
        node accepted it, before waiting for the receipt.
        """
        tx: dict[str, Any] = {"from": signer.address, "value": value, "data": data}
        if to is not None:
            tx["to"] = Web3.to_checksum_address(to)
        if gas is None:
            # Reverts surface here, with their reason, before anything is signed.
            gas = self.request(self.w3.eth.estimate_gas, tx) * GAS_MARGIN_NUM // GAS_MARGIN_DEN
        tx["gas"] = gas
        tx_hash = self._sign_and_send(signer, {**tx, **self._fees(), "chainId": self.chain_id},
                                      on_signed)
        if on_sent is not None:
            on_sent(tx_hash)
        try:
            receipt = self.wait_for_receipt(tx_hash)
        except RpcTimeout:
            # Perhaps our nonce ran ahead of the node (a reset or reverted dev chain): resync.
            with _NONCE_LOCK:
                _NONCES.pop((self.url, signer.address), None)
            raise
        if receipt["status"] != 1:
            raise self._failure_reason(tx, receipt)
        return receipt

    def _sign_and_send(self, signer: Signer, tx: dict[str, Any],
                       on_signed: Callable[[bytes, bytes], None] | None = None) -> bytes:
        """Assign the next nonce, sign, send; after a nonce refusal resync once and retry."""
        slot = (self.url, signer.address)
        for attempt in (1, 2):
            with _NONCE_LOCK:
                if slot not in _NONCES:
                    _NONCES[slot] = self.request(
                        self.w3.eth.get_transaction_count, signer.address, "pending"
                    )
                nonce = _NONCES[slot]
                signed = signer.account.sign_transaction({**tx, "nonce": nonce})
                raw = signed.raw_transaction
                if on_signed is not None:
                    on_signed(bytes(signed.hash), bytes(raw))
                try:
                    tx_hash = self.request(self.w3.eth.send_raw_transaction, raw)
                except RpcRejected as exc:
                    _NONCES.pop(slot, None)  # resync from the node
                    if attempt == 1 and "nonce" in str(exc).lower():
                        continue
                    raise
                _NONCES[slot] = nonce + 1
                return bytes(tx_hash)
        raise AssertionError("unreachable")

    def wait_for_receipt(self, tx_hash: bytes) -> dict[str, Any]:
        try:
            return dict(
                self.w3.eth.wait_for_transaction_receipt(
                    tx_hash, timeout=self.receipt_timeout_s, poll_latency=0.05
                )
            )
        except (TimeExhausted, TransactionNotFound) as exc:
            raise RpcTimeout(f"transaction 0x{bytes(tx_hash).hex()} not mined in time") from exc
        except Exception as exc:
            ours = translate_error(exc, self.url)
            if ours is None:
                raise
            raise ours from exc

    def replay(self, sender: str, to: str | None, data: bytes | str, value: int, gas: int,
               block: int) -> Revert | None:
        """Replay a transaction as a call on `block` (its parent): the `Revert` it raises there,
        or None when the call succeeds (a failure that depended on gas or ordering).
        Raises `ChainError` when the node cannot answer."""
        call: dict[str, Any] = {"from": Web3.to_checksum_address(sender), "data": data,
                                "value": value, "gas": gas}
        if to:
            call["to"] = Web3.to_checksum_address(to)
        try:
            self.request(self.w3.eth.call, call, max(block, 0))
        except Revert as rev:
            return rev
        return None

    def _failure_reason(self, tx: dict[str, Any], receipt: dict[str, Any]) -> Revert:
        """Why a mined transaction failed, learned by replaying it on its parent block."""
        try:
            rev = self.replay(tx["from"], tx.get("to"), tx["data"], tx.get("value", 0), tx["gas"],
                              receipt["blockNumber"] - 1)
        except ChainError:
            rev = None
        return rev or Revert(
            f"transaction reverted (gas used {receipt['gasUsed']} of {tx['gas']})")
