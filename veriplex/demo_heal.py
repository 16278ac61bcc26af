"""The demo's second half: the network heals itself after the cheater is convicted.

After the perturbed worker's stage is slashed below the minimum stake, the coordinator evicts it
and promotes a hot-standby worker into its place, published as a new epoch (`wait_eviction` reads
both from the Scheduler contract). The demo then sends the next requests and follows them until
one is verified PASSED on the healed pipeline. `keeper_reverts` counts, on the demo's own chain,
the keeper transactions (close votes, finalize, refund, release, …) that reverted — a normal run
has none — and `summary` is the one JSON object `veriplex demo --json` ends with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

KEEPER_METHODS = {"close_votes", "finalize", "refund_client", "next_round", "expire", "release",
                  "open_task"}


@dataclass
class Healing:
    """What the demo saw of the eviction and of the requests served after it."""

    epoch_before: int = 0
    epoch_rows_before: list[tuple[str, int, int]] = field(default_factory=list)
    new_epoch: int = 0
    new_rows: list[tuple[str, int, int]] = field(default_factory=list)
    evicted: list[str] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)
    after: list[Any] = field(default_factory=list)  # demo_main.Request sent after the eviction
    slash_block: int = 0  # the block that convicted the cheater (its first StageSlashed)
    epoch_block: int = 0  # the block that published the healed epoch
    slash_to_epoch_s: float | None = None  # chain time between the two (block timestamps)
    reverted: list[dict[str, Any]] = field(default_factory=list)  # keeper txs that reverted
    reverted_other: list[dict[str, Any]] = field(default_factory=list)


def epoch_rows(chain: Any, epoch: int) -> list[tuple[str, int, int]]:
    """(operator, layer start, layer end) of a published epoch, by layers."""
    if epoch == 0:
        return []
    return sorted(((e.operator.lower(), e.layer_start, e.layer_end)
                   for e in chain.scheduler.epoch_entries(epoch)), key=lambda r: (r[1], r[2]))


def wait_eviction(chain: Any, cheaters: list[str], heal: Healing, timeout_s: float) -> bool:
    """Wait for an epoch newer than `heal.epoch_before` that leaves every cheater out; fills
    `new_epoch`, `new_rows`, `evicted` and `promoted`. False on timeout."""
    bad = {c.lower() for c in cheaters}
    before = {r[0] for r in heal.epoch_rows_before}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        epoch = chain.scheduler.epoch()
        if epoch > heal.epoch_before:
            rows = epoch_rows(chain, epoch)
            serving = {r[0] for r in rows}
            if rows and not serving & bad:
                heal.new_epoch, heal.new_rows = epoch, rows
                heal.evicted = sorted(before & bad)
                heal.promoted = sorted(serving - before)
                return True
        time.sleep(0.5)
    return False


def measure_healing(chain: Any, cheaters: list[str], heal: Healing, from_block: int) -> None:
    """Chain time from the cheater's conviction to the epoch that evicted it."""
    bad = {c.lower() for c in cheaters}
    slashed = [e for e in chain.verification.events("StageSlashed", from_block=from_block)
               if str(e.args.get("stage_operator", "")).lower() in bad]
    published = [e for e in chain.scheduler.events("EpochPublished", from_block=from_block)
                 if int(e.args.get("epoch", 0)) == heal.new_epoch]
    if not slashed or not published:
        return
    heal.slash_block, heal.epoch_block = slashed[0].block_number, published[0].block_number
    ts = [int(chain.w3.eth.get_block(n)["timestamp"]) for n in (heal.slash_block,
                                                               heal.epoch_block)]
    heal.slash_to_epoch_s = float(ts[1] - ts[0])


def keeper_reverts(chain: Any, from_block: int, heal: Healing) -> None:
    """Reverted transactions to our contracts since `from_block`, keeper calls apart."""
    ours = {chain.verification.address.lower(): chain.verification,
            chain.payments.address.lower(): chain.payments}
    for f in chain.rpc.failed_transactions(from_block, chain.block_number()):
        binding = ours.get((f["to"] or "").lower())
        method = "?"
        if binding is not None:
            try:
                method = binding.decode_call(bytes.fromhex(f["input"][2:]))[0]
            except Exception:  # noqa: BLE001 - an undecodable call is still counted
                method = "undecodable"
        row = {"tx": f["hash"], "block": f["block"], "from": f["from"], "method": method}
        (heal.reverted if method in KEEPER_METHODS else heal.reverted_other).append(row)


def summary(obs: Any, heal: Healing, missing: list[str]) -> dict[str, Any]:
    """The demo's outcome as one JSON object (the last line of `veriplex demo --json`)."""
    bad = {a.lower() for a in obs.perturbed}
    after_ids = {r.request_id for r in heal.after}
    return {
        "ok": not missing,
        "missing": missing,
        "requests": len(obs.requests),
        "passed": [r.request_id for r in obs.requests if r.status == "PASSED"],
        "fraud": [r.request_id for r in obs.requests if r.status in ("FRAUD", "REFUNDED")],
        "refunded_wei": sum(r.refunded_wei for r in obs.requests),
        "slashed": sorted({s["stage_operator"].lower() for s in obs.slashes
                           if s["stage_operator"].lower() in bad}),
        "slashed_wei": sum(s["amount"] for s in obs.slashes),
        "evicted": heal.evicted,
        "promoted": heal.promoted,
        "epoch_before": heal.epoch_before,
        "new_epoch": heal.new_epoch,
        "epoch_rows_before": [list(r) for r in heal.epoch_rows_before],
        "new_epoch_rows": [list(r) for r in heal.new_rows],
        "slash_block": heal.slash_block,
        "new_epoch_block": heal.epoch_block,
        "slash_to_new_epoch_chain_s": heal.slash_to_epoch_s,
        "served_after_eviction": sorted(after_ids),
        "passed_after_eviction": sorted(r.request_id for r in heal.after
                                        if r.status == "PASSED"),
        "reverted_keeper_tx": len(heal.reverted),
        "reverted_keeper_txs": heal.reverted,
        "reverted_other_tx": len(heal.reverted_other),
        "timings_s": {k: round(v, 1) for k, v in obs.timings.items()},
    }
