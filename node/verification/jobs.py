"""One member's job on one task: gather inputs, re-execute, fetch the claim, judge, decide.

The order is the protocol's (DESIGN §5.3–5.4): inputs first — stage j-1's rows (stage 0's tokens
when j = 0) fetched from that stage's operator and proven against its committed root — then the
re-execution through a stage server, whose COMMIT root exists before anything else happens; only
then the checked stage's claimed rows are fetched and proven against the task's root, and judged
with `verifier.tolerance` (profile by the server's dtype). The policy turns that into a verdict and
the evidence tree whose root the member commits (`policy.decide`). On the last stage the server's
rows also go through the shard's final norm + LM head, and the claimed tokens' agreement with the
greedy choice is noted (advisory: sampling parameters are not on chain, and the contract's spot
check judges rows only, so a token-only accusation would contradict the member's own evidence).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from coincurve import PrivateKey

from node.stage_query import fetch_rows
from node.verification.errors import AgentError, RerunError
from node.verification.evidence import check_against_root, forged_evidence
from node.verification.policy import Claimed, Policy, Recomputed, decide
from node.verification.rerun import Listener, RerunJob, ServerPool, fetch_all, logits_of, run_job
from node.verification.state import Vote
from node.verification.task_data import TaskData, endpoint_of
from verifier.encoding import Domain
from verifier.merkle import StageCommitment
from verifier.profiles import BF16, FP32
from verifier.tolerance import judge

log = logging.getLogger("veriplex.verifier.jobs")


@dataclass(frozen=True)
class JobContext:
    chain: Any
    chain_id: int
    key: PrivateKey
    pool: ServerPool
    listener: Listener
    timeout_s: float = 120.0


async def fetch_stage(ctx: JobContext, td: TaskData, stage: int) -> tuple[torch.Tensor, list[int], StageCommitment]:
    """Stage `stage`'s rows and tokens from its operator, proven against its committed root."""
    st = td.pipeline.stages[stage]
    sc = td.stage_commits[stage]
    host, port = await asyncio.to_thread(endpoint_of, ctx.chain, st.operator)
    rows, toks = await fetch_all(ctx.key, ctx.chain_id, host, port, td.request_id, stage,
                                 (st.layer_start, st.layer_end), sc.positions, sc.hidden_size,
                                 operator=st.operator, timeout_s=ctx.timeout_s)
    tree = await asyncio.to_thread(check_against_root, ctx.chain_id, td.request_id, stage, sc, rows, toks)
    return rows, toks, tree


async def _sequence(ctx: JobContext, td: TaskData, have: list[int]) -> list[int]:
    """The sequence's token ids for the OPEN body: `have` if long enough, else stage 0's."""
    P = td.positions
    if len(have) >= P:
        return have
    try:
        st = td.pipeline.stages[0]
        host, port = await asyncio.to_thread(endpoint_of, ctx.chain, st.operator)
        _, toks = await fetch_rows(ctx.key, ctx.chain_id, host, port, td.request_id, 0,
                                   (st.layer_start, st.layer_end), 0, 0, operator=st.operator,
                                   timeout_s=ctx.timeout_s)
        if len(toks) >= P:
            return list(toks)
    except Exception as e:  # only the OPEN body's ids are at stake: rows at j > 0 do not use them
        log.info("verifier: no token ids from stage 0 (%s); padding the OPEN's ids", e)
    return list(have) + [0] * (P - len(have))


async def prepare_vote(ctx: JobContext, td: TaskData, rnd: int, policy: Policy) -> tuple[Vote, StageCommitment]:
    """Run the job for task `td` round `rnd` under `policy`; the vote (with a fresh salt) and the
    evidence tree its output root commits to."""
    j, P, cid, rid = td.stage, td.positions, ctx.chain_id, td.request_id
    sc = td.stage_commits[j]
    claimed: Claimed | None = None
    recomputed: Recomputed | None = None
    passed: bool | None = None
    notes: list[str] = []
    job: RerunJob | None = None
    if policy.computes:
        try:
            if j == 0:  # the tokens stage 0 committed to having consumed (its own claim)
                _, toks0, _ = await fetch_stage(ctx, td, 0)
                seq = toks0[: sc.n_tokens]
                job = RerunJob(cid, rid, 0, td.ranges, torch.tensor(seq[:P], dtype=torch.int64), tuple(seq))
            else:
                rows, toks, _ = await fetch_stage(ctx, td, j - 1)
                job = RerunJob(cid, rid, j, td.ranges, rows, tuple(await _sequence(ctx, td, toks)))
        except Exception as e:  # unreachable stage, refused FETCH, or rows that miss the root
            notes.append(f"inputs unavailable: {e}")
            job = None
    if job is not None:
        try:
            server = await ctx.pool.get(td.layers)
            res = await run_job(server, ctx.listener, ctx.key, job, ctx.timeout_s)
            recomputed = Recomputed(res.rows, res.tree)
            notes.append(f"re-executed {P} positions in {res.seconds:.2f} s")
        except (RerunError, AgentError) as e:
            notes.append(f"re-execution failed: {e}")
    # Only now — after the server committed — the claimed rows.
    try:
        rows_c, _, tree_c = await fetch_stage(ctx, td, j)
        claimed = Claimed(rows_c, tree_c)
    except Exception as e:  # unreachable stage, refused FETCH, or rows that miss the root
        notes.append(f"claimed rows unusable: {e}")
    if claimed is not None and recomputed is not None:
        server = await ctx.pool.get(td.layers)
        prof = BF16 if server.executor.shard.dtype == torch.bfloat16 else FP32
        v = judge(claimed.rows, recomputed.rows, prof)
        passed = v.passed
        if not v.passed:
            notes.append("failed: " + "; ".join(v.reasons)[:200])
        notes.append(_token_note(server.executor.shard, recomputed.rows, claimed.tree.tokens, td))
    d = decide(policy, claimed, recomputed, passed)
    if d.evidence == "recomputed":
        assert recomputed is not None
        tree = recomputed.tree
    elif d.evidence == "claimed":
        assert claimed is not None
        tree = claimed.tree
    elif d.evidence == "forged":
        assert claimed is not None
        tree = forged_evidence(cid, rid, j, claimed.rows, claimed.tree.tokens, seed=td.task_id)
    else:  # nothing to show: a blank tree of the committed shape, so the member can still open
        tree = StageCommitment.build(Domain(cid, rid, j), torch.zeros(P, sc.hidden_size), [0] * sc.n_tokens)
    note = "; ".join([d.reason, *[n for n in notes if n]])
    vote = Vote(td.task_id, rnd, j, d.verdict, tree.root, os.urandom(32), str(policy),
                tokens=list(tree.tokens), note=note[:500])
    return vote, tree


def _token_note(shard: Any, rows: torch.Tensor, tokens: tuple[int, ...] | list[int], td: TaskData) -> str:
    """Last stage: how many claimed generated tokens are the greedy choice of our logits."""
    if not tokens or not getattr(shard, "is_last", False):
        return ""
    first = td.leaf.tokens_in  # the first generated token's position
    P = td.positions
    if not 1 <= first <= P:
        return ""
    logits = logits_of(shard, rows[first - 1 : P])
    if logits is None:
        return ""
    want = torch.tensor([int(t) for t in tokens[first : P + 1]])
    agree = int((logits.argmax(dim=-1) == want).sum())
    return f"{agree}/{len(want)} generated tokens are the greedy choice"
