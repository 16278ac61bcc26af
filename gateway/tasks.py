"""Receipt proofs and the gateway's verification-task opener.

`batch_proof` rebuilds, from the store alone, what a settled record needs on chain: its leaf, its
Merkle proof and index in the batch, and the batch's pipeline table (the same `batch_call` tables
the settlement transaction carried, so the root equals the chain's).

`TaskOpener.run_once` (called by the settler thread after each settlement pass) walks settled
batches whose records are not all decided. For each, once the batch's sampling randomness exists
(`Verification.is_sampled` stops reverting: on a blockhash source that is `randomness_delay` blocks
after the settle block — the gateway never mines blocks itself; a batch whose anchor block the head
has not passed is skipped without a chain call, so a pass costs a few reads however many batches
wait; the records are then decided from the batch's seed by the contract's own rule —
`sample_draw` — in a few reads per batch, cross-checked against `is_sampled` on one record), every
record is decided exactly
once and the decision persisted: `opened` (it called `open_task`; a "task already open" revert
counts as opened), `not_sampled`, `no_commitments` (settled with a zero root: nothing to check),
`randomness_expired` (the source no longer serves the anchor block), `released` (the batch left
escrow first) or `failed` (any other revert, kept with its reason). RPC failures leave the record
undecided for the next tick. Once a batch's records are all decided, the same pass releases its
escrow when the verification window has passed and no task of it is open (`_release`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eth_utils import to_checksum_address

from contracts.batch import Leaf, Pipeline, merkle_proof, verify_proof
from contracts.batch import request_id as chain_request_id
from contracts.client import Chain
from contracts.errors import ChainError, ContractsError, Reason, Revert
from contracts.verification import VerificationParams, anchor_block, sample_draw
from protocol.messages import StageCommit

from .settlement import batch_call
from .store import BatchRow, RequestRow, Store

log = logging.getLogger(__name__)
ZERO_ROOT = bytes(32)


@dataclass(frozen=True)
class BatchProof:
    leaf: Leaf
    leaf_index: int
    proof: list[bytes]
    pipelines: list[Pipeline]


def batch_proof(chain_id: int, payments: str, gateway: str, rows: list[RequestRow],
                request_id: str) -> BatchProof:
    """The record `request_id` of a batch whose records are `rows` (in seq order). The key and
    pipeline tables are the ones sent; records the contract skipped (`task_state` "skipped")
    are not leaves of the batch."""
    keys, pipes, records = batch_call(rows)
    kept = [(row, r) for row, r in zip(rows, records, strict=True) if row.task_state != "skipped"]
    leaves = [Leaf(chain_request_id(chain_id, payments, gateway, r.seq), keys[r.key_index],
                   r.pipeline_index, r.tokens_in, r.tokens_out, r.charge, r.commitment_root)
              for _, r in kept]
    idx = next(i for i, (row, _) in enumerate(kept) if row.request_id == request_id)
    return BatchProof(leaves[idx], idx, merkle_proof([x.hash() for x in leaves], idx), pipes)


def pipelines_json(pipes: list[Pipeline]) -> list[dict[str, Any]]:
    return [{"model_id": p.model_id,
             "stages": [{"operator": s.operator, "layer_start": s.layer_start,
                         "layer_end": s.layer_end} for s in p.stages]} for p in pipes]


def stage_signature(row: RequestRow, stage: int) -> bytes:
    """The operator's attestation of stage `stage`'s commitment (what open_task checks)."""
    c = json.loads(row.commitments or "[]")[stage]
    return bytes.fromhex(str(c.get("signature", "0x")).removeprefix("0x"))


def stage_commits(row: RequestRow) -> list[StageCommit] | None:
    if not row.commitments or row.commitment_root == ZERO_ROOT:
        return None
    return [StageCommit(bytes.fromhex(c["root"][2:]), int(c["positions"]), int(c["hidden_size"]),
                        int(c["n_tokens"])) for c in json.loads(row.commitments)]


class TaskOpener:
    """Opens verification tasks for the sampled records of settled batches, once each."""

    def __init__(self, chain: Chain, store: Store) -> None:
        assert chain.signer is not None
        self.chain, self.store = chain, store
        self.opened = 0
        self.released = 0
        self.last_error: str | None = None
        self._release_blocks: dict[int, int] = {}  # chain batch id -> its (immutable) release block
        self._settle_blocks: dict[int, int] = {}  # chain batch id -> its settle block
        self._params: tuple[float, int, VerificationParams] | None = None  # (read at, window, p)

    PARAMS_TTL_S = 30.0

    def run_once(self) -> int:
        """One pass over batches awaiting decisions, then over batches awaiting their escrow's
        release; returns tasks opened."""
        opened = 0
        awaiting = self.store.batches_awaiting_tasks()
        waiting = self.store.batches_awaiting_release()
        head = self.chain.block_number() if awaiting or waiting else 0
        for b in awaiting:
            opened += self._batch(b, head)
        for b in waiting:
            self._release(b, head)
        return opened

    def _read_params(self, fresh: bool = False) -> tuple[int, VerificationParams]:
        """(Payments verification window, Verification parameters), re-read when `fresh` or older
        than `PARAMS_TTL_S`."""
        now = time.monotonic()
        if fresh or self._params is None or now - self._params[0] > self.PARAMS_TTL_S:
            self._params = (now, int(self.chain.payments.params()["verification_window"]),
                            self.chain.verification.params())
        return self._params[1], self._params[2]

    def _anchor_passed(self, batch_id: int, head: int) -> bool:
        """Whether the head is past the block whose randomness samples the batch (`anchor_block`,
        as the contract computes it). Parameters may be up to `PARAMS_TTL_S` old here: a wrong
        guess only delays to `is_sampled`'s own check."""
        sb = self._settle_block(batch_id)
        if sb is None:
            return True  # let the contract say what is wrong
        _, p = self._read_params()
        return head > anchor_block(sb, p.randomness_delay)

    def _settle_block(self, batch_id: int) -> int | None:
        """The batch's settle block (its terms on chain, immutable once settled)."""
        sb = self._settle_blocks.get(batch_id)
        if sb is None:
            if self.chain.payments.batch(batch_id) is None:
                return None
            sb = self._settle_blocks[batch_id] = self.chain.payments.batch_terms(batch_id)[1]
        return sb

    def _release(self, b: BatchRow, head: int) -> None:
        """Release a batch's escrow (split among its operators, the verifier pool and the fee) once
        its verification window passed and none of its tasks is still open. Anyone may; the gateway
        does it for its own batches so operators are paid without watching the chain themselves."""
        if b.chain_batch_id is None:
            self.store.set_batch(b.id, released=0)  # never identified on chain: nothing to release
            return
        if head < self._release_blocks.get(b.chain_batch_id, 0):
            return  # its window is still open: no chain read needed
        info = self.chain.payments.batch(b.chain_batch_id)
        if info is not None:
            self._release_blocks[b.chain_batch_id] = info.release_block
        if info is None or info.released:
            self.store.set_batch(b.id, released=1)
            return
        if head < info.release_block or self.chain.verification.open_tasks(b.chain_batch_id) > 0:
            return
        _, pipes, _ = batch_call(self.store.batch_records(b.id))
        try:
            self.chain.payments.release(b.chain_batch_id, pipes)
        except Revert as exc:
            if not exc.says(Reason.BATCH_ALREADY_RELEASED):
                log.warning("batch %s: release refused, retrying: %s", b.chain_batch_id, exc)
                return
        self.store.set_batch(b.id, released=1)
        self.released += 1
        log.info("batch %s released: escrow paid out to its operators", b.chain_batch_id)

    def _batch(self, b: BatchRow, head: int) -> int:
        rows = self.store.batch_records(b.id)
        todo = [r for r in rows if r.task_state is None]  # ("skipped": never on chain)
        for r in [r for r in todo if stage_commits(r) is None]:
            self.store.set_task(r.seq, "no_commitments")
        todo = [r for r in todo if stage_commits(r) is not None]
        if not todo:
            self.store.set_batch(b.id, tasks_done=1)
            return 0
        if b.chain_batch_id is None:
            bid = self._find_chain_batch(b, rows)
            if bid is None:
                return 0
            self.store.set_batch(b.id, chain_batch_id=bid)
            b.chain_batch_id = bid
        if not self._anchor_passed(b.chain_batch_id, head):
            return 0  # its sampling randomness does not exist yet
        ver = self.chain.verification
        info = self.chain.payments.batch(b.chain_batch_id)
        if info is not None and info.released:
            for r in todo:
                self.store.set_task(r.seq, "released")
            self.store.set_batch(b.id, tasks_done=1)
            return 0
        try:
            first = ver.is_sampled(b.chain_batch_id, bytes.fromhex(todo[0].request_id[2:]))
        except Revert as exc:
            if exc.says(Reason.BLOCK_TOO_OLD):
                for r in todo:
                    self.store.set_task(r.seq, "randomness_expired", error=str(exc))
                self.store.set_batch(b.id, tasks_done=1)
                log.warning("batch %s: sampling randomness expired before tasks were opened: %s",
                            b.chain_batch_id, exc)
            return 0  # not available yet: next tick
        sampled = self._sampler(b.chain_batch_id, todo[0], first)
        opened = 0
        signer = self.chain.signer
        assert signer is not None
        for r in todo:
            rid = bytes.fromhex(r.request_id[2:])
            if not sampled(rid):
                self.store.set_task(r.seq, "not_sampled")
                continue
            bp = batch_proof(self.chain.chain_id, self.chain.payments.address, signer.address,
                             rows, r.request_id)
            try:
                # the chosen stage's signature is checked on chain when the task opens
                scs = stage_commits(r) or []
                stage = ver.stage_of(b.chain_batch_id, rid, len(scs))
                task_id, _ = ver.open_task(b.chain_batch_id, bp.leaf, bp.proof, bp.pipelines,
                                           scs, stage_signature(r, stage))
            except Revert as exc:
                if exc.says(Reason.TASK_ALREADY_OPEN):
                    self.store.set_task(r.seq, "opened", task_id=ver.task_of(rid))
                    continue
                self.store.set_task(r.seq, "failed", error=str(exc))
                log.warning("request %s: open_task refused: %s", r.request_id, exc)
                continue
            self.store.set_task(r.seq, "opened", task_id=task_id)
            log.info("request %s sampled: verification task %d opened", r.request_id, task_id)
            opened += 1
        self.opened += opened
        if all(x.task_state is not None for x in self.store.batch_records(b.id)):
            self.store.set_batch(b.id, tasks_done=1)
        return opened

    def _sampler(self, batch_id: int, probe: RequestRow, probe_sampled: bool
                 ) -> Callable[[bytes], bool]:
        """Whether a record of the batch is sampled: decided here by the contract's rule from the
        batch's seed (a few reads per batch instead of an `is_sampled` call per record), checked
        against the contract's answer for `probe`; on any doubt, the contract is asked each time."""
        ver = self.chain.verification
        try:
            window, p = self._read_params(fresh=True)  # the sampling rate must be the current one
            sb = self._settle_block(batch_id)
            if sb is None:
                raise KeyError(batch_id)
            seed = ver.batch_seed(batch_id, anchor_block(sb, p.randomness_delay))
        except (ChainError, ContractsError, KeyError) as exc:
            log.debug("batch %s: sampling asked per record: %s", batch_id, exc)
            return lambda rid: ver.is_sampled(batch_id, rid)
        bps = p.sample_bps
        if (sample_draw(seed, bytes.fromhex(probe.request_id[2:])) < bps) != probe_sampled:
            log.warning("batch %s: the local sampling rule disagrees with the contract; asking it "
                        "per record", batch_id)
            return lambda rid: ver.is_sampled(batch_id, rid)
        return lambda rid: sample_draw(seed, rid) < bps

    def _find_chain_batch(self, b: BatchRow, rows: list[RequestRow]) -> int | None:
        """The chain's id of a batch finalised without its receipt (settled by an earlier send)."""
        signer = self.chain.signer
        assert signer is not None
        bp = batch_proof(self.chain.chain_id, self.chain.payments.address, signer.address, rows,
                         rows[0].request_id)
        try:
            events = self.chain.payments.events("BatchSettled",
                                                gateway=to_checksum_address(signer.address))
        except (ChainError, ContractsError) as exc:
            self.last_error = str(exc)
            return None
        for ev in reversed(events):
            if verify_proof(bp.proof, bytes(ev.args["root"]), bp.leaf.hash()):
                return int(ev.args["batch_id"])
        log.warning("batch %d: no BatchSettled event matches its records", b.id)
        return None
