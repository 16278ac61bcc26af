"""The settlement batcher: a background thread that cuts batches of served-request records and
settles them with `Payments.settle_batch`, exactly once.

Per batch: build the call, estimate gas (a revert surfaces here), sign locally, store the tx hash and
raw bytes, *then* broadcast and wait for the receipt. On any later pass (including after a crash or
restart) a batch in `broadcast` state is resolved from the chain first: a mined receipt finalises it;
a batch whose first record's `seq` is already settled on chain (the contract's per-gateway bitmap)
is finalised without resending; only otherwise is the stored raw transaction rebroadcast (or, if its
nonce was consumed, a fresh one built). An RPC error leaves the batch for the next pass, so requests
keep being served while the chain is unreachable. After each pass the `TaskOpener` (tasks.py) opens
verification tasks for sampled records of settled batches."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from eth_utils import to_checksum_address

from contracts.batch import Pipeline, Record, Stage
from contracts.client import Chain
from contracts.errors import Revert

from .store import BatchRow, RequestRow, Store

log = logging.getLogger(__name__)
EXIT_AFTER_BROADCAST_CODE = 77  # test hook's exit status


def batch_call(rows: list[RequestRow]) -> tuple[list[bytes], list[Pipeline], list[Record]]:
    """The `settle_batch` arguments for records: deduplicated key and pipeline tables."""
    keys: list[bytes] = []
    pipes: list[Pipeline] = []
    records: list[Record] = []
    for r in rows:
        if r.key_hash not in keys:
            keys.append(r.key_hash)
        stages = tuple(Stage(to_checksum_address(op), a, b) for op, a, b in json.loads(r.pipeline))
        pipe = Pipeline(r.model_id, stages)
        if pipe not in pipes:
            pipes.append(pipe)
        records.append(Record(r.seq, keys.index(r.key_hash), pipes.index(pipe), r.tokens_in,
                              r.tokens_out, int(r.charge), r.commitment_root))
    return keys, pipes, records


class Settler:
    """Cuts and sends batches; `on_settled(batch_row_id)` runs after each one is final."""

    def __init__(self, chain: Chain, store: Store, *, batch_size: int, max_age_s: float,
                 tick_s: float, exit_after_broadcast: bool = False,
                 on_settled: Callable[[int], None] | None = None,
                 task_opener: Any = None) -> None:
        assert chain.signer is not None, "the gateway's chain client needs its signer"
        self.chain, self.store = chain, store
        self.batch_size, self.max_age_s, self.tick_s = batch_size, max_age_s, tick_s
        self.exit_after_broadcast = exit_after_broadcast
        self.on_settled = on_settled
        self.task_opener = task_opener  # tasks.TaskOpener: run at most once a tick
        self.last_error: str | None = None
        self.settled_batches = 0
        self.failed_passes = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._tasks_at = float("-inf")  # monotonic time of the last task-opener pass

    # ------------------------------------------------------------------ loop
    def start(self) -> Settler:
        self._thread = threading.Thread(target=self._run, name="gateway-settler", daemon=True)
        self._thread.start()
        return self

    def stop(self, flush: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if flush:
            try:
                self.run_once(force=True)
            except Exception as exc:  # noqa: BLE001 - shutdown: keep the records for next start
                log.warning("final settlement pass failed (kept for the next start): %s", exc)

    def nudge(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 - keep serving; retry next tick
                self.failed_passes += 1
                self.last_error = str(exc)
                log.warning("settlement pass failed, retrying: %s", exc)
            self._wake.wait(self.tick_s)
            self._wake.clear()

    def run_once(self, force: bool = False) -> int:
        """One pass: resolve/send open batches, cut new ones. Returns batches settled."""
        done = 0
        for b in self.store.open_batches():
            done += self._settle(b)
        while (bid := self.store.cut_batch(self.batch_size, self.max_age_s, force)) is not None:
            b = self.store.batch(bid)
            assert b is not None
            done += self._settle(b)
        self.last_error = None
        # A nudge (one per served request) only needs the batch cut; the task opener's chain
        # reads run once per tick, or at once when a batch just settled.
        now = time.monotonic()
        if self.task_opener is not None and (done or force or now - self._tasks_at >= self.tick_s):
            self._tasks_at = now
            try:
                self.task_opener.run_once()
            except Exception as exc:  # noqa: BLE001 - tasks are retried next tick; keep settling
                self.task_opener.last_error = str(exc)
                log.warning("verification task pass failed, retrying: %s", exc)
        return done

    # ------------------------------------------------------------------ one batch
    def _settle(self, b: BatchRow) -> int:
        rows = self.store.batch_records(b.id)
        if b.status == "broadcast" and b.tx_hash:
            receipt = self._receipt(b.tx_hash)
            if receipt is not None and receipt["status"] == 1:
                return self._finalize(b.id, receipt)
            if self.chain.payments.is_settled(self.chain.signer.address, rows[0].seq):
                return self._finalize(b.id, None)  # settled by an earlier transaction
            if receipt is None and self._pending(b.tx_hash):
                return 0  # still in the mempool: wait
        keys, pipes, records = batch_call(rows)
        pay = self.chain.payments
        self._ensure_bond()
        data = pay.contract.functions.settle_batch(
            keys, [p.as_tuple() for p in pipes], [r.as_tuple() for r in records]
        )._encode_transaction_data()
        attempts = b.attempts
        signed: list[bytes] = []

        def persist(tx_hash: bytes, raw: bytes) -> None:
            # Before the broadcast: after a crash the restart finds the hash and checks the chain.
            signed.append(tx_hash)
            self.store.set_batch(b.id, status="broadcast", tx_hash="0x" + tx_hash.hex(),
                                 raw_tx=raw, attempts=attempts + 1)

        def test_hook(tx_hash: bytes) -> None:
            if self.exit_after_broadcast:
                log.error("TEST HOOK: exiting right after broadcasting batch %d (0x%s)",
                          b.id, tx_hash.hex())
                os._exit(EXIT_AFTER_BROADCAST_CODE)

        try:
            receipt = pay.rpc.transact(self.chain.signer, pay.address, bytes.fromhex(data[2:]),
                                       on_signed=persist, on_sent=test_hook)
        except Revert as exc:
            if signed:
                raise  # mined and failed: retried next tick, after a fresh look at the chain
            self.store.set_batch(b.id, status="failed", error=str(exc)[:1000])
            log.error("batch %d refused by the contract: %s", b.id, exc)
            return 0
        return self._finalize(b.id, receipt)

    def _ensure_bond(self) -> None:
        """Only bonded gateways may settle: top the bond up to the contract's minimum (once it
        holds, this is two reads per batch: the minimum and the bond)."""
        pay = self.chain.payments
        me = self.chain.signer.address
        need = pay.min_gateway_bond() - pay.gateway_bond(me)
        if need > 0:
            pay.bond_gateway(need)
            log.info("gateway bonded %d wei (the minimum to settle)", need)

    def _receipt(self, tx_hash: str) -> dict[str, Any] | None:
        return self.chain.payments.rpc.receipt(bytes.fromhex(tx_hash[2:]))

    def _pending(self, tx_hash: str) -> bool:
        return self.chain.payments.rpc.is_pending(bytes.fromhex(tx_hash[2:]))

    def _finalize(self, batch_id: int, receipt: dict[str, Any] | None) -> int:
        values: dict[str, object] = {"status": "settled", "error": None}
        if receipt is not None:
            for ev in self.chain.payments.decode_logs(receipt["logs"]):
                if ev.name == "BatchSettled":
                    values["chain_batch_id"] = int(ev.args["batch_id"])
                    values["total_charge"] = str(int(ev.args["total_charge"]))
                elif ev.name == "RecordSkipped":
                    # not charged (key revoked or expired, funds short, a stage inactive): the
                    # record is not in the batch; reported, never retried blindly
                    self.store.set_task(int(ev.args["seq"]), "skipped",
                                        error=f"settlement skipped it (reason {ev.args['reason']})")
                    log.warning("record %s skipped by the contract (reason %s)", ev.args["seq"],
                                ev.args["reason"])
        self.store.set_batch(batch_id, **values)
        self.settled_batches += 1
        log.info("batch %d settled on chain (batch id %s)", batch_id, values.get("chain_batch_id"))
        if self.on_settled is not None:
            self.on_settled(batch_id)
        return 1
