"""One member's job on one task: gather inputs, re-execute, fetch the claim, judge, decide.

The order is the protocol's (DESIGN §5.3–5.4): inputs first — stage j-1's rows (stage 0's tokens
when j = 0) fetched from that stage's operator and proven against its committed root — then the
re-execution through a stage server, whose COMMIT root exists before anything else happens; only
then the checked stage's claimed rows are fetched and proven against the task's root, and judged
with the two kinds of evidence (`verifier.evidence.assess`, README "Two kinds of evidence"):

- the profile is the one whose hash `ModelRegistry.serving(model)` records; when the registry names
  none (zero hash), the shipped profile of the re-executing server's dtype
  (`verifier.profiles.SHIPPED`); a hash this node does not know is refused — the member abstains
  with the reason logged, it never votes under limits it cannot name (`choose_profile`);
- `vote_kind(assessment, suspect_rule(profile.evidence, threshold=deployed).level)`: proof-grade evidence → FRAUD (a
  FAIL naming a failing leaf), a score above the suspect level only → the contract's SUSPECT,
  else PASS.

The policy turns that into a verdict and the evidence tree whose root the member commits
(`policy.decide`). On the last stage the claimed rows also go through the shard's final norm + LM
head, and the claimed tokens within the profile's `logit_tol` of the greedy choice are counted
(advisory: sampling parameters are not on chain — so `mass_tol` has nothing to apply to — and the
contract's spot check judges rows only, so a token-only accusation would contradict the member's
own evidence).

Each step (inputs, re-execution, claimed rows) is retried with exponential backoff while the head is
more than `JobContext.margin_blocks` blocks before the round's commit deadline; a computing member
that still has no re-execution by then abstains (`Abstention`: it commits nothing — see
`policy.decide` for why that is the least bad answer).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from coincurve import PrivateKey

from node.dataplane.query import fetch_rows
from node.verification.evidence import check_against_root, failing_leaf, forged_evidence
from node.verification.policy import Claimed, Policy, Recomputed, decide
from node.verification.rerun import (
    Listener,
    RerunJob,
    RerunResult,
    ServerPool,
    fetch_all,
    logits_of,
    run_job,
)
from node.verification.state import Vote
from node.verification.task_data import TaskData, endpoint_of
from verifier.encoding import Domain
from verifier.evidence import Assessment, Profile, assess, vote_kind
from verifier.merkle import StageCommitment
from verifier.profiles import SHIPPED
from verifier.sprt import suspect_rule

log = logging.getLogger("veriplex.verifier.jobs")
T = TypeVar("T")


@dataclass(frozen=True)
class JobContext:
    chain: Any
    chain_id: int
    key: PrivateKey
    pool: ServerPool
    listener: Listener
    timeout_s: float = 120.0
    deadline_block: int | None = None  # the round's commit deadline; None: one attempt per step
    margin_blocks: int = 3  # no new attempt once the head is this close to the deadline
    backoff_s: tuple[float, float] = (1.0, 8.0)  # the first and the longest pause between attempts
    # profiles this node may judge under, by hash, besides the shipped ones (a deployment's own fit)
    profiles: Mapping[bytes, Profile] = field(default_factory=dict)
    # the deployed `suspect_threshold` (the contract's CUSUM jails at SUSPECT_WEIGHT times it): the
    # SUSPECT vote level is the one that keeps honest jailing under the bound at this threshold
    suspect_threshold: int | None = None

    async def time_left(self, margin_blocks: int | None = None) -> bool:
        """Whether another attempt may still start: the head is more than `margin_blocks` (default:
        the context's) blocks before the commit deadline (the vote must still be committed after
        the job)."""
        if self.deadline_block is None:
            return False
        head = await asyncio.to_thread(self.chain.block_number)
        return head + (self.margin_blocks if margin_blocks is None else margin_blocks) < self.deadline_block


@dataclass(frozen=True)
class Abstention:
    """The member decided to commit nothing this round (see `policy.decide`)."""

    task_id: int
    round: int
    reason: str


# ── the profile a check is judged under ─────────────────────────────────────────────────────
ZERO_HASH = bytes(32)
_DTYPE_PRECISION = {torch.float32: "fp32", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class ProfileChoice:
    """The profile to judge under, or None and why not (the member then abstains)."""

    profile: Profile | None
    reason: str


def known_profiles(extra: Mapping[bytes, Profile] | None = None) -> dict[bytes, Profile]:
    """Profiles by hash: the shipped ones and `extra` (a deployment's own)."""
    out = {p.hash: p for p in SHIPPED.values()}
    out.update(extra or {})
    return out


def choose_profile(profile_hash: bytes | None, dtype: torch.dtype,
                   known: Mapping[bytes, Profile] | None = None) -> ProfileChoice:
    """The profile whose hash the registry records (`profile_hash`); with none recorded (None or
    the zero hash), the shipped profile of `dtype` (the re-executing server's); None and the
    reason for a hash not in `known` (default: `known_profiles()`) or a dtype without one."""
    table = known_profiles() if known is None else known
    if profile_hash and bytes(profile_hash) != ZERO_HASH:
        p = table.get(bytes(profile_hash))
        if p is None:
            return ProfileChoice(None, f"refused: the registry's profile 0x{bytes(profile_hash).hex()} is "
                                       f"not one this node knows ({len(table)} known)")
        return ProfileChoice(p, f"{p.precision} profile 0x{p.hash.hex()[:12]} (registry)")
    precision = _DTYPE_PRECISION.get(dtype)
    if precision is None or precision not in SHIPPED:
        return ProfileChoice(None, f"refused: the registry names no profile and no profile ships for {dtype}")
    p = SHIPPED[precision]
    return ProfileChoice(p, f"{precision} profile 0x{p.hash.hex()[:12]} (shipped; registry names none)")


def judge_rows(claimed: torch.Tensor, recomputed: torch.Tensor, layers: int, profile: Profile,
               suspect_threshold: int | None = None) -> tuple[str, Assessment, str]:
    """The vote kind ("pass" / "suspect" / "fraud") of one check under `profile`, its assessment
    and a one-line note; SUSPECT at the level `suspect_rule` picks for the deployed threshold."""
    a = assess(claimed, recomputed, layers, profile)
    level = suspect_rule(profile.evidence, threshold=suspect_threshold).level
    kind = vote_kind(a, level)
    m = a.measurement
    note = f"{kind}: score {m.score:.3g} (suspect level {level:.3g}), e-value {a.evalue:.3g}"
    if a.proof.failed:
        note += "; " + "; ".join(a.proof.reasons)
    return kind, a, note


async def _pause(ctx: JobContext, seconds: float, margin_blocks: int | None = None) -> bool:
    """Sleep `seconds`, looking at the head every second; False as soon as no time is left."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        await asyncio.sleep(min(left, 1.0))
        if not await ctx.time_left(margin_blocks):
            return False
    return True


async def _retry(ctx: JobContext, what: str, step: Callable[[], Awaitable[T]], notes: list[str],
                 margin_blocks: int | None = None) -> T | None:
    """`step()` until it succeeds, pausing with exponential backoff, while `ctx.time_left()`; None
    (and a note `what: ...` with the last error) when no attempt succeeded in time.
    `margin_blocks`: stop this far before the commit deadline instead of the context's margin."""
    pause, tries = ctx.backoff_s[0], 0
    while True:
        tries += 1
        try:
            out = await step()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # unreachable or busy peer, refused frame, failed shard load, …
            last: Exception = e
            log.info("verifier: %s (attempt %d): %s", what, tries, e)
        else:
            if tries > 1:
                notes.append(f"{what} at first; succeeded on attempt {tries}")
            return out
        if not await ctx.time_left(margin_blocks) or not await _pause(ctx, pause, margin_blocks):
            break
        pause = min(2 * pause, ctx.backoff_s[1])
    notes.append(f"{what} after {tries} attempt(s): {type(last).__name__}: {last}")
    return None


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


async def prepare_vote(ctx: JobContext, td: TaskData, rnd: int, policy: Policy
                       ) -> tuple[Vote, StageCommitment] | Abstention:
    """Run the job for task `td` round `rnd` under `policy`: the vote (with a fresh salt) and the
    evidence tree its output root commits to, or an `Abstention`. Every step is retried (backoff)
    while `ctx.time_left()`."""
    j, P, cid, rid = td.stage, td.positions, ctx.chain_id, td.request_id
    sc = td.stage_commits[j]
    claimed: Claimed | None = None
    recomputed: Recomputed | None = None
    inputs_missing = False
    passed: str | None = None
    shard: Any = None
    notes: list[str] = []
    registered: bytes | None = None
    if policy.computes:
        # The profile the registry names for this model; an unknown one is refused before any work.
        serving = await asyncio.to_thread(ctx.chain.model_registry.serving, td.pipeline.model_id)
        registered = serving.profile_hash
        known = known_profiles(ctx.profiles)
        if registered and bytes(registered) != ZERO_HASH and bytes(registered) not in known:
            why = choose_profile(registered, torch.float32, known).reason
            log.warning("verifier: task %d round %d (model %d): %s; abstaining", td.task_id, rnd,
                        td.pipeline.model_id, why)
            return Abstention(td.task_id, rnd, f"abstained: {why}")
        async def inputs() -> RerunJob:
            if j == 0:  # the tokens stage 0 committed to having consumed (its own claim)
                _, toks0, _ = await fetch_stage(ctx, td, 0)
                seq = toks0[: sc.n_tokens]
                return RerunJob(cid, rid, 0, td.ranges, torch.tensor(seq[:P], dtype=torch.int64), tuple(seq))
            rows, toks, _ = await fetch_stage(ctx, td, j - 1)
            return RerunJob(cid, rid, j, td.ranges, rows, tuple(await _sequence(ctx, td, toks)))

        # Inputs get the first two thirds of the time left: a member that still has none then
        # must have time to say so (NO_INPUT) before the commit deadline.
        reserve = ctx.margin_blocks
        if ctx.deadline_block is not None:
            head = await asyncio.to_thread(ctx.chain.block_number)
            reserve = max(ctx.margin_blocks, (ctx.deadline_block - head) // 3)
        job = await _retry(ctx, "inputs unavailable", inputs, notes, reserve)
        inputs_missing = job is None and j > 0
        if job is not None:
            async def rerun(job: RerunJob = job) -> tuple[RerunResult, Any]:
                async with ctx.pool.lease(td.layers) as server:
                    return await run_job(server, ctx.listener, ctx.key, job, ctx.timeout_s), server.executor.shard

            done = await _retry(ctx, "re-execution failed", rerun, notes)
            if done is not None:
                res, shard = done
                recomputed = Recomputed(res.rows, res.tree)
                notes.append(f"re-executed {P} positions in {res.seconds:.2f} s")
    # Only now — after the server committed — the claimed rows.
    got = await _retry(ctx, "claimed rows unusable", lambda: fetch_stage(ctx, td, j), notes)
    if got is not None:
        claimed = Claimed(got[0], got[2])
    if claimed is not None and recomputed is not None:
        choice = choose_profile(registered, shard.dtype, known_profiles(ctx.profiles))
        if choice.profile is None:
            log.warning("verifier: task %d round %d: %s; abstaining", td.task_id, rnd, choice.reason)
            return Abstention(td.task_id, rnd, f"abstained: {choice.reason}")
        passed, _, jnote = judge_rows(claimed.rows, recomputed.rows, td.layers[1] - td.layers[0],
                                      choice.profile, ctx.suspect_threshold)
        notes.append(f"{jnote[:300]} [{choice.reason}]")
        notes.append(_token_note(shard, claimed.rows, claimed.tree.tokens, td, choice.profile))
    d = decide(policy, claimed, recomputed, passed, inputs_missing=inputs_missing)
    note = "; ".join([d.reason, *[n for n in notes if n]])
    if d.verdict is None:
        return Abstention(td.task_id, rnd, note[:500])
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
    leaf = [0, 0]
    verdict, kind = d.verdict, d.kind
    if d.verdict is False and claimed is not None and not d.no_input:
        # name the failing leaf, so its opening is forced (the contract judges that leaf)
        rule = await asyncio.to_thread(lambda: ctx.chain.verification.chunk_rule(
            ctx.chain.verification.task(td.task_id)))  # the rule the contract will judge it by
        named = failing_leaf(claimed.tree, tree, *rule)
        if named is not None:
            leaf = list(named)
        elif d.evidence == "recomputed":
            # Proof off chain only (a score or row limit): no leaf fails the chain's rule, so a
            # FAIL would be slashed as naming a leaf that is not faulty. Statistical evidence.
            verdict, kind = True, 3
            note = f"SUSPECT: no leaf fails the on-chain chunk rule {tuple(rule)}; " + note
    vote = Vote(td.task_id, rnd, j, verdict, tree.root, os.urandom(32), str(policy),
                tokens=list(tree.tokens), leaf=leaf, note=note[:500], kind=kind)
    return vote, tree


def _token_note(shard: Any, rows: torch.Tensor, tokens: tuple[int, ...] | list[int], td: TaskData,
                profile: Profile) -> str:
    """Last stage: how many claimed generated tokens are within the profile's `logit_tol` of the
    greedy choice of the logits of `rows` (the claimed rows, through our final norm + LM head)."""
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
    logits = logits[: len(want)].float()
    if len(want) == 0 or (want >= logits.shape[-1]).any():
        return f"{len(want)} generated token(s) not checkable against {logits.shape[-1]} logits"
    gap = logits.max(dim=-1).values - logits.gather(1, want[:, None])[:, 0]
    agree = int((gap <= profile.logit_tol).sum())
    return f"{agree}/{len(want)} generated tokens within {profile.logit_tol:.2g} of the greedy choice"
