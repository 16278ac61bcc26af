"""The one log decoder: from an ABI, the table of events by topic0, and a log's arguments by the
ABI's input names. `contracts.binding` (typed clients) and the explorer's `Decoder` both decode
through here; each then presents the values its own way (Python bytes vs JSON-friendly hex)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from eth_utils import event_abi_to_log_topic
from web3 import Web3
from web3._utils.events import get_event_data

_CODEC = Web3().codec


def event_table(abi: Iterable[Mapping[str, Any]]) -> dict[bytes, dict[str, Any]]:
    """topic0 → event ABI entry, for every event of `abi`."""
    return {event_abi_to_log_topic(dict(e)): dict(e) for e in abi if e.get("type") == "event"}


def decode_log(event_abi: Mapping[str, Any], log: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of `log` (with `address`, `topics`, `data` and the usual position fields), keyed
    by the ABI's input names in ABI order — web3's raw values (bytes, ints, tuples). Raises on a log
    that does not fit the ABI."""
    data = get_event_data(_CODEC, event_abi, log)
    # Index by the ABI's names: an event arg called "keys" would shadow dict(...)'s .keys.
    return {i["name"]: data["args"][i["name"]] for i in event_abi["inputs"]}
