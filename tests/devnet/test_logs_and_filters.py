"""eth_getLogs from the indexed logs table, and polling filters."""

from __future__ import annotations

from eth_abi import encode as abi_encode
from eth_utils import event_signature_to_log_topic, function_signature_to_4byte_selector

from tests.devnet.local import LocalDevnet, Probe, RpcFailed

PINGED = "0x" + event_signature_to_log_topic("Pinged(address,uint256,string)").hex()


def ping(local: LocalDevnet, sender_index: int, address: str, n: int) -> dict:
    data = "0x" + (function_signature_to_4byte_selector("ping(uint256)") + abi_encode(["uint256"], [n])).hex()
    return local.send(local.accounts[sender_index], to=address, data=data, gas=100_000)


def topic_of(value: int) -> str:
    return "0x" + value.to_bytes(32, "big").hex()


def test_logs_are_found_by_address_topics_and_block_range(local: LocalDevnet, probe: Probe) -> None:
    a = local.deploy(local.accounts[0], probe)
    b = local.deploy(local.accounts[0], probe)
    receipts = [ping(local, 1, a, 1), ping(local, 2, b, 2), ping(local, 1, a, 3)]
    blocks = [r["blockNumber"] for r in receipts]
    by_a = local.rpc("eth_getLogs", {"fromBlock": "0x0", "address": a})
    assert [lg["topics"][2] for lg in by_a] == [topic_of(1), topic_of(3)]
    assert by_a[0]["topics"][0] == PINGED
    assert by_a[0] == receipts[0]["logs"][0]  # the same object as in the receipt
    both = local.rpc("eth_getLogs", {"fromBlock": "0x0", "address": [a, b], "topics": [PINGED]})
    assert len(both) == 3
    sender2 = "0x" + bytes(12).hex() + local.accounts[2].address[2:].lower()
    assert [lg["address"] for lg in local.rpc(
        "eth_getLogs", {"fromBlock": "0x0", "topics": [None, sender2]})] == [b.lower()]
    assert len(local.rpc("eth_getLogs", {"fromBlock": "0x0", "topics": [None, None, [topic_of(2), topic_of(3)]]})) == 2
    ranged = local.rpc("eth_getLogs", {"fromBlock": blocks[1], "toBlock": blocks[1]})
    assert [lg["address"] for lg in ranged] == [b.lower()]
    by_hash = local.rpc("eth_getLogs", {"blockHash": receipts[2]["blockHash"]})
    assert by_hash == receipts[2]["logs"]
    assert local.rpc("eth_getLogs", {"fromBlock": "0x0", "topics": ["0x" + "ab" * 32]}) == []


def test_get_logs_beyond_the_head_is_an_invalid_params_error(local: LocalDevnet) -> None:
    head = int(local.rpc("eth_blockNumber"), 16)
    try:
        local.rpc("eth_getLogs", {"fromBlock": hex(head + 5)})
    except RpcFailed as err:
        assert err.code == -32602 and f"requested was {head + 5}" in err.message
    else:
        raise AssertionError("a range starting past the head must be refused")
    assert local.rpc("eth_getLogs", {"fromBlock": "0x0", "toBlock": hex(head + 50)}) == []


def test_log_filter_reports_only_new_matching_logs_once(local: LocalDevnet, probe: Probe) -> None:
    a = local.deploy(local.accounts[0], probe)
    b = local.deploy(local.accounts[0], probe)
    ping(local, 1, a, 1)  # before the filter: never reported
    fid = local.rpc("eth_newFilter", {"fromBlock": "0x0", "address": a, "topics": [PINGED]})
    ping(local, 1, a, 2)
    ping(local, 1, b, 9)
    changes = local.rpc("eth_getFilterChanges", fid)
    assert [lg["topics"][2] for lg in changes] == [topic_of(2)]
    assert local.rpc("eth_getFilterChanges", fid) == []
    assert len(local.rpc("eth_getFilterLogs", fid)) == 2  # whole range of the criteria
    assert local.rpc("eth_uninstallFilter", fid) is True
    assert local.rpc("eth_uninstallFilter", fid) is False
    try:
        local.rpc("eth_getFilterChanges", fid)
    except RpcFailed as err:
        assert "filter not found" in err.message
    else:
        raise AssertionError("an uninstalled filter must be gone")


def test_block_filter_reports_new_block_hashes(local: LocalDevnet) -> None:
    fid = local.rpc("eth_newBlockFilter")
    local.rpc("evm_mine")
    local.rpc("evm_mine")
    hashes = local.rpc("eth_getFilterChanges", fid)
    latest = local.rpc("eth_getBlockByNumber", "latest", False)
    assert len(hashes) == 2 and hashes[-1] == latest["hash"]
    assert local.rpc("eth_getFilterChanges", fid) == []
