"""py-evm blocks, transactions, receipts and logs as JSON-RPC objects (the shapes geth returns).

Pure functions: the chain calls them once when a block is mined and stores the JSON text, so
reads never touch py-evm again.
"""

from __future__ import annotations

from typing import Any

import rlp
from eth.abc import BlockAPI, ReceiptAPI, SignedTransactionAPI

ZERO_HASH = "0x" + "00" * 32


def q(value: int) -> str:
    """A JSON-RPC quantity."""
    return hex(value)


def d(value: bytes) -> str:
    """JSON-RPC data."""
    return "0x" + bytes(value).hex()


def addr(value: bytes) -> str:
    """An address as geth writes it (lowercase hex)."""
    return "0x" + bytes(value).hex()


def tx_object(
    tx: SignedTransactionAPI,
    *,
    block_hash: bytes | None,
    block_number: int | None,
    index: int | None,
    base_fee: int | None,
) -> dict[str, Any]:
    """eth_getTransactionByHash's object; block fields are null while pending."""
    obj: dict[str, Any] = {
        "hash": d(tx.hash),
        "nonce": q(tx.nonce),
        "blockHash": d(block_hash) if block_hash is not None else None,
        "blockNumber": q(block_number) if block_number is not None else None,
        "transactionIndex": q(index) if index is not None else None,
        "from": addr(tx.sender),
        "to": addr(tx.to) if tx.to else None,
        "value": q(tx.value),
        "gas": q(tx.gas),
        "input": d(tx.data),
        "r": q(tx.r),
        "s": q(tx.s),
        "type": q(tx.type_id or 0),
    }
    if tx.type_id is None:  # legacy
        obj["gasPrice"] = q(tx.gas_price)
        obj["v"] = q(tx.v)
        if tx.chain_id is not None:
            obj["chainId"] = q(tx.chain_id)
        return obj
    obj["chainId"] = q(tx.chain_id)
    obj["v"] = q(tx.y_parity)
    obj["yParity"] = q(tx.y_parity)
    obj["accessList"] = [
        {"address": addr(a), "storageKeys": ["0x" + k.to_bytes(32, "big").hex() for k in keys]}
        for a, keys in tx.access_list
    ]
    if tx.type_id == 1:
        obj["gasPrice"] = q(tx.gas_price)
    else:
        obj["maxFeePerGas"] = q(tx.max_fee_per_gas)
        obj["maxPriorityFeePerGas"] = q(tx.max_priority_fee_per_gas)
        obj["gasPrice"] = q(effective_gas_price(tx, base_fee or 0))
    return obj


def effective_gas_price(tx: SignedTransactionAPI, base_fee: int) -> int:
    if tx.type_id in (None, 1):
        return int(tx.gas_price)
    return min(tx.max_fee_per_gas, base_fee + tx.max_priority_fee_per_gas)


def log_object(
    log: Any, *, block_hash: bytes, block_number: int, tx_hash: bytes, tx_index: int,
    log_index: int,
) -> dict[str, Any]:
    return {
        "address": addr(log.address),
        "topics": ["0x" + t.to_bytes(32, "big").hex() for t in log.topics],
        "data": d(log.data),
        "blockHash": d(block_hash),
        "blockNumber": q(block_number),
        "transactionHash": d(tx_hash),
        "transactionIndex": q(tx_index),
        "logIndex": q(log_index),
        "removed": False,
    }


def receipt_object(
    tx: SignedTransactionAPI,
    receipt: ReceiptAPI,
    *,
    block_hash: bytes,
    block_number: int,
    index: int,
    gas_used: int,
    base_fee: int,
    contract_address: bytes | None,
    logs: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "transactionHash": d(tx.hash),
        "transactionIndex": q(index),
        "blockHash": d(block_hash),
        "blockNumber": q(block_number),
        "from": addr(tx.sender),
        "to": addr(tx.to) if tx.to else None,
        "cumulativeGasUsed": q(receipt.gas_used),
        "gasUsed": q(gas_used),
        "effectiveGasPrice": q(effective_gas_price(tx, base_fee)),
        "contractAddress": addr(contract_address) if contract_address else None,
        "logs": logs,
        "logsBloom": d(receipt.bloom.to_bytes(256, "big")),
        "status": "0x1" if receipt.state_root == b"\x01" else "0x0",
        "type": q(tx.type_id or 0),
    }


def block_object(block: BlockAPI) -> dict[str, Any]:
    """eth_getBlockBy*'s object with transaction hashes (the full form is assembled on read)."""
    h = block.header
    obj: dict[str, Any] = {
        "number": q(h.block_number),
        "hash": d(h.hash),
        "parentHash": d(h.parent_hash),
        "nonce": d(h.nonce),
        "sha3Uncles": d(h.uncles_hash),
        "logsBloom": d(h.bloom.to_bytes(256, "big")),
        "transactionsRoot": d(h.transaction_root),
        "stateRoot": d(h.state_root),
        "receiptsRoot": d(h.receipt_root),
        "miner": addr(h.coinbase),
        "difficulty": q(h.difficulty),
        "totalDifficulty": q(0),
        "extraData": d(h.extra_data),
        "size": q(len(rlp.encode(block))),
        "gasLimit": q(h.gas_limit),
        "gasUsed": q(h.gas_used),
        "timestamp": q(h.timestamp),
        "mixHash": d(h.mix_hash),
        "baseFeePerGas": q(h.base_fee_per_gas),
        "transactions": [d(tx.hash) for tx in block.transactions],
        "uncles": [],
    }
    for field, key in (
        ("withdrawals_root", "withdrawalsRoot"),
        ("blob_gas_used", "blobGasUsed"),
        ("excess_blob_gas", "excessBlobGas"),
        ("parent_beacon_block_root", "parentBeaconBlockRoot"),
        ("requests_hash", "requestsHash"),
    ):
        value = getattr(h, field, None)
        if value is not None:
            obj[key] = q(value) if isinstance(value, int) else d(value)
    if obj.get("withdrawalsRoot") is not None:
        obj["withdrawals"] = []
    return obj
