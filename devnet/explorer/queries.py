"""Page data: each function takes a session and returns the plain dict that both the HTML page and
its JSON endpoint render. Pure reads of the index (the address page's live balance is added by the
app). Input is parsed here: malformed input raises `BadQuery`, unknown things `NotFound`."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from contracts.verification import BLAME_REASON, TaskStatus, task_events
from devnet.explorer import BadQuery, NotFound, network, proof
from devnet.explorer import status as vstatus
from devnet.explorer.indexer import charged_total
from devnet.explorer.models import Block, Log, Request, Served, Tx

HASH_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")
ADDR_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
MAX_NUMBER = 2**63 - 1
SERVED_SHOWN = 50  # the node page lists its newest requests served (the count is of all)


def parse_hash(text: str, what: str = "hash") -> str:
    if not HASH_RE.match(text):
        raise BadQuery(f"{what} must be 0x followed by 64 hex digits, got {text[:80]!r}")
    return text.lower()


def parse_address(text: str) -> str:
    if not ADDR_RE.match(text):
        raise BadQuery(f"address must be 0x followed by 40 hex digits, got {text[:80]!r}")
    return text.lower()


def parse_number(text: str, what: str = "block number") -> int:
    if not text.isdigit() or int(text) > MAX_NUMBER:
        raise BadQuery(f"{what} must be a non-negative integer, got {text[:80]!r}")
    return int(text)


def topic_of(value: str | int) -> str:
    """An indexed argument as the 32-byte topic it is stored under."""
    if isinstance(value, int):
        return "0x" + value.to_bytes(32, "big").hex()
    v = value.lower()
    return "0x" + v[2:].rjust(64, "0")


def block_row(b: Block) -> dict[str, Any]:
    return {"number": b.number, "hash": b.hash, "parent_hash": b.parent_hash,
            "timestamp": b.timestamp, "miner": b.miner, "gas_used": b.gas_used,
            "gas_limit": b.gas_limit, "tx_count": b.tx_count}


def tx_row(t: Tx, full: bool = False) -> dict[str, Any]:
    row = {"hash": t.hash, "block_number": t.block_number, "from": t.sender, "to": t.to,
           "created": t.created, "value_wei": t.value_wei, "status": t.status,
           "contract": t.contract, "method": t.method}
    if full:
        row.update(tx_index=t.tx_index, nonce=t.nonce, gas_used=t.gas_used, fee_wei=t.fee_wei,
                   input=t.input, args=t.args, revert_reason=t.revert_reason)
    return row


def log_row(lg: Log) -> dict[str, Any]:
    return {"block_number": lg.block_number, "tx_hash": lg.tx_hash, "log_index": lg.log_index,
            "address": lg.address, "contract": lg.contract, "event": lg.event, "args": lg.args,
            "topics": [t for t in (lg.topic0, lg.topic1, lg.topic2, lg.topic3) if t],
            "data": lg.data}


def request_row(r: Request) -> dict[str, Any]:
    return {"request_id": r.request_id, "block_number": r.block_number, "tx_hash": r.tx_hash,
            "payments": r.payments,
            "batch_id": r.batch_id, "gateway": r.gateway, "key_hash": r.key_hash,
            "model_id": r.model_id, "tokens_in": r.tokens_in, "tokens_out": r.tokens_out,
            "charge_wei": r.charge_wei, "commitment_root": r.commitment_root,
            "pipeline": r.pipeline}


def _events(s: Session, event: str | tuple[str, ...], limit: int = 200, **topics: str) -> list[Log]:
    names = (event,) if isinstance(event, str) else event
    q = select(Log).where(Log.event.in_(names))
    for col, val in topics.items():
        if col == "address":
            # Narrowing only: wrapped so SQLite's planner keeps the (event, topic) index instead
            # of scanning every log of a busy contract through the address index.
            q = q.where(func.lower(Log.address) == val)
        else:
            q = q.where(getattr(Log, col) == val)
    return list(s.scalars(q.order_by(Log.block_number.desc(), Log.log_index.desc()).limit(limit)))


def _count(s: Session, model: Any) -> int:
    return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _count_event(s: Session, event: str) -> int:
    return int(s.scalar(select(func.count()).select_from(Log).where(Log.event == event)) or 0)


# ---------------------------------------------------------------------- pages
def home(s: Session, n: int = 15) -> dict[str, Any]:
    blocks = s.scalars(select(Block).order_by(Block.number.desc()).limit(n))
    txs = s.scalars(select(Tx).order_by(Tx.block_number.desc(), Tx.tx_index.desc()).limit(n))
    reqs = list(s.scalars(select(Request).order_by(Request.block_number.desc()).limit(n)))
    charged = charged_total(s)
    totals = {"blocks": _count(s, Block), "transactions": _count(s, Tx), "events": _count(s, Log),
              "requests": _count(s, Request),
              "charged_wei": str(int(charged)),
              "nodes": _count_event(s, "NodeRegistered"),
              "models": _count_event(s, "ModelRegistered")}
    return {"totals": totals, "blocks": [block_row(b) for b in blocks],
            "transactions": [tx_row(t) for t in txs],
            "requests": vstatus.with_status(s, reqs, request_row)}


def block(s: Session, number: int) -> dict[str, Any]:
    b = s.get(Block, number)
    if b is None:
        raise NotFound(f"block {number} is not indexed (yet)")
    txs = s.scalars(select(Tx).where(Tx.block_number == number).order_by(Tx.tx_index))
    return {"block": block_row(b), "transactions": [tx_row(t) for t in txs]}


def transaction(s: Session, tx_hash: str) -> dict[str, Any]:
    t = s.get(Tx, tx_hash)
    if t is None:
        raise NotFound(f"transaction {tx_hash} is not in the index")
    logs = s.scalars(select(Log).where(Log.tx_hash == tx_hash).order_by(Log.log_index))
    reqs = s.scalars(select(Request).where(Request.tx_hash == tx_hash))
    return {"transaction": tx_row(t, full=True), "events": [log_row(lg) for lg in logs],
            "requests": [r.request_id for r in reqs]}


def address(s: Session, addr: str, n: int = 25) -> dict[str, Any]:
    txs = list(s.scalars(select(Tx).where(or_(Tx.sender == addr, Tx.to == addr, Tx.created == addr))
                         .order_by(Tx.block_number.desc(), Tx.tx_index.desc()).limit(n)))
    topic = topic_of(addr)
    logs = list(s.scalars(select(Log).where(or_(Log.address == addr, Log.topic1 == topic,
                                                 Log.topic2 == topic, Log.topic3 == topic))
                          .order_by(Log.block_number.desc(), Log.log_index.desc()).limit(n)))
    contract = next((t.contract for t in txs if t.to == addr and t.contract), None)
    if contract is None:
        contract = next((lg.contract for lg in logs if lg.address == addr and lg.contract), None)
    node = _node_owner(s, addr)
    return {"address": addr, "contract": contract, "node_owner": node,
            "transactions": [tx_row(t) for t in txs], "events": [log_row(lg) for lg in logs]}


def _node_owner(s: Session, addr: str) -> str | None:
    """The owner of the node `addr` is the owner or (current or past) operator of, if any."""
    t = topic_of(addr)
    hit = _events(s, "NodeRegistered", 1, topic1=t) or _events(s, "NodeRegistered", 1, topic2=t) \
        or _events(s, "OperatorRotated", 1, topic3=t)
    return hit[0].args["owner"] if hit else None


def node(s: Session, addr: str) -> dict[str, Any]:
    owner = _node_owner(s, addr)
    if owner is None:
        raise NotFound(f"{addr} is neither the owner nor an operator of a registered node")
    t = topic_of(owner)
    reg = _events(s, "NodeRegistered", 1, topic1=t)[0]
    history = list(reversed(_events(s, ("NodeRegistered", "StakeAdded", "UnbondRequested",
                                        "UnbondedWithdrawn", "NodeSlashed", "NodeJailed",
                                        "NodeUnjailed", "HardwareUpdated", "EndpointUpdated",
                                        "OperatorRotated"), 500, topic1=t)))
    stake, hardware, endpoint = reg.args["stake"], reg.args["hardware"], reg.args["endpoint"]
    operators = [reg.args["operator"]]
    jailed_until = None
    for ev in history:
        a = ev.args
        if "stake" in a:
            stake = a["stake"]
        if ev.event == "HardwareUpdated":
            hardware = a["hardware"]
        if ev.event == "EndpointUpdated":
            endpoint = a["endpoint"]
        if ev.event == "OperatorRotated":
            operators.append(a["new_operator"])
        if ev.event == "NodeJailed":
            jailed_until = a["until_block"]
    op_topics = [topic_of(o) for o in operators]
    allocations = list(s.scalars(select(Log).where(Log.event == "AllocationAssigned",
                                                   Log.topic2.in_(op_topics))
                                 .order_by(Log.block_number.desc()).limit(200)))
    served = list(s.scalars(select(Served).where(Served.operator.in_(operators))
                            .order_by(Served.block_number.desc()).limit(SERVED_SHOWN)))
    served_count = int(s.scalar(select(func.count()).select_from(Served)
                                .where(Served.operator.in_(operators))) or 0)
    served_status = vstatus.statuses(s, list(s.scalars(select(Request).where(
        Request.request_id.in_([r.request_id for r in served])))))
    earnings = _events(s, "EarningsCredited", 500, topic1=t)
    slashes = _events(s, "NodeSlashed", 200, topic1=t) + \
        _events(s, ("MemberSlashed", "StageSlashed"), 200, topic3=t)
    reveals = list(s.scalars(select(Log).where(Log.event == "VerdictRevealed",
                                               Log.topic2.in_(op_topics))))
    rewards = _events(s, "VerifierRewarded", 500, topic3=t)
    member_slashes = _events(s, "MemberSlashed", 200, topic3=t)
    return {
        "owner": owner, "operators": operators, "endpoint": endpoint, "hardware": hardware,
        "stake_wei": str(stake), "jailed_until_block": jailed_until,
        "registered_block": reg.block_number,
        "allocations": [{"epoch": lg.args["epoch"], "model_id": lg.args["model_id"],
                         "operator": lg.args["operator"], "layer_start": lg.args["layer_start"],
                         "layer_end": lg.args["layer_end"], "block_number": lg.block_number}
                        for lg in allocations],
        "requests_served": served_count,
        "served": [{"request_id": r.request_id, "layer_start": r.layer_start,
                    "layer_end": r.layer_end, "block_number": r.block_number,
                    "verification": served_status.get(r.request_id)} for r in served],
        "reputation": network.reputations(s, [owner]).get(owner),
        "verifications": {"revealed": len(reveals),
                          "voted_pass": sum(1 for r in reveals if vote_passes(r.args)),
                          "voted_fail": sum(1 for r in reveals if not vote_passes(r.args)),
                          "rewarded": len(rewards), "slashed": len(member_slashes),
                          "of_its_work": _checks_of(s, operators)},
        "slashes": [log_row(lg) for lg in slashes],
        "earnings_wei": str(sum(int(e.args["amount"]) for e in earnings)),
        "earnings": [log_row(e) for e in earnings],
        "history": [log_row(e) for e in history],
    }


def vote_passes(args: dict[str, Any] | None) -> bool:
    """A revealed verdict says the stage is right: `kind` PASS (1), or the older `verdict` bool."""
    a = args or {}
    return bool(a["verdict"]) if "verdict" in a else a.get("kind") == 1


def _checks_of(s: Session, operators: list[str]) -> dict[str, Any]:
    """The verification tasks that checked a stage these operators served, and their outcomes."""
    served_ids = select(Served.request_id).where(Served.operator.in_(operators))
    opened = [lg for lg in s.scalars(select(Log).where(Log.event == "TaskOpened",
                                                       Log.topic3.in_(served_ids))
                                     .order_by(Log.block_number.desc()).limit(500))
              if lg.args and lg.args["stage_operator"] in operators]
    finals: dict[tuple[str, str], Log] = {}
    if opened:
        for lg in s.scalars(select(Log).where(Log.event == "TaskFinalized", Log.topic1.in_(
                {topic_of(int(o.args["task_id"])) for o in opened}))):
            finals[(lg.address, lg.topic1 or "")] = lg
    tasks = []
    for o in opened:
        fin = finals.get((o.address, topic_of(int(o.args["task_id"]))))
        status = _status_name((fin.args or {}).get("status")) if fin is not None else "open"
        tasks.append({"task_id": o.args["task_id"], "request_id": o.args["request_id"],
                      "stage": o.args["stage"], "status": status, "block_number": o.block_number})
    return {"checked": len(tasks), "passed": sum(t["status"] == "passed" for t in tasks),
            "failed": sum(t["status"] in ("fraud", "refunded") for t in tasks),
            "unresolved": sum(t["status"] == "unresolved" for t in tasks),
            "open": sum(t["status"] == "open" for t in tasks), "tasks": tasks}




def request(s: Session, request_id: str, rpc_url: str | None = None,
            gateway_url: str | None = None) -> dict[str, Any]:
    """The proof view; `rpc_url` and `gateway_url` complete the audit commands it shows."""
    r = s.get(Request, request_id)
    if r is None:
        raise NotFound(f"request {request_id} has not been settled on this chain (or not indexed yet)")
    batch_t = topic_of(r.batch_id)
    # Batch ids restart in every Payments deployment: scope batch events to the one that settled.
    batch = _events(s, "BatchSettled", 1, topic1=batch_t, address=r.payments)
    key = _events(s, "KeyRegistered", 1, topic1=r.key_hash, address=r.payments)
    released = _events(s, "BatchReleased", 1, topic1=batch_t, address=r.payments)
    credits = _events(s, "EarningsCredited", 500, topic2=batch_t, address=r.payments)
    refunds = _events(s, "RequestRefunded", 10, topic2=request_id, address=r.payments)
    tasks = _events(s, "TaskOpened", 100, topic3=request_id)  # request ids are unique per chain
    verification: dict[str, list[dict[str, Any]]] = {e: [] for e in task_events()}
    for task in tasks:  # task ids restart per Verification deployment: scope to the opener's
        for lg in s.scalars(select(Log).where(Log.event.in_(task_events()),
                                              Log.address == task.address,
                                              Log.topic1 == topic_of(int(task.args["task_id"])))
                            .order_by(Log.block_number, Log.log_index)):
            verification[lg.event or ""].append(log_row(lg))
    finals = verification["TaskFinalized"] + verification["TaskVoided"]
    verdict = None
    if finals:
        last = finals[-1]
        verdict = dict(last["args"] or {})
        if last["event"] == "TaskVoided":  # unverifiable or never opened: refunded, bond slashed
            verdict["status_name"] = f"void ({verdict.get('reason', 'no reason given')})"
        else:
            verdict["status_name"] = _status_name(verdict.get("status"))
        refunded = verification["ClientRefunded"]
        if refunded:
            verdict["status_name"] = "fraud (client refunded)"
        blamed = [e for e in verification["StageSlashed"]
                  if (e["args"] or {}).get("reason") == BLAME_REASON]
        if blamed:  # stage-level blame: the input stage proved to have sent other rows
            verdict["status_name"] = (f"input stage {blamed[0]['args'].get('stage_operator')} "
                                      "blamed and slashed; the checked stage not judged")
    b = batch[0].args if batch else {}
    return {
        "request": request_row(r),
        "status": vstatus.statuses(s, [r])[r.request_id],
        "client": key[0].args["client"] if key else None,
        "batch": {"batch_id": r.batch_id, "gateway": r.gateway, "root": b.get("root"),
                  "record_count": b.get("record_count"), "total_charge_wei": str(b.get("total_charge", "")),
                  "release_block": b.get("release_block"),
                  "tx_hash": batch[0].tx_hash if batch else r.tx_hash},
        "payouts": {"released": log_row(released[0]) if released else None,
                    "credits": [log_row(c) for c in credits],
                    "refunds": [log_row(x) for x in refunds]},
        "verification": verification,
        "verdict": verdict,
        "sampling": proof.sampling(s, r, verification["TaskOpened"]),
        "commitments": proof.stage_commitments(s, r, verification["TaskOpened"]),
        "audit_command": f"veriplex audit request-{request_id}.json",  # the downloaded receipt
        **proof.audit_guide(request_id, r.gateway, rpc_url, gateway_url),
    }


def _status_name(code: Any) -> str:
    try:
        return TaskStatus(int(code)).name.lower()
    except (TypeError, ValueError):
        return f"status {code}"


def epoch(s: Session, number: int) -> dict[str, Any]:
    pub = _events(s, "EpochPublished", 1, topic1=topic_of(number))
    if not pub:
        raise NotFound(f"epoch {number} has not been published")
    allocs = _events(s, "AllocationAssigned", 10_000, topic1=topic_of(number))
    return {"epoch": number, "published": log_row(pub[0]),
            "snapshot_hash": pub[0].args["snapshot_hash"],
            "allocations": [dict(lg.args, block_number=lg.block_number) for lg in reversed(allocs)]}


def model(s: Session, model_id: int) -> dict[str, Any]:
    t = topic_of(model_id)
    reg = _events(s, "ModelRegistered", 1, topic1=t)
    if not reg:
        raise NotFound(f"model {model_id} is not registered")
    changes = _events(s, ("PricesChanged", "ModelActivationChanged"), 200, topic1=t)
    reqs = list(s.scalars(select(Request).where(Request.model_id == model_id)
                          .order_by(Request.block_number.desc()).limit(25)))
    count = int(s.scalar(select(func.count()).select_from(Request)
                         .where(Request.model_id == model_id)) or 0)
    args = dict(reg[0].args)
    for ch in reversed(changes):
        args.update({k: v for k, v in ch.args.items() if k != "model_id"})
    return {"model": args, "registered_block": reg[0].block_number, "requests": count,
            "recent_requests": vstatus.with_status(s, reqs, request_row),
            "changes": [log_row(c) for c in changes]}


def nodes(s: Session) -> dict[str, Any]:
    """Every registered node with its reputation, most requests served first."""
    reps = sorted(network.reputations(s).values(),
                  key=lambda n: (-n["requests_served"], n["registered_block"]))
    return {"nodes": reps}


def network_page(s: Session) -> dict[str, Any]:
    return network.network(s)


def search(s: Session, q: str) -> str:
    """The URL path a search for `q` leads to."""
    q = q.strip()
    if not q:
        raise BadQuery("type a transaction hash, an address, a request id or a block number")
    if q.isdigit():
        return f"/block/{parse_number(q)}"
    if ADDR_RE.match(q):
        a = q.lower()
        return f"/node/{a}" if _node_owner(s, a) else f"/address/{a}"
    if HASH_RE.match(q):
        h = q.lower()
        if s.get(Tx, h) is not None:
            return f"/tx/{h}"
        if s.get(Request, h) is not None:
            return f"/request/{h}"
        b = s.scalars(select(Block).where(Block.hash == h)).first()
        if b is not None:
            return f"/block/{b.number}"
        raise NotFound(f"no transaction, request or block has hash {h}")
    raise BadQuery(f"{q[:80]!r} is not a transaction hash, address, request id or block number")
