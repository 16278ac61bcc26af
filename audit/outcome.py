"""The on-chain verification outcome of an audited request: sampling, the task, payouts.

Reads the Verification contract's views (`is_sampled`, `task_of`, `tasks`, `member`, `params`) and
its events for the request's task (committee per round, verdicts committed and revealed, votes
closed, chunks opened, slashes, escalations, the final status, rewards, the client refund), and
Payments' `BatchReleased` / `EarningsCredited` / `RequestRefunded` events. Adds three checks to the
report — `sampling`, `verification`, `payout` — and the facts under `verification` and `payouts`.

Outcome rules: a request not sampled is `skip` (nothing to verify); sampled with a task that
`PASSED` is `pass`; `FRAUD`, `REFUNDED` (proven fraud) and `UNRESOLVED` are `fail`; a task still
voting or opening, or randomness not final yet, is `pending`; sampled but never checked although
the batch was released is `fail` (the request escaped its check).
"""

from __future__ import annotations

from typing import Any

from audit.report import AuditReport, SettledRecord, Status, hx
from contracts import verification as verification_contract
from contracts.batch import Pipeline
from contracts.errors import Revert
from contracts.verification import BLAME_REASON, TaskStatus, VerdictKind, Verification
from verifier.receipt import Receipt


def chunk_values(hi: bytes, lo: bytes) -> list[int]:
    """The 32 bf16 bit patterns of an opened chunk (two words, big-endian, as `Opening`)."""
    raw = bytes(hi) + bytes(lo)
    return [int.from_bytes(raw[i:i + 2], "big") for i in range(0, 64, 2)]


def task_events(ver: Verification, task_id: int) -> dict[str, list[Any]]:
    """Every event of task `task_id`, by name, oldest first."""
    return {name: ver.events(name, task_id=task_id) for name in verification_contract.task_events()}


def check_outcome(chain: Any, receipt: Receipt, rec: SettledRecord, pipe: Pipeline | None,
                  report: AuditReport) -> None:
    batch = report.facts.get("batch", {})
    if "Verification" not in chain.manifest.contracts:
        report.add("verification", Status.SKIP, "this deployment has no Verification contract")
        _check_payout(chain, receipt, rec, None, report)
        return
    ver: Verification = chain.verification
    params = ver.params()
    p_pct = params.sample_bps / 100
    task_id = ver.task_of(receipt.request_id)
    sampled: bool | None
    try:
        sampled = ver.is_sampled(rec.batch_id, receipt.request_id)
        why = ""
    except Revert as e:
        sampled, why = None, str(e)
    if task_id:
        sampled = True
    report.facts["verification"] = {"sample_bps": params.sample_bps, "sampled": sampled,
                                    "task_id": task_id or None}
    if sampled is None:
        if "too old" in why:
            report.add("sampling", Status.SKIP, "the batch's sampling randomness has expired "
                       "(blockhash older than 256 blocks) and no task stored it")
        else:
            report.add("sampling", Status.PENDING, f"the batch's sampling randomness is not final "
                       f"yet ({why})")
    elif sampled:
        report.add("sampling", Status.PASS, f"sampled for verification (p = {p_pct:g}%)")
    else:
        report.add("sampling", Status.SKIP, f"not sampled for verification (p = {p_pct:g}%): "
                   "the record stands as settled")
    task = ver.task(task_id) if task_id else None
    if task is None:
        if sampled and batch.get("released"):
            report.add("verification", Status.FAIL, "sampled, but no verification task was opened "
                       "before the batch was released: the request escaped its check")
        elif sampled:
            report.add("verification", Status.PENDING, "sampled; no verification task opened yet")
        elif sampled is False:
            report.add("verification", Status.SKIP, "no verification task (not sampled)")
        else:
            report.add("verification", Status.PENDING, "no verification task (sampling pending)")
        _check_payout(chain, receipt, rec, None, report)
        return
    evs = task_events(ver, task_id)
    facts = _task_facts(ver, task, evs)
    report.facts["verification"].update(facts)
    stage = task.stage
    layers = facts["layers"]
    who = f"task {task_id} on stage {stage} (layers [{layers[0]}, {layers[1]}), operator " \
          f"{task.stage_operator})"
    reveals = facts["verdicts"]
    kinds = [v["kind"] for v in reveals]
    tally = " / ".join(f"{kinds.count(k.name)} {k.name}" for k in VerdictKind
                       if kinds.count(k.name)) or "no verdicts"
    tally += f" revealed by {len(facts['members'])} committee member(s)"
    problems = []
    if task.request_id != receipt.request_id or task.batch_id != rec.batch_id:
        problems.append("the task is for another record")
    claims = {c.stage: c for c in receipt.commitments}
    if stage in claims and claims[stage].commit != task.stage_commit:
        problems.append(f"the task checks a stage-{stage} commitment other than the receipt's")
    if pipe is not None and stage < len(pipe.stages) and \
            pipe.stages[stage].operator.lower() != task.stage_operator.lower():
        problems.append("the task's stage operator is not the batch's")
    status = task.status
    if problems:
        report.add("verification", Status.FAIL, f"{who}: " + "; ".join(problems))
    elif status is TaskStatus.PASSED:
        report.add("verification", Status.PASS, f"{who}: PASSED in round {task.round} — {tally}")
    elif status in (TaskStatus.FRAUD, TaskStatus.REFUNDED):
        slashed = sum(int(e["amount"]) for e in facts["stage_slashes"])
        refund = " and the client refunded" if facts["client_refunds"] else ""
        report.add("verification", Status.FAIL, f"{who}: FRAUD proven — {tally}; stage operator "
                   f"slashed {slashed} wei{refund}")
    elif status is TaskStatus.VOID:
        report.add("verification", Status.FAIL, f"{who}: VOID — the record could not be checked "
                   "(never opened, or an unverifiable commitment): the client was refunded and "
                   "the gateway's bond slashed")
    elif status is TaskStatus.SUSPECTED:
        report.add("verification", Status.PASS, f"{who}: SUSPECTED (statistical evidence, counted "
                   f"against the operator, no slash) — {tally}")
    elif status is TaskStatus.UNRESOLVED and any(
            e["reason"] == BLAME_REASON for e in facts["stage_slashes"]):
        blamed = next(e for e in facts["stage_slashes"] if e["reason"] == BLAME_REASON)
        report.add("verification", Status.FAIL, f"{who}: the input stage {blamed['operator']} was "
                   f"proven to have sent this stage other rows than it settled (stage-level blame): "
                   f"slashed {blamed['amount']} wei, the prover's share to {blamed['prover']} (the "
                   "client); the stage was not judged and the record is paid as settled")
    elif status is TaskStatus.UNRESOLVED:
        report.add("verification", Status.FAIL, f"{who}: UNRESOLVED after round {task.round} — "
                   f"{tally}")
    else:
        deadline = task.open_deadline if status is TaskStatus.OPENING else task.reveal_deadline
        report.add("verification", Status.PENDING, f"{who}: {status.name} in round {task.round} "
                   f"(deadline block {deadline}) — {tally}")
    _check_payout(chain, receipt, rec, task, report)


def _task_facts(ver: Verification, task: Any, evs: dict[str, list[Any]]) -> dict[str, Any]:
    opened = evs["TaskOpened"][0].args if evs["TaskOpened"] else {}
    committee = [{"round": int(e.args["round"]), "members": list(e.args["members"]),
                  "stakes": [str(s) for s in e.args["stakes"]],
                  "commit_deadline": int(e.args["commit_deadline"]),
                  "reveal_deadline": int(e.args["reveal_deadline"])}
                 for e in evs["CommitteeSelected"]]
    members = [m for c in committee for m in c["members"]]
    member_state = {}
    for m in members:
        info = ver.member(task.task_id, m)
        member_state[m] = {"owner": info.owner, "round": info.round,
                           "committed": info.commitment != b"\x00" * 32,
                           "revealed": info.revealed, "verdict": info.verdict if info.revealed
                           else None, "kind": info.kind, "named_leaf": [info.leaf >> 16,
                           info.leaf & 0xFFFF] if info.kind == 2 else None,
                           "opened": info.opened, "slashed": info.slashed}
    openings = []
    for e in evs["ChunksOpened"]:
        a = e.args
        openings.append({"party": a["party"], "round": int(a["round"]), "block_number": e.block_number,
                         "chunks": [{"position": int(p), "chunk": int(c),
                                     "values": chunk_values(h, lo)}
                                    for p, c, h, lo in zip(a["positions"], a["chunks"], a["his"],
                                                           a["los"], strict=True)]})
    finals = evs["TaskFinalized"]
    return {
        "status": task.status.name,
        "round": task.round,
        "stage": task.stage,
        "stage_operator": task.stage_operator,
        "stage_owner": task.stage_owner,
        "layers": [int(opened.get("layer_start", 0)), int(opened.get("layer_end", 0))],
        "stage_commit": {"root": hx(task.stage_commit.root),
                         "positions": task.stage_commit.positions,
                         "hidden_size": task.stage_commit.hidden_size,
                         "n_tokens": task.stage_commit.n_tokens},
        "opened_block": evs["TaskOpened"][0].block_number if evs["TaskOpened"] else None,
        "committee": committee,
        "members": member_state,
        "verdicts": [{"member": e.args["member"], "kind": VerdictKind(int(e.args["kind"])).name,
                      "verdict": int(e.args["kind"]) == VerdictKind.PASS,
                      "named_leaf": [int(e.args["position"]), int(e.args["chunk"])]
                      if int(e.args["kind"]) == VerdictKind.FAIL else None,
                      "output_root": hx(e.args["output_root"]), "block_number": e.block_number}
                     for e in evs["VerdictRevealed"]],
        "commits": [e.args["member"] for e in evs["VerdictCommitted"]],
        "openings": openings,
        "escalations": [{"round": int(e.args["round"]), "passes": int(e.args["passes"]),
                         "fails": int(e.args["fails"])} for e in evs["TaskEscalated"]],
        "member_slashes": [{"member": e.args["member"], "owner": e.args["owner"],
                            "amount": str(e.args["amount"]), "reason": e.args["reason"]}
                           for e in evs["MemberSlashed"]],
        "stage_slashes": [{"operator": e.args["stage_operator"], "owner": e.args["owner"],
                           "amount": str(e.args["amount"]), "reason": e.args["reason"],
                           "prover": e.args["prover"]} for e in evs["StageSlashed"]],
        "input_operator": task.input_operator,
        "input_commit": None if task.input_commit is None else {
            "root": hx(task.input_commit.root), "positions": task.input_commit.positions,
            "hidden_size": task.input_commit.hidden_size,
            "n_tokens": task.input_commit.n_tokens},
        "rewards": [{"member": e.args["member"], "owner": e.args["owner"],
                     "amount": str(e.args["amount"])} for e in evs["VerifierRewarded"]],
        "finalized": [{"status": TaskStatus(int(e.args["status"])).name,
                       "round": int(e.args["round"]), "passes": int(e.args["passes"]),
                       "fails": int(e.args["fails"]), "block_number": e.block_number}
                      for e in finals],
        "client_refunds": [{"charge": str(e.args["charge"]), "block_number": e.block_number}
                           for e in evs["ClientRefunded"]],
    }


def _check_payout(chain: Any, receipt: Receipt, rec: SettledRecord, task: Any,
                  report: AuditReport) -> None:
    pay = chain.payments
    refunds = pay.events("RequestRefunded", request_id=receipt.request_id)
    released = pay.events("BatchReleased", batch_id=rec.batch_id)
    credits = pay.events("EarningsCredited", batch_id=rec.batch_id)
    ops = {s["operator"].lower() for s in report.facts.get("pipeline", {}).get("stages", [])}
    facts: dict[str, Any] = {
        "released": None, "refunded": None,
        "credits": [{"account": e.args["account"], "operator": e.args["operator"],
                     "amount": str(e.args["amount"])} for e in credits
                    if str(e.args["operator"]).lower() in ops]}
    report.facts["payouts"] = facts
    if refunds:
        e = refunds[0]
        facts["refunded"] = {"client": e.args["client"], "charge": str(e.args["charge"]),
                             "block_number": e.block_number}
        report.add("payout", Status.PASS, f"the charge of {e.args['charge']} wei was refunded to "
                   f"client {e.args['client']} at block {e.block_number}")
        return
    if released:
        e = released[0]
        facts["released"] = {"block_number": e.block_number,
                             "operators_total": str(e.args["operators_total"]),
                             "verifier_pool": str(e.args["verifier_pool"]),
                             "protocol_fee": str(e.args["protocol_fee"])}
        paid = ", ".join(f"{c['operator'][:10]}… {c['amount']} wei" for c in facts["credits"])
        report.add("payout", Status.PASS, f"escrow released at block {e.block_number}"
                   + (f"; this pipeline's operators credited (whole batch): {paid}" if paid else ""))
        return
    release = report.facts.get("batch", {}).get("release_block")
    now = chain.block_number()
    open_task = task is not None and task.status in (TaskStatus.VOTING, TaskStatus.OPENING)
    if open_task:
        why = f"held in escrow until task {task.task_id} closes (release block {release})"
    elif release is not None and now >= release:
        why = f"releasable since block {release} (now {now}); nobody has called release yet"
    else:
        why = f"held in escrow until block {release} (now {now})"
    report.add("payout", Status.PENDING, f"charge {rec.leaf.charge} wei {why}")
