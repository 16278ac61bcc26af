"""The network as a whole: every node's reputation side by side (`/nodes`), and the network over
time (`/network`): requests and tokens served, verifications by outcome, stake and slashes, active
nodes per epoch, as server-drawn charts (`charts`) plus the numbers behind them.

Reputation of a node, from its events alone: checks of its work passed and failed (tasks on stages
it served, by their `TaskFinalized` status; a refund counts as failed), slashes (count and wei,
`NodeSlashed`), uptime (the share of epochs published since it registered in which it held layers;
jailed or evicted nodes are left out of the allocation, so they lose uptime), earnings
(`EarningsCredited` to its owner plus verifier rewards) and its votes as a verifier.

Events are read by name, their arguments with `.get`: a contract that adds fields changes
nothing here, one that drops a field shows a zero. Time is the block number, in at most `buckets`
equal ranges; aggregates are one grouped query per chart over the indexed tables (the requests
table for requests and tokens), so the page stays fast with 100,000 events.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from sqlalchemy import and_, distinct, func, or_, select
from sqlalchemy.orm import Session

from devnet.explorer import charts
from devnet.explorer.models import Block, Log, Request, Served, Task

ETH = 10**18
STAKE_EVENTS = ("NodeRegistered", "StakeAdded", "UnbondRequested", "NodeSlashed")
MAX_ROWS = 100_000


def _args(lg: Any) -> dict[str, Any]:
    return lg.args if isinstance(lg.args, dict) else {}


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def _topic(addr: str) -> str:
    return "0x" + addr.lower()[2:].rjust(64, "0")


def _rows(s: Session, *events: str, where: Any = None) -> list[Log]:
    q = select(Log).where(Log.event.in_(events)).order_by(Log.block_number, Log.log_index)
    if where is not None:
        q = q.where(where)
    return list(s.scalars(q.limit(MAX_ROWS)))


# ---------------------------------------------------------------------- reputation
def reputations(s: Session, owners: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Reputation per node owner (all registered nodes, or just `owners`)."""
    ot = None if owners is None else [_topic(o) for o in owners]
    by_owner = None if ot is None else Log.topic1.in_(ot)
    regs = _rows(s, "NodeRegistered", where=by_owner)
    nodes: dict[str, dict[str, Any]] = {}
    for lg in regs:
        a = _args(lg)
        owner = str(a.get("owner", "")).lower()
        nodes[owner] = {"owner": owner, "operators": [str(a.get("operator", "")).lower()],
                        "registry": lg.address, "registered_block": lg.block_number,
                        "stake_wei": _int(a.get("stake")), "jailed_until_block": None,
                        "unbonding_wei": 0, "slashes": 0, "slashed_wei": 0, "earnings_wei": 0,
                        "verifier_rewards_wei": 0, "checks_passed": 0, "checks_failed": 0,
                        "checks_unresolved": 0, "checks_open": 0, "votes": 0,
                        "member_slashes": 0, "requests_served": 0}
    if not nodes:
        return {}
    for lg in _rows(s, "OperatorRotated", where=by_owner):
        n = nodes.get((lg.topic1 and "0x" + lg.topic1[-40:]) or "")
        if n is not None:
            n["operators"].append(str(_args(lg).get("new_operator", "")).lower())
    for lg in _rows(s, *STAKE_EVENTS[1:], "NodeJailed", "NodeUnjailed", where=by_owner):
        n = nodes.get("0x" + (lg.topic1 or "")[-40:])
        if n is None or lg.address != n["registry"]:
            continue
        a = _args(lg)
        if "stake" in a:
            n["stake_wei"] = _int(a["stake"])
        if "unbonding" in a:
            n["unbonding_wei"] = _int(a["unbonding"])
        if lg.event == "NodeSlashed":
            n["slashes"] += 1
            n["slashed_wei"] += _int(a.get("amount"))
        elif lg.event == "NodeJailed":
            n["jailed_until_block"] = _int(a.get("until_block"))
        elif lg.event == "NodeUnjailed":
            n["jailed_until_block"] = None
    by_op = {op: n for n in nodes.values() for op in n["operators"]}
    q = select(Task.stage_operator, Task.status, func.count()).group_by(Task.stage_operator,
                                                                        Task.status)
    if owners is not None:
        q = q.where(Task.stage_operator.in_(list(by_op)))
    for op, st, count in s.execute(q):
        n = by_op.get(op)
        if n is not None:
            key = {"passed": "checks_passed", "fraud": "checks_failed",
                   "refunded": "checks_failed", "suspected": "checks_failed",
                   "pending": "checks_open"}.get(st, "checks_unresolved")
            n[key] += int(count)
    mine = None if ot is None else or_(  # each event names the node where it is indexed
        and_(Log.event == "EarningsCredited", Log.topic1.in_(ot)),
        and_(Log.event.in_(("VerifierRewarded", "MemberSlashed")), Log.topic3.in_(ot)),
        and_(Log.event == "VerdictRevealed", Log.topic2.in_([_topic(o) for o in by_op])))
    for lg in _rows(s, "EarningsCredited", "VerifierRewarded", "VerdictRevealed",
                    "MemberSlashed", where=mine):
        a = _args(lg)
        if lg.event == "EarningsCredited":
            n = nodes.get(str(a.get("account", "")).lower())
            if n is not None:
                n["earnings_wei"] += _int(a.get("amount"))
        elif lg.event == "VerifierRewarded":
            n = nodes.get(str(a.get("owner", "")).lower())
            if n is not None:
                n["verifier_rewards_wei"] += _int(a.get("amount"))
        else:
            n = by_op.get(str(a.get("member", "")).lower())
            if n is not None:
                n["votes" if lg.event == "VerdictRevealed" else "member_slashes"] += 1
    served = s.execute(select(Served.operator, func.count()).where(
        Served.operator.in_(list(by_op))).group_by(Served.operator))
    for op, count in served:
        by_op[op]["requests_served"] += int(count)
    _uptime(s, nodes, by_op, owners is not None)
    head = s.scalar(select(func.max(Block.number))) or 0
    for n in nodes.values():
        jailed = n["jailed_until_block"] is not None and n["jailed_until_block"] > head
        n["state"] = ("jailed" if jailed else "no stake" if n["stake_wei"] == 0
                      else "unbonding" if n["unbonding_wei"] else "staked")
        for k in ("stake_wei", "unbonding_wei", "slashed_wei", "earnings_wei",
                  "verifier_rewards_wei"):
            n[k] = str(n[k])
    return nodes


def _uptime(s: Session, nodes: dict[str, dict[str, Any]], by_op: dict[str, Any],
            only_these: bool) -> None:
    """Epochs allocated / epochs published since registration, per node."""
    epochs = sorted(s.scalars(select(Log.block_number).where(Log.event == "EpochPublished")
                              .limit(MAX_ROWS)))
    held: dict[str, set[tuple[str, str]]] = defaultdict(set)
    q = select(Log.address, Log.topic1, Log.topic2).where(Log.event == "AllocationAssigned")
    if only_these:
        q = q.where(Log.topic2.in_([_topic(o) for o in by_op]))
    for addr, epoch, op_topic in s.execute(q.limit(MAX_ROWS)):
        n = by_op.get("0x" + (op_topic or "")[-40:])
        if n is not None:
            held[n["owner"]].add((addr, epoch or ""))
    for owner, n in nodes.items():
        since = sum(1 for b in epochs if b >= n["registered_block"])
        n["epochs_allocated"] = len(held[owner])
        n["epochs_since_registered"] = since
        n["uptime"] = round(min(1.0, len(held[owner]) / since), 4) if since else None


# ---------------------------------------------------------------------- over time
def _buckets(tip: int, buckets: int) -> tuple[int, list[str]]:
    size = max(1, math.ceil((tip + 1) / buckets))
    n = tip // size + 1
    return size, [f"{i * size}" if size == 1 else f"{i * size}–{min(tip, (i + 1) * size - 1)}"
                  for i in range(n)]


def network(s: Session, buckets: int = 30) -> dict[str, Any]:
    """The network over time, bucketed by block ranges (see the module docstring)."""
    tip = int(s.scalar(select(func.max(Block.number))) or 0)
    size, labels = _buckets(tip, buckets)
    nb = len(labels)
    reqs, tokens_in, tokens_out = [0] * nb, [0] * nb, [0] * nb
    b = (Request.block_number // size).label("b")
    for k, count, t_in, t_out in s.execute(
            select(b, func.count(), func.sum(Request.tokens_in), func.sum(Request.tokens_out))
            .group_by(b)):
        k = min(int(k), nb - 1)
        reqs[k], tokens_in[k], tokens_out[k] = int(count), int(t_in or 0), int(t_out or 0)
    outcomes = {name: [0] * nb for name in ("passed", "fraud", "refunded", "suspected", "void",
                                            "unresolved", "pending")}
    at = (func.coalesce(Task.final_block, Task.block_number) // size).label("at")
    for k, st, count in s.execute(select(at, Task.status, func.count()).group_by(at, Task.status)):
        name = st if st in outcomes else "unresolved"
        outcomes[name][min(int(k), nb - 1)] += int(count)
    staked, slashed = _stake_over_time(s, size, nb)
    epochs = _active_per_epoch(s)
    totals = {"requests": sum(reqs), "tokens_in": sum(tokens_in), "tokens_out": sum(tokens_out),
              "verifications": {k: sum(v) for k, v in outcomes.items()},
              "staked_wei": str(staked[-1] if staked else 0),
              "slashed_wei": str(slashed[-1] if slashed else 0),
              "slashes": _count(s, "NodeSlashed"),
              "active_nodes": epochs[-1]["active_nodes"] if epochs else 0,
              "epochs": len(epochs)}
    eth = [x / ETH for x in staked], [x / ETH for x in slashed]
    return {
        "head": tip, "bucket_blocks": size, "labels": labels, "totals": totals,
        "series": {"requests": reqs, "tokens_in": tokens_in, "tokens_out": tokens_out,
                   "verifications": outcomes, "staked_wei": [str(x) for x in staked],
                   "slashed_wei": [str(x) for x in slashed]},
        "epochs": epochs,
        "charts": {
            "requests": charts.bars("chart-requests", "Requests settled per block range", labels,
                                    {"requests": reqs}, "requests"),
            "tokens": charts.bars("chart-tokens", "Tokens served per block range", labels,
                                  {"tokens in": tokens_in, "tokens out": tokens_out}, "tokens"),
            "verifications": charts.bars("chart-verifications",
                                         "Verifications by outcome per block range", labels,
                                         outcomes, "tasks"),
            "stake": charts.lines("chart-stake", "Total stake and cumulative slashes (ETH)",
                                  labels, {"staked": eth[0], "slashed": eth[1]}, "ETH"),
            "active": charts.bars("chart-active", "Active nodes per epoch",
                                  [f"e{e['epoch']}" for e in epochs],
                                  {"active nodes": [e["active_nodes"] for e in epochs]}, "nodes"),
        },
    }


def _count(s: Session, event: str) -> int:
    return int(s.scalar(select(func.count()).select_from(Log).where(Log.event == event)) or 0)


def _stake_over_time(s: Session, size: int, nb: int) -> tuple[list[int], list[int]]:
    """Total active stake at the end of each bucket, and cumulative slashed wei."""
    stake: dict[tuple[str, str], int] = {}
    staked, slashed = [0] * nb, [0] * nb
    total = cut = 0
    k = 0
    for lg in _rows(s, *STAKE_EVENTS):
        while k < nb and lg.block_number >= (k + 1) * size:
            staked[k], slashed[k] = total, cut
            k += 1
        a = _args(lg)
        key = (lg.address, lg.topic1 or "")
        if "stake" in a:
            total += _int(a["stake"]) - stake.get(key, 0)
            stake[key] = _int(a["stake"])
        if lg.event == "NodeSlashed":
            cut += _int(a.get("amount"))
    for j in range(k, nb):
        staked[j], slashed[j] = total, cut
    return staked, slashed


def _active_per_epoch(s: Session, last: int = 40) -> list[dict[str, Any]]:
    """Distinct operators allocated per published epoch (the newest `last`, oldest first)."""
    q = (select(Log.address, Log.topic1, func.count(distinct(Log.topic2)),
                func.min(Log.block_number))
         .where(Log.event == "AllocationAssigned").group_by(Log.address, Log.topic1)
         .order_by(func.min(Log.block_number).desc()).limit(last))
    rows = [{"scheduler": addr, "epoch": int(t or "0x0", 16), "active_nodes": int(n),
             "block_number": int(blk)} for addr, t, n, blk in s.execute(q)]
    return list(reversed(rows))
