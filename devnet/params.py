"""Parsing and validating JSON-RPC parameters; every failure is an `InvalidParams` (-32602).

Messages name the argument and quote the value, like geth's ``invalid argument 0: ...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from devnet.errors import InvalidParams
from devnet.execution import CallRequest

_HEX = re.compile(r"^0x[0-9a-fA-F]*$")
BLOCK_TAGS = ("latest", "earliest", "pending", "safe", "finalized")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def quantity(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidParams(f"invalid argument {what}: expected a hex quantity, got {_show(value)}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidParams(f"invalid argument {what}: negative quantity {value}")
        return value
    if not _HEX.match(value) or len(value) < 3:
        raise InvalidParams(f"invalid argument {what}: expected a 0x-prefixed hex quantity, got {_show(value)}")
    if len(value) > 66:
        raise InvalidParams(f"invalid argument {what}: quantity larger than 256 bits")
    return int(value, 16)


def data(value: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str) or not _HEX.match(value) or len(value) % 2:
        raise InvalidParams(f"invalid argument {what}: expected 0x-prefixed hex bytes, got {_show(value)}")
    raw = bytes.fromhex(value[2:])
    if size is not None and len(raw) != size:
        raise InvalidParams(
            f"invalid argument {what}: expected {size} bytes, got {len(raw)} ({_show(value)})")
    return raw


def address(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 42:
        raise InvalidParams(f"invalid argument {what}: expected a 20-byte 0x address, got {_show(value)}")
    return data(value, what, 20)


def hash32(value: Any, what: str) -> bytes:
    return data(value, what, 32)


def boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidParams(f"invalid argument {what}: expected true or false, got {_show(value)}")
    return value


@dataclass(frozen=True)
class BlockRef:
    """A block tag, number or hash (EIP-1898)."""

    tag: str | None = None
    number: int | None = None
    block_hash: bytes | None = None


def block_ref(value: Any, what: str) -> BlockRef:
    if value is None:
        return BlockRef(tag="latest")
    if isinstance(value, str) and value in BLOCK_TAGS:
        return BlockRef(tag=value)
    if isinstance(value, dict):
        if "blockHash" in value:
            return BlockRef(block_hash=hash32(value["blockHash"], what))
        if "blockNumber" in value:
            return block_ref(value["blockNumber"], what)
        raise InvalidParams(f"invalid argument {what}: block object needs blockHash or blockNumber")
    if isinstance(value, str):
        return BlockRef(number=quantity(value, what))
    raise InvalidParams(f"invalid argument {what}: expected a block number or tag, got {_show(value)}")


_CALL_FIELDS = {"from", "to", "gas", "gasPrice", "maxFeePerGas", "maxPriorityFeePerGas", "value",
                "data", "input", "nonce", "type", "chainId", "accessList"}


def call_request(value: Any, what: str) -> CallRequest:
    if not isinstance(value, dict):
        raise InvalidParams(f"invalid argument {what}: expected a transaction object, got {_show(value)}")
    unknown = set(value) - _CALL_FIELDS
    if unknown:
        raise InvalidParams(f"invalid argument {what}: unknown field(s) {sorted(unknown)}")
    payload = value.get("input", value.get("data"))
    if "input" in value and "data" in value and value["input"] != value["data"]:
        raise InvalidParams(f"invalid argument {what}: both data and input given and they differ")

    def opt(key: str) -> int | None:
        return quantity(value[key], f"{what}.{key}") if value.get(key) is not None else None

    return CallRequest(
        sender=address(value["from"], f"{what}.from") if value.get("from") else b"\x00" * 20,
        to=address(value["to"], f"{what}.to") if value.get("to") else None,
        gas=opt("gas"),
        value=opt("value") or 0,
        data=data(payload, f"{what}.input") if payload is not None else b"",
        nonce=opt("nonce"),
        gas_price=opt("gasPrice"),
        max_fee_per_gas=opt("maxFeePerGas"),
        max_priority_fee_per_gas=opt("maxPriorityFeePerGas"),
    )


@dataclass(frozen=True)
class LogFilter:
    from_ref: BlockRef
    to_ref: BlockRef
    block_hash: bytes | None
    addresses: tuple[bytes, ...]
    topics: tuple[tuple[bytes, ...] | None, ...]


def log_filter(value: Any, what: str) -> LogFilter:
    if not isinstance(value, dict):
        raise InvalidParams(f"invalid argument {what}: expected a filter object, got {_show(value)}")
    unknown = set(value) - {"fromBlock", "toBlock", "address", "topics", "blockHash"}
    if unknown:
        raise InvalidParams(f"invalid argument {what}: unknown field(s) {sorted(unknown)}")
    block_hash = None
    if value.get("blockHash") is not None:
        if value.get("fromBlock") is not None or value.get("toBlock") is not None:
            raise InvalidParams(f"invalid argument {what}: blockHash excludes fromBlock/toBlock")
        block_hash = hash32(value["blockHash"], f"{what}.blockHash")
    raw_addr = value.get("address")
    if raw_addr is None:
        addresses: tuple[bytes, ...] = ()
    elif isinstance(raw_addr, list):
        addresses = tuple(address(a, f"{what}.address") for a in raw_addr)
    else:
        addresses = (address(raw_addr, f"{what}.address"),)
    raw_topics = value.get("topics") or []
    if not isinstance(raw_topics, list) or len(raw_topics) > 4:
        raise InvalidParams(f"invalid argument {what}: topics must be a list of at most 4 entries")
    topics: list[tuple[bytes, ...] | None] = []
    for i, t in enumerate(raw_topics):
        if t is None:
            topics.append(None)
        elif isinstance(t, list):
            topics.append(tuple(hash32(x, f"{what}.topics[{i}]") for x in t) or None)
        else:
            topics.append((hash32(t, f"{what}.topics[{i}]"),))
    return LogFilter(
        from_ref=block_ref(value.get("fromBlock"), f"{what}.fromBlock"),
        to_ref=block_ref(value.get("toBlock"), f"{what}.toBlock"),
        block_hash=block_hash, addresses=addresses, topics=tuple(topics),
    )
