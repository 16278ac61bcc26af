"""The base of every typed contract wrapper: encode calls, send transactions, decode events.

A `Binding` knows one deployed contract (address + ABI) and the `Rpc` it is reached through.
Subclasses (one per contract) expose typed methods that call `_view` and `_send`; nobody outside
this package builds web3 calls. Transactions return a `TxResult` whose events are already decoded
into `Event`s (name + args), so callers never touch raw logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eth_utils import event_abi_to_log_topic
from web3 import Web3

from contracts.errors import ContractsError
from contracts.logs import decode_log, event_table
from contracts.rpc import Rpc, Signer


@dataclass(frozen=True)
class Event:
    """One decoded log."""

    name: str
    args: dict[str, Any]
    address: str
    block_number: int
    tx_hash: str
    log_index: int


@dataclass(frozen=True)
class TxResult:
    """A mined, successful transaction."""

    tx_hash: str
    block_number: int
    gas_used: int
    fee_wei: int = 0  # gas used x effective gas price: what the sender paid
    events: list[Event] = field(default_factory=list)

    def event(self, name: str) -> Event:
        """The first event called `name` (raises if the transaction emitted none)."""
        for ev in self.events:
            if ev.name == name:
                return ev
        raise ContractsError(f"transaction {self.tx_hash} emitted no {name} event")


class Binding:
    """One deployed contract reached through `rpc`; `signer` is the default sender."""

    def __init__(
        self,
        rpc: Rpc,
        address: str,
        abi: list[dict[str, Any]],
        signer: Signer | None = None,
        deploy_block: int = 0,
    ) -> None:
        self.rpc = rpc
        self.deploy_block = deploy_block  # where event scans start by default
        self.address = Web3.to_checksum_address(address)
        self.abi = abi
        self.signer = signer
        self.contract = rpc.w3.eth.contract(address=self.address, abi=abi)
        self._events = event_table(abi)

    def _sender(self, sender: Signer | None) -> Signer:
        s = sender or self.signer
        if s is None:
            raise ContractsError("this call sends a transaction: pass sender= or connect a signer")
        return s

    def _view(self, fn: str, *args: Any, block: Any = "latest") -> Any:
        func = getattr(self.contract.functions, fn)(*args)
        return self.rpc.request(func.call, block_identifier=block)

    def _send(
        self,
        fn: str,
        *args: Any,
        sender: Signer | None = None,
        value: int = 0,
        gas: int | None = None,
    ) -> TxResult:
        signer = self._sender(sender)
        data = getattr(self.contract.functions, fn)(*args)._encode_transaction_data()
        receipt = self.rpc.transact(signer, self.address, bytes.fromhex(data[2:]), value, gas)
        return self._result(receipt)

    def send(self, fn: str, *args: Any, sender: Signer | None = None,
             gas: int | None = None) -> TxResult:
        """Send `fn(*args)` by name (keepers that pre-flighted it with `simulate` pass a `gas`
        cap and skip the node's gas estimate; only the gas used is paid)."""
        return self._send(fn, *args, sender=sender, gas=gas)

    def simulate(self, fn: str, *args: Any, sender: str, block: Any = "pending") -> None:
        """Pre-flight: run `fn(*args)` as an `eth_call` from `sender` on `block` (by default the
        pending one, so a transaction another party already sent counts); raises `Revert` when
        sending it now would revert. Sends nothing."""
        data = getattr(self.contract.functions, fn)(*args)._encode_transaction_data()
        self.rpc.call(self.address, bytes.fromhex(data[2:]), sender=sender, block=block)

    def _result(self, receipt: dict[str, Any]) -> TxResult:
        return TxResult(
            tx_hash="0x" + bytes(receipt["transactionHash"]).hex(),
            block_number=int(receipt["blockNumber"]),
            gas_used=int(receipt["gasUsed"]),
            fee_wei=int(receipt["gasUsed"]) * int(receipt.get("effectiveGasPrice") or 0),
            events=self.decode_logs(receipt["logs"]),
        )

    def decode_logs(self, logs: list[Any]) -> list[Event]:
        """Decode the logs this contract emitted (others are skipped)."""
        out = []
        for log in logs:
            if Web3.to_checksum_address(log["address"]) != self.address or not log["topics"]:
                continue
            abi = self._events.get(bytes(log["topics"][0]))
            if abi is None:
                continue
            args = {k: _plain(v) for k, v in decode_log(abi, log).items()}
            out.append(
                Event(
                    name=abi["name"],
                    args=args,
                    address=self.address,
                    block_number=int(log["blockNumber"]),
                    tx_hash="0x" + bytes(log["transactionHash"]).hex(),
                    log_index=int(log["logIndex"]),
                )
            )
        return out

    def call_of(self, tx_hash: str) -> tuple[str, dict[str, Any]]:
        """(function name, arguments) of the transaction `tx_hash`, a direct call to this contract,
        decoded with its ABI (structs come back as dicts)."""
        tx = self.rpc.raw_request("eth_getTransactionByHash", [tx_hash])
        if not tx or not tx.get("input"):
            raise ContractsError(f"transaction {tx_hash} is unknown to the node")
        to = str(tx.get("to") or "")
        if to.lower() != self.address.lower():
            raise ContractsError(f"transaction {tx_hash} calls {to or 'no contract'}, not "
                                 f"{type(self).__name__} at {self.address} directly")
        return self.decode_call(bytes.fromhex(str(tx["input"]).removeprefix("0x")))

    def decode_call(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """(function name, arguments) of calldata for this contract."""
        try:
            fn, args = self.contract.decode_function_input(data)
        except Exception as e:  # web3 raises ValueError / its own errors on garbage
            raise ContractsError(f"calldata does not decode as a {type(self).__name__} call: {e}") from e
        return fn.fn_name, dict(args)

    def events(
        self,
        name: str | None = None,
        from_block: int | None = None,
        to_block: int | str = "latest",
        **topic_filters: Any,
    ) -> list[Event]:
        """Past events of this contract (optionally one name), oldest first."""
        start = self.deploy_block if from_block is None else from_block
        params: dict[str, Any] = {"address": self.address, "fromBlock": start, "toBlock": to_block}
        if name is not None:
            abi = next((e for e in self._events.values() if e["name"] == name), None)
            if abi is None:
                raise ContractsError(f"{type(self).__name__} has no event {name!r}")
            topics: list[Any] = [event_abi_to_log_topic(abi)]
            indexed = [i for i in abi["inputs"] if i["indexed"]]
            for inp in indexed:
                v = topic_filters.get(inp["name"])
                topics.append(None if v is None else _topic(inp["type"], v))
            while topics and topics[-1] is None:
                topics.pop()
            params["topics"] = topics
        logs = self.rpc.request(self.rpc.w3.eth.get_logs, params)
        return self.decode_logs(list(logs))


def _topic(typ: str, value: Any) -> str:
    if typ == "address":
        return "0x" + "00" * 12 + Web3.to_checksum_address(value)[2:].lower()
    if typ.startswith("uint") or typ.startswith("int"):
        return "0x" + int(value).to_bytes(32, "big").hex()
    if typ == "bytes32":
        return "0x" + bytes(value).hex() if not isinstance(value, str) else value
    raise ContractsError(f"cannot filter on indexed {typ}")


def _plain(value: Any) -> Any:
    """AttributeDicts and HexBytes -> dicts and bytes, for frozen dataclasses and JSON."""
    if isinstance(value, dict):
        return {k: _plain(value[k]) for k in list(iter(value))}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, bytes):
        return bytes(value)
    return value
