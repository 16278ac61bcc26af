"""The JSON-RPC methods of the devnet, over `DevChain` (state, execution) and the store (history).

`Methods.call(name, params)` validates the parameters, runs the method and returns a JSON-able
result or `RawJson` (stored JSON text spliced into the answer unparsed: blocks, receipts and logs
are served straight from SQLite). Errors are `devnet.errors.RpcError`s.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth.abc import BlockHeaderAPI
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from devnet import execution
from devnet import params as P
from devnet.accounts import DevAccount
from devnet.chain import DevChain
from devnet.errors import InvalidParams, MethodNotFound, RpcError, ServerError
from devnet.filters import Filters
from devnet.serialize import q, tx_object
from devnet.txpool import TxPool

CLIENT_VERSION = "veriplex-devnet/0.1.0/py-evm-0.12.1b1"
DEFAULT_PRIORITY_FEE = 10**9  # 1 gwei, as anvil
MAX_LOGS = 50_000


@dataclass(frozen=True)
class RawJson:
    """JSON text already encoded (e.g. read from the store)."""

    text: str


def _arity(signature: inspect.Signature) -> str:
    ps = list(signature.parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in ps):
        return f"at least {sum(p.default is p.empty for p in ps if p.kind is not p.VAR_POSITIONAL)}"
    need = sum(p.default is p.empty for p in ps)
    return str(need) if need == len(ps) else f"{need} to {len(ps)}"


class Methods:
    """Every supported method, as `name -> handler(*params)`."""

    def __init__(self, chain: DevChain, accounts: tuple[DevAccount, ...]) -> None:
        self.chain = chain
        self.store = chain.store
        self.pool = TxPool(chain)
        self.filters = Filters(self)
        self.accounts = {bytes.fromhex(a.address[2:]): a for a in accounts}
        self._account_list = [a.address.lower() for a in accounts]
        self.table: dict[str, Callable[..., Any]] = {}
        self._signatures: dict[str, inspect.Signature] = {}
        for attr in dir(self):
            if attr.startswith(("eth_", "net_", "web3_", "evm_")):
                self.table[attr] = getattr(self, attr)

    def call(self, name: str, params: Any) -> Any:
        handler = self.table.get(name)
        if handler is None:
            raise MethodNotFound(f"the method {name} does not exist/is not available")
        if params is None:
            params = []
        if isinstance(params, dict):  # by-name params are not part of the eth API: one object
            params = [params] if params else []
        if not isinstance(params, list):
            raise InvalidParams(f"params must be an array, got {type(params).__name__}")
        signature = self._signatures.get(name)
        if signature is None:
            signature = self._signatures[name] = inspect.signature(handler)
        try:
            signature.bind(*params)
        except TypeError:
            raise InvalidParams(
                f"wrong number of parameters for {name}: {len(params)} given, expected "
                f"{_arity(signature)}") from None
        return handler(*params)

    # -- helpers ------------------------------------------------------------------------------
    def header(self, ref: P.BlockRef) -> BlockHeaderAPI:
        chain = self.chain
        if ref.block_hash is not None:
            header = chain.header_by_hash(ref.block_hash)
            if header is None:
                raise ServerError(f"header for hash 0x{ref.block_hash.hex()} not found")
            return header
        if ref.tag == "pending":
            return chain.pending_header
        if ref.tag == "earliest":
            number = 0
        elif ref.tag is not None:
            return chain.head
        else:
            assert ref.number is not None
            number = ref.number
        head = chain.head.block_number
        header = chain.header_by_number(number) if number <= head else None
        if header is None:
            raise InvalidParams(f"BlockOutOfRangeError: block height is {head} but requested was {number}")
        return header

    def number(self, ref: P.BlockRef) -> int:
        if ref.tag in ("latest", "safe", "finalized", "pending"):
            return self.chain.head.block_number
        if ref.tag == "earliest":
            return 0
        if ref.block_hash is not None:
            return self.header(ref).block_number
        assert ref.number is not None
        return ref.number

    def state(self, block: Any, what: str = "1"):  # type: ignore[no-untyped-def]
        return self.chain.state_at(self.header(P.block_ref(block, what)))

    # -- meta ---------------------------------------------------------------------------------
    def web3_clientVersion(self) -> str:
        return CLIENT_VERSION

    def web3_sha3(self, value: Any) -> str:
        return "0x" + keccak(P.data(value, "0")).hex()

    def net_version(self) -> str:
        return str(self.chain.chain_id)

    def net_listening(self) -> bool:
        return True

    def net_peerCount(self) -> str:
        return "0x0"

    def eth_chainId(self) -> str:
        return q(self.chain.chain_id)

    def eth_syncing(self) -> bool:
        return False

    def eth_mining(self) -> bool:
        return True

    def eth_coinbase(self) -> str:
        return "0x" + "00" * 20

    def eth_blockNumber(self) -> str:
        return q(self.chain.head.block_number)

    def eth_accounts(self) -> list[str]:
        return list(self._account_list)

    # -- state --------------------------------------------------------------------------------
    def eth_getBalance(self, addr: Any, block: Any = "latest") -> str:
        return q(self.state(block).get_balance(P.address(addr, "0")))

    def eth_getTransactionCount(self, addr: Any, block: Any = "latest") -> str:
        return q(self.state(block).get_nonce(P.address(addr, "0")))

    def eth_getCode(self, addr: Any, block: Any = "latest") -> str:
        return "0x" + bytes(self.state(block).get_code(P.address(addr, "0"))).hex()

    def eth_getStorageAt(self, addr: Any, slot: Any, block: Any = "latest") -> str:
        a = P.address(addr, "0")
        key = P.quantity(slot, "1") if isinstance(slot, str) and len(slot) <= 66 else None
        if key is None:
            raise InvalidParams(f"invalid argument 1: expected a storage slot, got {slot!r}")
        value = self.state(block, "2").get_storage(a, key)
        return "0x" + value.to_bytes(32, "big").hex()

    # -- execution ----------------------------------------------------------------------------
    def eth_call(self, tx: Any, block: Any = "latest", *_overrides: Any) -> str:
        req = P.call_request(tx, "0")
        header = self.header(P.block_ref(block, "1"))
        return "0x" + execution.call(self.chain, req, header).hex()

    def eth_estimateGas(self, tx: Any, block: Any = "pending") -> str:
        req = P.call_request(tx, "0")
        header = self.header(P.block_ref(block, "1"))
        if header is self.chain.pending_header:
            header = self.chain.head if not self.chain.pending else header
        return q(execution.estimate_gas(self.chain, req, header))

    def _next_base_fee(self) -> int:
        return int(self.chain.pending_header.base_fee_per_gas)

    def eth_gasPrice(self) -> str:
        return q(self._next_base_fee() + DEFAULT_PRIORITY_FEE)

    def eth_maxPriorityFeePerGas(self) -> str:
        return q(DEFAULT_PRIORITY_FEE)

    def eth_feeHistory(self, count: Any, newest: Any, percentiles: Any = None) -> dict[str, Any]:
        n = P.quantity(count, "0")
        if not 1 <= n <= 1024:
            raise InvalidParams(f"invalid argument 0: block count ({n}) must be within 1..1024")
        last = min(self.number(P.block_ref(newest, "1")), self.chain.head.block_number)
        pcts = [] if percentiles is None else percentiles
        if not isinstance(pcts, list) or any(
            isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 100 for p in pcts
        ) or pcts != sorted(pcts):
            raise InvalidParams("invalid argument 2: reward percentiles must be increasing numbers in 0..100")
        first = max(0, last - n + 1)
        fees, ratios, rewards = [], [], []
        for number in range(first, last + 1):
            h = self.chain.header_by_number(number)
            assert h is not None
            fees.append(q(h.base_fee_per_gas))
            ratios.append(h.gas_used / h.gas_limit)
            if pcts:
                tips = sorted(
                    int(json.loads(t)["gasPrice"], 16) - h.base_fee_per_gas
                    for t in self.store.txs_of_block(number))
                rewards.append([q(tips[min(len(tips) - 1, int(len(tips) * p / 100))] if tips else 0)
                                for p in pcts])
        nxt = self.chain.chain.create_header_from_parent(self.chain.header_by_number(last))
        fees.append(q(nxt.base_fee_per_gas))
        out: dict[str, Any] = {"oldestBlock": q(first), "baseFeePerGas": fees, "gasUsedRatio": ratios}
        if pcts:
            out["reward"] = rewards
        return out

    # -- transactions -------------------------------------------------------------------------
    def eth_sendRawTransaction(self, raw: Any) -> str:
        tx = self.pool.decode(P.data(raw, "0"))
        return "0x" + self.pool.submit(tx).hex()

    def eth_sendTransaction(self, tx: Any) -> str:
        req = P.call_request(tx, "0")
        if not tx.get("from"):
            raise InvalidParams("invalid argument 0: eth_sendTransaction needs a from address")
        account = self.accounts.get(req.sender)
        if account is None:
            raise ServerError(f"unknown account 0x{req.sender.hex()}: not a devnet dev account")
        nonce = req.nonce if req.nonce is not None else self.chain.pending_nonce(req.sender)
        gas = req.gas
        if gas is None:  # estimating surfaces a revert as an error before anything is sent
            on_top = self.chain.pending_header if self.chain.pending else self.chain.head
            gas = execution.estimate_gas(self.chain, req, on_top)
        fields: dict[str, Any] = {
            "chainId": self.chain.chain_id, "nonce": nonce, "gas": gas, "value": req.value,
            "data": req.data, "to": to_checksum_address(req.to) if req.to else b"",
        }
        if req.gas_price is not None and req.max_fee_per_gas is None:
            fields["gasPrice"] = req.gas_price
        else:
            tip = req.max_priority_fee_per_gas
            tip = DEFAULT_PRIORITY_FEE if tip is None else tip
            fields["maxPriorityFeePerGas"] = tip
            fields["maxFeePerGas"] = (req.max_fee_per_gas if req.max_fee_per_gas is not None
                                      else 2 * self._next_base_fee() + tip)
            fields["type"] = 2
        if not req.to:
            del fields["to"]
        signed = Account.sign_transaction(fields, account.private_key)
        return self.eth_sendRawTransaction("0x" + bytes(signed.raw_transaction).hex())

    def eth_getTransactionByHash(self, tx_hash: Any) -> Any:
        h = P.hash32(tx_hash, "0")
        row = self.store.tx(h)
        if row is not None:
            return RawJson(row[0])
        pending = self.chain.pending.get(h) or next(
            (t for qd in self.pool.queued.values() for t in qd.values() if t.hash == h), None)
        if pending is None:
            return None
        return tx_object(pending, block_hash=None, block_number=None, index=None,
                         base_fee=self.chain.pending_header.base_fee_per_gas)

    def eth_getTransactionReceipt(self, tx_hash: Any) -> Any:
        row = self.store.tx(P.hash32(tx_hash, "0"))
        return RawJson(row[1]) if row is not None else None

    def eth_getBlockReceipts(self, block: Any) -> Any:
        number = self.number(P.block_ref(block, "0"))
        if self.store.block_hash(number) is None:
            return None
        return RawJson("[" + ",".join(self.store.receipts_of_block(number)) + "]")

    # -- blocks -------------------------------------------------------------------------------
    def _block(self, number: int | None, full: Any) -> Any:
        full = P.boolean(full, "1")
        body = self.store.block_by_number(number) if number is not None else None
        if body is None:
            return None
        if not full:
            return RawJson(body)
        obj = json.loads(body)
        obj["transactions"] = [json.loads(t) for t in self.store.txs_of_block(number)]
        return obj

    def eth_getBlockByNumber(self, block: Any, full: Any = False) -> Any:
        ref = P.block_ref(block, "0")
        return self._block(self.number(ref), full)

    def eth_getBlockByHash(self, block_hash: Any, full: Any = False) -> Any:
        return self._block(self.store.block_number_by_hash(P.hash32(block_hash, "0")), full)

    def eth_getBlockTransactionCountByNumber(self, block: Any) -> Any:
        number = self.number(P.block_ref(block, "0"))
        body = self.store.block_by_number(number)
        return None if body is None else q(len(json.loads(body)["transactions"]))

    # -- logs and filters ---------------------------------------------------------------------
    def logs(self, f: P.LogFilter, first: int | None = None) -> RawJson:
        head = self.chain.head.block_number
        if f.block_hash is not None:
            number = self.store.block_number_by_hash(f.block_hash)
            if number is None:
                raise ServerError(f"unknown block 0x{f.block_hash.hex()}")
            lo = hi = number
        else:
            lo = self.number(f.from_ref) if first is None else first
            hi = min(self.number(f.to_ref), head)
            if lo > head:
                raise InvalidParams(f"BlockOutOfRangeError: block height is {head} but requested was {lo}")
            if lo > hi:
                return RawJson("[]")
        rows = self.store.logs(lo, hi, f.addresses, f.topics, MAX_LOGS)
        if len(rows) > MAX_LOGS:
            raise RpcError(f"query returned more than {MAX_LOGS} results; narrow the block range",
                           code=-32005)
        return RawJson("[" + ",".join(rows) + "]")

    def eth_getLogs(self, criteria: Any) -> RawJson:
        return self.logs(P.log_filter(criteria, "0"))

    def eth_newFilter(self, criteria: Any) -> str:
        return self.filters.new_log_filter(P.log_filter(criteria, "0"))

    def eth_newBlockFilter(self) -> str:
        return self.filters.new_block_filter()

    def eth_getFilterChanges(self, fid: Any) -> Any:
        return self.filters.changes(P.quantity(fid, "0"))

    def eth_getFilterLogs(self, fid: Any) -> Any:
        return self.filters.all_logs(P.quantity(fid, "0"))

    def eth_uninstallFilter(self, fid: Any) -> bool:
        return self.filters.uninstall(P.quantity(fid, "0"))

    # -- dev methods --------------------------------------------------------------------------
    def evm_snapshot(self) -> str:
        sid = self.chain.snapshot()
        return q(sid)

    def evm_revert(self, sid: Any) -> bool:
        ok = self.chain.revert(P.quantity(sid, "0"))
        if ok:
            self.pool.clear()
            self.filters.rewind(self.chain.head.block_number)
        return ok

    def evm_mine(self, arg: Any = None) -> str:
        timestamp, blocks = None, 1
        if isinstance(arg, dict):
            if arg.get("timestamp") is not None:
                timestamp = P.quantity(arg["timestamp"], "0.timestamp")
            if arg.get("blocks") is not None:
                blocks = P.quantity(arg["blocks"], "0.blocks")
        elif arg is not None:
            timestamp = P.quantity(arg, "0")
        if not 1 <= blocks <= 10_000:
            raise InvalidParams(f"invalid argument 0: blocks ({blocks}) must be within 1..10000")
        for i in range(blocks):
            self.chain.mine(timestamp if i == 0 else None)
        return "0x0"

    def evm_increaseTime(self, seconds: Any) -> int:
        return self.chain.increase_time(P.quantity(seconds, "0"))

    def evm_setNextBlockTimestamp(self, timestamp: Any) -> None:
        ts = P.quantity(timestamp, "0")
        head = self.chain.head
        if ts <= head.timestamp:
            raise InvalidParams(
                f"timestamp ({ts}) must be greater than the latest block's ({head.timestamp})")
        self.chain.set_next_timestamp(ts)
        return None
