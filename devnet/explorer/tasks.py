"""The `tasks` table: one row per verification task, kept by the indexer from the Verification
contract's events, so that request lists, reputations and the network page read a task's request,
stage operator and outcome without decoding logs.

Events are matched by name and read with `.get`: `TaskOpened` (task id, batch, request, stage,
stage operator) inserts a row; `TaskFinalized` sets its status from the status code (a code we do
not know is kept as ``status N``); `TaskVoided` marks it ``void`` (unverifiable or never
opened: the client refunded, the gateway's bond slashed); `ClientRefunded` marks it ``refunded``. A Verification contract
that changes its events' other fields changes nothing here. `backfill` rebuilds the table from
indexed logs (an index made before this table existed); `rewind` reopens tasks whose closing
block a reorg removed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from contracts.verification import TaskStatus
from devnet.explorer.models import Log, Task

EVENTS = ("TaskOpened", "TaskFinalized", "TaskVoided", "ClientRefunded")
FINAL_NAMES = {"PASSED": "passed", "FRAUD": "fraud", "REFUNDED": "refunded",
               "UNRESOLVED": "unresolved", "VOID": "void", "SUSPECTED": "suspected"}
OPEN_NAMES = {"VOTING", "OPENING", "DRAWING"}  # still being judged


def status_name(code: Any) -> str:
    """A `TaskFinalized` status code as a word (unknown codes are named, never dropped)."""
    try:
        st = TaskStatus(int(code))
    except (TypeError, ValueError):
        return f"status {code}"
    if st.name in OPEN_NAMES:
        return "pending"
    return FINAL_NAMES.get(st.name, f"status {int(code)}")


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def record(s: Session, event: str, address: str, args: dict[str, Any], block: int) -> None:
    """Apply one decoded Verification event (by name) to the table."""
    address = address.lower()
    tid = _int(args.get("task_id"))
    if event == "TaskOpened":
        s.add(Task(block_number=block, verification=address, task_id=tid,
                   batch_id=_int(args.get("batch_id")),
                   request_id=str(args.get("request_id", "")).lower(),
                   stage=_int(args.get("stage")),
                   stage_operator=str(args.get("stage_operator", "")).lower(),
                   status="pending", final_block=None))
        return
    s.flush()  # a task opened and closed in the same batch of blocks
    name = ("refunded" if event == "ClientRefunded" else "void" if event == "TaskVoided"
            else status_name(args.get("status")))
    s.execute(update(Task).where(Task.verification == address, Task.task_id == tid)
              .values(status=name, final_block=block))


def rewind(s: Session, block: int) -> None:
    """Tasks closed above `block` are open again (their opening rows above it are deleted by the
    indexer with the other block-scoped rows)."""
    s.execute(update(Task).where(Task.final_block > block).values(status="pending",
                                                                    final_block=None))


def backfill(s: Session) -> int:
    """Rebuild the table from indexed logs when it is empty but tasks were indexed; returns the
    number of tasks recorded."""
    if s.scalar(select(func.count()).select_from(Task)):
        return 0
    q = (select(Log).where(Log.event.in_(EVENTS), Log.contract == "Verification")
         .order_by(Log.block_number, Log.log_index))
    n = 0
    s.execute(delete(Task))
    for lg in s.scalars(q):
        if isinstance(lg.args, dict):
            record(s, lg.event or "", lg.address, lg.args, lg.block_number)
            n += lg.event == "TaskOpened"
    s.commit()
    return n
