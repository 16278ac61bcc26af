"""A settled request's verification status in one word, for every list of requests.

The statuses, as a person scanning a list needs them:

- ``passed``: a verification task checked one of its stages and the committee found it right;
- ``fraud``: a task convicted the stage it checked (``refunded`` once the client got its charge back);
- ``unresolved``: a task ended without a verdict either way (a split committee past its last round);
- ``void``: the record could not be verified (no valid commitments, or nobody opened its task in
  time): the client was refunded and the gateway's bond slashed;
- ``suspected``: statistical evidence against the stage (counted toward jailing, no slash);
- ``pending``: a task is open, or the request was drawn for verification and no task has been
  opened yet, or the batch's randomness is not drawn yet;
- ``not sampled``: the batch's sampling draw (recomputed from the index by the contract's rule,
  `proof.sampling`) did not select it.

Tasks come from the indexer's `tasks` table (`tasks.py`, kept from the Verification events read
by name): one query for the whole list, and one sampling draw per batch for the requests no task
has checked.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from contracts.verification import anchor_block
from devnet.explorer import proof
from devnet.explorer.models import Block, Request, Task
from devnet.explorer.tasks import status_name

__all__ = ["STATUSES", "status_name", "statuses", "with_status"]
STATUSES = ("passed", "fraud", "refunded", "unresolved", "void", "suspected", "pending",
            "not sampled")


def _draws(s: Session, rows: list[Request]) -> dict[tuple[str, int], dict[str, Any]]:
    """The sampling draw of each batch the rows belong to: one context per Payments and one
    query for the batches' anchor blocks (settle block + randomness delay)."""
    batches = {(r.payments, int(r.batch_id)): r for r in rows}
    if not batches:
        return {}
    contexts = {pay: proof.draw_context(s, pay) for pay in {p for p, _ in batches}}
    anchors = {key: anchor_block(int(r.block_number), c["delay"])
               for key, r in batches.items() if "delay" in (c := contexts[key[0]])}
    hashes = {n: h for n, h in s.execute(select(Block.number, Block.hash)
                                         .where(Block.number.in_(set(anchors.values()))))}
    return {key: proof.batch_draw(s, r, contexts[key[0]], hashes.get(anchors.get(key, -1)))
            for key, r in batches.items()}


def statuses(s: Session, rows: list[Request]) -> dict[str, dict[str, Any]]:
    """`{request id: {"status", "detail"}}` for the given requests (see the module docstring)."""
    by_request: dict[str, list[Task]] = {}
    if rows:
        q = (select(Task).where(Task.request_id.in_([r.request_id for r in rows]))
             .order_by(Task.block_number, Task.id))
        for task in s.scalars(q):
            by_request.setdefault(task.request_id, []).append(task)
    unchecked = [r for r in rows if r.request_id not in by_request]
    draws = _draws(s, unchecked)
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        rid = r.request_id
        tasks = by_request.get(rid, [])
        refunded = [t for t in tasks if t.status == "refunded"]
        open_ = [t for t in tasks if t.final_block is None]
        if refunded:
            out[rid] = {"status": "refunded",
                        "detail": f"task {refunded[-1].task_id} convicted its stage; the client "
                                  "was refunded"}
        elif open_:
            out[rid] = {"status": "pending", "detail": f"task {open_[-1].task_id} is open"}
        elif tasks:
            out[rid] = {"status": tasks[-1].status,
                        "detail": f"task {tasks[-1].task_id} checked stage {tasks[-1].stage}"}
        else:
            draw = draws[(r.payments, int(r.batch_id))]
            sampled = proof.sampled_from(draw, rid)
            if sampled is False:
                out[rid] = {"status": "not sampled",
                            "detail": "the batch's draw did not select it"}
            elif sampled is True:
                out[rid] = {"status": "pending", "detail": "sampled; no task opened yet"}
            else:
                out[rid] = {"status": "pending", "detail": draw.get("note", "not drawn yet")}
    return out


def with_status(s: Session, rows: list[Request], row_fn: Any) -> list[dict[str, Any]]:
    """Each request as `row_fn(r)` plus its `verification` status."""
    st = statuses(s, rows)
    return [dict(row_fn(r), verification=st[r.request_id]) for r in rows]
