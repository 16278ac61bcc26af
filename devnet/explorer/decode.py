"""ABI decoding of transactions and logs for the explorer, driven only by contract artifacts.

`Decoder` knows every compiled Veriplex contract (`contracts.build.compile_all`) and, from the
deployment manifest when there is one, which address is which contract. Calls to a known address
are decoded by selector; logs by topic0 (with the address's own ABI first, then any known ABI, so
a contract added later needs only its artifact). Values become JSON-friendly: bytes -> 0x-hex,
addresses lowercase, tuples -> dicts keyed by the ABI's component names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import function_abi_to_4byte_selector
from web3 import Web3

from contracts.build import Artifact, compile_all
from contracts.logs import decode_log, event_table
from contracts.manifest import Manifest


def _type_str(inp: dict[str, Any]) -> str:
    typ = inp["type"]
    if typ.startswith("tuple"):
        return "(" + ",".join(_type_str(c) for c in inp["components"]) + ")" + typ[5:]
    return str(typ)


def plain(inp: dict[str, Any], value: Any) -> Any:
    """`value` of ABI type `inp` as JSON-friendly data."""
    typ = inp["type"]
    if typ.endswith("]"):
        inner = dict(inp, type=typ[: typ.rindex("[")])
        return [plain(inner, v) for v in value]
    if typ == "tuple":
        if isinstance(value, Mapping):  # web3 returns event tuples keyed by component name
            return {c["name"]: plain(c, value[c["name"]]) for c in inp["components"]}
        return {c["name"]: plain(c, v) for c, v in zip(inp["components"], value, strict=True)}
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if typ == "address":
        return str(value).lower()
    return value


@dataclass(frozen=True)
class Decoded:
    contract: str | None
    name: str
    args: dict[str, Any]


class Decoder:
    """Decodes calls and logs of our contracts; anything else stays raw (returns None)."""

    def __init__(self, artifacts: dict[str, Artifact],
                 manifest: Manifest | Sequence[Manifest] | None = None) -> None:
        manifests = [manifest] if isinstance(manifest, Manifest) else list(manifest or [])
        # Several deployments on one chain (e.g. a redeploy) are all ours.
        self.by_address: dict[str, str] = {
            d.address.lower(): n for m in manifests for n, d in m.contracts.items()}
        self._functions: dict[str, dict[bytes, dict[str, Any]]] = {}
        self._events: dict[str, dict[bytes, dict[str, Any]]] = {}
        self._any_event: dict[bytes, tuple[str | None, dict[str, Any]]] = {}
        for name, art in artifacts.items():
            fns = [e for e in art.abi if e.get("type") == "function"]
            self._functions[name] = {function_abi_to_4byte_selector(f): f for f in fns}
            self._events[name] = event_table(art.abi)
            for topic, e in self._events[name].items():
                # A signature shared by several contracts (OwnershipTransferred) names none.
                seen = self._any_event.get(topic)
                self._any_event[topic] = (name if seen is None else None, e)

    @classmethod
    def load(cls, manifest: Manifest | Sequence[Manifest] | None) -> Decoder:
        return cls(compile_all(), manifest)

    def contract_at(self, address: str | None) -> str | None:
        return self.by_address.get(address.lower()) if address else None

    def event_topic(self, contract: str, event: str) -> str:
        for topic, abi in self._events[contract].items():
            if abi["name"] == event:
                return "0x" + topic.hex()
        raise KeyError(f"{contract} has no event {event}")

    def call(self, to: str | None, data: bytes) -> Decoded | None:
        contract = self.contract_at(to)
        if contract is None or len(data) < 4:
            return None
        fn = self._functions[contract].get(bytes(data[:4]))
        if fn is None:
            return None
        try:
            values = abi_decode([_type_str(i) for i in fn["inputs"]], bytes(data[4:]))
        except Exception:  # noqa: BLE001 - malformed calldata is shown raw, never fatal
            return None
        args = {i["name"]: plain(i, v) for i, v in zip(fn["inputs"], values, strict=True)}
        return Decoded(contract, fn["name"], args)

    def log(self, address: str, topics: list[bytes], data: bytes, ctx: dict[str, Any]) -> Decoded | None:
        if not topics:
            return None
        contract = self.contract_at(address)
        abi = self._events.get(contract, {}).get(topics[0]) if contract else None
        if abi is None:
            hit = self._any_event.get(topics[0])
            if hit is None:
                return None
            # With a manifest, an address outside it is not ours: decode the log, but never
            # attribute it to our contracts (a look-alike must not forge requests). Without
            # one, a signature unique to one contract names it.
            contract, abi = (None if self.by_address else hit[0]), hit[1]
        log = {"address": Web3.to_checksum_address(address), "topics": topics, "data": data, **ctx}
        try:
            raw = decode_log(abi, log)
        except Exception:  # noqa: BLE001 - a log that does not fit the ABI stays raw
            return None
        args = {i["name"]: plain(i, raw[i["name"]]) for i in abi["inputs"]}
        return Decoded(contract, abi["name"], args)
