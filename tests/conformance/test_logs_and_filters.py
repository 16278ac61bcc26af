"""Conformance: eth_getLogs by address, topics and block range; polling filters.

The probe contract emits `ValueSet(setter indexed, key indexed, value)` from `set_value` and
`Deposited(sender indexed, amount)` from `deposit`; each test emits its own events in separate
blocks (instant mining) and queries them back.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from eth_utils import keccak

VALUE_SET = "0x" + keccak(text="ValueSet(address,uint256,uint256)").hex()
DEPOSITED = "0x" + keccak(text="Deposited(address,uint256)").hex()


def _topic(value: int | str) -> str:
    if isinstance(value, str):
        return "0x" + "00" * 12 + value[2:].lower()
    return "0x" + value.to_bytes(32, "big").hex()


@dataclass(frozen=True)
class Emitted:
    receipts: list[dict]
    first_block: int
    last_block: int


@pytest.fixture
def emitted(chain, probe) -> Emitted:
    """Three ValueSet events (keys 1, 2, 3) and one Deposited, each in its own block."""
    sender = chain.accounts[1]
    receipts = [
        chain.transact(
            sender, {"to": probe.address, "data": probe.data("set_value", key, 10 * key)}
        )
        for key in (1, 2, 3)
    ]
    receipts.append(
        chain.transact(sender, {"to": probe.address, "data": probe.data("deposit"), "value": 99})
    )
    numbers = [chain.rpc.quantity(r["blockNumber"]) for r in receipts]
    assert numbers == sorted(set(numbers)), "each transaction should be mined in its own block"
    return Emitted(receipts, numbers[0], numbers[-1])


def _logs(chain, **flt) -> list[dict]:
    return chain.rpc.call("eth_getLogs", flt)


def test_logs_by_address_return_every_event_in_order_with_full_fields(chain, probe, emitted):
    logs = _logs(
        chain,
        address=probe.address,
        fromBlock=hex(emitted.first_block),
        toBlock=hex(emitted.last_block),
    )
    assert logs == [r["logs"][0] for r in emitted.receipts]
    assert [log["topics"][0] for log in logs] == [VALUE_SET] * 3 + [DEPOSITED]
    sender = chain.accounts[1].address
    assert logs[1]["topics"] == [VALUE_SET, _topic(sender), _topic(2)]
    assert logs[1]["data"] == _topic(20)
    assert logs[3]["data"] == _topic(99)
    for log in logs:
        assert log["removed"] is False
        assert chain.rpc.quantity(log["logIndex"]) == 0
        block = chain.block(chain.rpc.quantity(log["blockNumber"]))
        assert log["blockHash"] == block["hash"]
        assert log["transactionHash"] in block["transactions"]


def test_logs_filter_by_topic_position_and_alternatives(chain, probe, emitted):
    window = {"fromBlock": hex(emitted.first_block), "toBlock": hex(emitted.last_block)}
    only_value_set = _logs(chain, topics=[VALUE_SET], **window)
    assert [log["topics"][2] for log in only_value_set] == [_topic(k) for k in (1, 2, 3)]
    key_two = _logs(chain, address=probe.address, topics=[VALUE_SET, None, _topic(2)], **window)
    assert [log["transactionHash"] for log in key_two] == [emitted.receipts[1]["transactionHash"]]
    one_or_three = _logs(chain, topics=[None, None, [_topic(1), _topic(3)]], **window)
    assert [log["topics"][2] for log in one_or_three] == [_topic(1), _topic(3)]
    either_event = _logs(chain, topics=[[DEPOSITED, VALUE_SET]], **window)
    assert len(either_event) == 4
    by_sender = _logs(chain, topics=[None, _topic(chain.accounts[1].address)], **window)
    assert len(by_sender) == 4
    assert _logs(chain, topics=[None, _topic(chain.accounts[2].address)], **window) == []
    assert _logs(chain, topics=["0x" + "00" * 32], **window) == []


def test_logs_respect_the_block_range_and_block_hash(chain, probe, emitted):
    middle = _logs(
        chain,
        address=probe.address,
        fromBlock=hex(emitted.first_block + 1),
        toBlock=hex(emitted.first_block + 2),
    )
    assert [log["topics"][2] for log in middle] == [_topic(2), _topic(3)]
    single = _logs(chain, blockHash=emitted.receipts[0]["blockHash"])
    assert [log["transactionHash"] for log in single] == [emitted.receipts[0]["transactionHash"]]
    latest_only = _logs(chain, address=probe.address, fromBlock="latest", toBlock="latest")
    assert [log["topics"][0] for log in latest_only] == [DEPOSITED]
    default_range = _logs(chain, address=probe.address)
    assert default_range == latest_only, "fromBlock and toBlock default to latest"
    assert _logs(chain, address="0x" + "77" * 20, fromBlock="earliest", toBlock="latest") == []
    everything = _logs(
        chain, address=[probe.address, "0x" + "77" * 20], fromBlock="earliest", toBlock="latest"
    )
    assert everything[-4:] == [r["logs"][0] for r in emitted.receipts]


def test_block_filter_reports_each_new_block_hash_once(chain):
    filter_id = chain.rpc.call("eth_newBlockFilter")
    assert chain.rpc.call("eth_getFilterChanges", filter_id) == []
    mined = [chain.mine()["hash"] for _ in range(2)]
    assert chain.rpc.call("eth_getFilterChanges", filter_id) == mined
    assert chain.rpc.call("eth_getFilterChanges", filter_id) == []
    assert chain.rpc.call("eth_uninstallFilter", filter_id) is True


def test_log_filter_reports_only_matching_new_logs_once(chain, probe):
    sender = chain.accounts[1]
    filter_id = chain.rpc.call(
        "eth_newFilter", {"address": probe.address, "topics": [VALUE_SET, None, _topic(7)]}
    )
    assert chain.rpc.call("eth_getFilterChanges", filter_id) == []
    chain.transact(sender, {"to": probe.address, "data": probe.data("set_value", 6, 1)})
    match = chain.transact(sender, {"to": probe.address, "data": probe.data("set_value", 7, 1)})
    chain.transact(sender, {"to": probe.address, "data": probe.data("deposit"), "value": 1})
    assert chain.rpc.call("eth_getFilterChanges", filter_id) == match["logs"]
    assert chain.rpc.call("eth_getFilterChanges", filter_id) == []
    assert chain.rpc.call("eth_uninstallFilter", filter_id) is True


def test_log_filter_reports_logs_of_every_block_since_the_last_poll(chain, probe):
    filter_id = chain.rpc.call("eth_newFilter", {"address": probe.address})
    deposit = {"to": probe.address, "data": probe.data("deposit"), "value": 1}
    receipts = [chain.transact(chain.accounts[1], deposit) for _ in range(3)]
    assert len({r["blockNumber"] for r in receipts}) == 3
    assert chain.rpc.call("eth_getFilterChanges", filter_id) == [r["logs"][0] for r in receipts]
    assert chain.rpc.call("eth_uninstallFilter", filter_id) is True


def test_uninstalled_filter_is_gone(chain):
    filter_id = chain.rpc.call("eth_newFilter", {"fromBlock": "latest"})
    assert chain.rpc.call("eth_uninstallFilter", filter_id) is True
    assert chain.rpc.call("eth_uninstallFilter", filter_id) is False
    err = chain.rpc.error("eth_getFilterChanges", filter_id)
    assert "filter not found" in err.message.lower()
    assert chain.rpc.call("eth_uninstallFilter", "0x" + "9" * 16) is False
