"""The indexer: follows any EVM JSON-RPC endpoint into the explorer's tables.

Incremental and resumable: the index's highest block is the cursor, so a restart of the explorer
or of the node just continues. Before each pass the indexer compares its tip's hash with the
node's block at that height; after a reorg or an `evm_revert` (the node's head went back, or the
hash differs) it walks back to the last common block and deletes everything above it, then
re-indexes. Blocks are committed in batches, each batch in one transaction, so a crash never
leaves half a block. Chain failures are recorded in `IndexerStatus` (shown by the UI as "behind")
and retried on the next poll; they never stop the web UI.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from contracts.errors import ChainError
from contracts.rpc import Rpc
from devnet.explorer import tasks
from devnet.explorer.decode import Decoder
from devnet.explorer.models import BLOCK_SCOPED, Block, Log, Meta, Request, Served, Tx

log = logging.getLogger(__name__)


@dataclass
class IndexerStatus:
    """What the UI shows about the indexer (shared between its thread and the web app)."""

    rpc_url: str
    head: int | None = None  # the node's head at the last successful poll
    indexed: int | None = None  # highest indexed block
    last_error: str | None = None
    last_ok: float | None = None  # time.time() of the last successful poll
    reorgs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def behind(self) -> bool:
        return self.last_error is not None or (
            self.head is not None and (self.indexed or -1) < self.head)

    def as_json(self) -> dict[str, Any]:
        return {"rpc_url": self.rpc_url, "head": self.head, "indexed": self.indexed,
                "behind": self.behind(), "last_error": self.last_error, "last_ok": self.last_ok,
                "reorgs": self.reorgs}


def _hex(b: str | None) -> str | None:
    return b.lower() if isinstance(b, str) else None


def _int(h: str | int | None) -> int:
    if h is None:
        return 0
    return h if isinstance(h, int) else int(h, 16)


class Indexer:
    """Copies blocks, transactions, receipts and logs from `rpc` into `engine`'s tables."""

    def __init__(self, rpc: Rpc, engine: Engine, decoder: Decoder, status: IndexerStatus,
                 batch_blocks: int = 200) -> None:
        self.rpc, self.engine, self.decoder, self.status = rpc, engine, decoder, status
        self.batch_blocks = batch_blocks
        self._block_receipts = True  # eth_getBlockReceipts until the node says it lacks it
        self._chain_id_saved = False
        with Session(engine) as s:  # an index made before the tasks table: fill it from logs
            tasks.backfill(s)
        self._topics = {
            "RequestSettled": decoder.event_topic("Payments", "RequestSettled"),
            "BatchSettled": decoder.event_topic("Payments", "BatchSettled"),
        }

    # ------------------------------------------------------------------ RPC
    def _call(self, method: str, params: list[Any]) -> Any:
        return self.rpc.raw_request(method, params)

    def _block(self, number: int, full: bool = True) -> dict[str, Any] | None:
        return self._call("eth_getBlockByNumber", [hex(number), full])  # type: ignore[no-any-return]

    def _receipts(self, block: dict[str, Any]) -> dict[str, dict[str, Any]]:
        if not block["transactions"]:
            return {}
        if self._block_receipts:
            try:
                rs = self._call("eth_getBlockReceipts", [block["number"]])
                if rs is not None:
                    return {r["transactionHash"].lower(): r for r in rs}
            except ChainError:
                self._block_receipts = False
        return {t["hash"].lower(): self._call("eth_getTransactionReceipt", [t["hash"]])
                for t in block["transactions"]}

    def _revert_reason(self, tx: dict[str, Any], number: int) -> str:
        """Replay a failed transaction as eth_call on its parent block to recover its reason."""
        try:
            rev = self.rpc.replay(tx["from"], tx.get("to"), tx.get("input", "0x"),
                                  _int(tx.get("value")), _int(tx.get("gas")), number - 1)
        except ChainError as exc:
            return f"reverted (reason unavailable: {exc})"
        if rev is not None:
            return str(rev)
        return "reverted (the call succeeds when replayed on the parent block: likely out of gas)"

    # ------------------------------------------------------------------ sync
    def local_tip(self, s: Session) -> Block | None:
        return s.scalars(select(Block).order_by(Block.number.desc()).limit(1)).first()

    def _rewind(self, s: Session, head: int) -> None:
        """Delete indexed blocks the node no longer has (reorg or evm_revert)."""
        tip = self.local_tip(s)
        if tip is None:
            return
        k = min(tip.number, head)
        while k >= 0:
            ours = s.get(Block, k)
            theirs = self._block(k, full=False)
            if ours is not None and theirs is not None and ours.hash == theirs["hash"].lower():
                break
            k -= 1
        if k < tip.number:
            log.warning("chain at %s diverged after block %d; re-indexing", self.rpc.url, k)
            for model in BLOCK_SCOPED:
                s.execute(delete(model).where(model.block_number > k))
            s.execute(delete(Block).where(Block.number > k))
            tasks.rewind(s, k)
            set_charged_total(s, sum(int(c) for c in s.scalars(select(Request.charge_wei))))
            s.commit()
            with self.status.lock:
                self.status.reorgs += 1

    def sync_once(self, max_blocks: int | None = None) -> int:
        """Index up to `max_blocks` new blocks (all by default); returns how many were indexed."""
        try:
            head = _int(self._call("eth_blockNumber", []))
            done = 0
            with Session(self.engine) as s:
                if not self._chain_id_saved:  # receipts name their chain even with the node down
                    s.merge(Meta(key=CHAIN_ID_KEY, value=str(_int(self._call("eth_chainId", [])))))
                    s.commit()
                    self._chain_id_saved = True
                self._rewind(s, head)
                tip = self.local_tip(s)
                nxt = 0 if tip is None else tip.number + 1
                parent = None if tip is None else tip.hash
                end = head if max_blocks is None else min(head, nxt + max_blocks - 1)
                while nxt <= end:
                    stop = min(end, nxt + self.batch_blocks - 1)
                    for n in range(nxt, stop + 1):
                        block = self._block(n)
                        if block is None:  # the node went back under us: next pass rewinds
                            stop = n - 1
                            break
                        if parent is not None and block["parentHash"].lower() != parent:
                            s.rollback()
                            self._rewind(s, n - 1)
                            return done
                        self._add_block(s, block)
                        parent = block["hash"].lower()
                    s.commit()
                    done += stop - nxt + 1
                    nxt = stop + 1
                    with self.status.lock:
                        self.status.indexed = stop
                indexed = self.local_tip(s)
            with self.status.lock:
                self.status.head, self.status.last_error = head, None
                self.status.indexed = indexed.number if indexed else None
                self.status.last_ok = time.time()
            return done
        except ChainError as exc:
            with self.status.lock:
                self.status.last_error = str(exc)
            return 0

    def run(self, stop: threading.Event, poll_s: float) -> None:
        """Follow the chain until `stop` is set."""
        while not stop.is_set():
            try:
                n = self.sync_once(self.batch_blocks)
            except Exception as exc:  # noqa: BLE001 - keep following; the UI shows the error
                log.exception("indexer pass failed")
                with self.status.lock:
                    self.status.last_error = f"indexer error: {exc!r}"
                n = 0
            if n == 0:
                stop.wait(poll_s)

    # ------------------------------------------------------------------ rows
    def _add_block(self, s: Session, b: dict[str, Any]) -> None:
        number = _int(b["number"])
        txs = b["transactions"]
        s.add(Block(number=number, hash=b["hash"].lower(), parent_hash=b["parentHash"].lower(),
                    timestamp=_int(b["timestamp"]), miner=(b.get("miner") or "0x").lower(),
                    gas_used=_int(b["gasUsed"]), gas_limit=_int(b["gasLimit"]),
                    tx_count=len(txs)))
        receipts = self._receipts(b)
        for t in txs:
            h = t["hash"].lower()
            r = receipts[h]
            ok = _int(r.get("status", "0x1")) == 1
            data = bytes.fromhex(t.get("input", "0x")[2:])
            dec = self.decoder.call(t.get("to"), data)
            gas_used = _int(r["gasUsed"])
            price = _int(r.get("effectiveGasPrice") or t.get("gasPrice"))
            s.add(Tx(hash=h, block_number=number, tx_index=_int(t["transactionIndex"]),
                     sender=t["from"].lower(), to=_hex(t.get("to")),
                     created=_hex(r.get("contractAddress")), value_wei=str(_int(t["value"])),
                     nonce=_int(t["nonce"]), input=t.get("input", "0x"), status=ok,
                     gas_used=gas_used, fee_wei=str(gas_used * price),
                     contract=dec.contract if dec else (self.decoder.contract_at(t.get("to"))
                                                        or self.decoder.contract_at(r.get("contractAddress"))),
                     method=dec.name if dec else None, args=dec.args if dec else None,
                     revert_reason=None if ok else self._revert_reason(t, number)))
            self._add_logs(s, number, h, r.get("logs") or [])

    def _add_logs(self, s: Session, number: int, tx_hash: str, logs: list[dict[str, Any]]) -> None:
        settled: list[dict[str, Any]] = []
        batch: dict[str, Any] | None = None
        for lg in logs:
            topics = [t.lower() for t in lg.get("topics", [])]
            dec = self.decoder.log(
                lg["address"], [bytes.fromhex(t[2:]) for t in topics],
                bytes.fromhex(lg.get("data", "0x")[2:]),
                {"blockNumber": number, "transactionHash": tx_hash,
                 "logIndex": _int(lg["logIndex"]), "transactionIndex": 0, "blockHash": "0x" + "00" * 32})
            padded = topics + [None] * (4 - len(topics))
            s.add(Log(block_number=number, tx_hash=tx_hash, log_index=_int(lg["logIndex"]),
                      address=lg["address"].lower(), topic0=padded[0], topic1=padded[1],
                      topic2=padded[2], topic3=padded[3], data=lg.get("data", "0x"),
                      contract=dec.contract if dec else None, event=dec.name if dec else None,
                      args=dec.args if dec else None))
            if dec and dec.contract == "Verification" and dec.name in tasks.EVENTS:
                tasks.record(s, dec.name, lg["address"], dict(dec.args), number)
            if dec and dec.contract == "Payments" and topics[0] == self._topics["RequestSettled"]:
                settled.append(dict(dec.args, _payments=lg["address"].lower()))
            elif dec and dec.contract == "Payments" and topics[0] == self._topics["BatchSettled"]:
                batch = dec.args
        if batch is None:
            return
        pipelines = batch.get("pipelines", [])
        for rec in settled:
            pipe = pipelines[rec["pipeline_index"]] if rec["pipeline_index"] < len(pipelines) else {}
            add_charged(s, int(rec["charge"]))
            s.add(Request(request_id=rec["request_id"], block_number=number, tx_hash=tx_hash,
                          payments=rec["_payments"],
                          batch_id=rec["batch_id"], gateway=batch["gateway"],
                          key_hash=rec["key_hash"], model_id=int(pipe.get("model_id", 0)),
                          tokens_in=rec["tokens_in"], tokens_out=rec["tokens_out"],
                          charge_wei=str(rec["charge"]), commitment_root=rec["commitment_root"],
                          pipeline=pipe))
            for st in pipe.get("stages", []):
                s.add(Served(block_number=number, operator=st["operator"],
                             request_id=rec["request_id"], layer_start=st["layer_start"],
                             layer_end=st["layer_end"]))


CHARGED_KEY = "charged_wei"
CHAIN_ID_KEY = "chain_id"


def indexed_chain_id(s: Session) -> int | None:
    """The chain id of the indexed chain (saved on the first pass), if known."""
    row = s.get(Meta, CHAIN_ID_KEY)
    return int(row.value) if row else None


def set_charged_total(s: Session, total: int) -> None:
    """The running sum of all settled charges (exact: wei overflow SQL integer sums)."""
    s.merge(Meta(key=CHARGED_KEY, value=str(total)))


def charged_total(s: Session) -> int:
    row = s.get(Meta, CHARGED_KEY)
    return int(row.value) if row else 0


def add_charged(s: Session, wei: int) -> None:
    set_charged_total(s, charged_total(s) + wei)


def count_rows(engine: Engine) -> dict[str, int]:
    """Row counts of the main tables (home page totals, bench)."""
    with Session(engine) as s:
        return {name: int(s.scalar(select(func.count()).select_from(m)) or 0)
                for name, m in (("blocks", Block), ("transactions", Tx), ("events", Log),
                                ("requests", Request))}
