"""`VerifierAgent`: follows the Verification contract and plays every role this node has in a task.

Each poll (`verification.agent_poll_s`) reads the head, picks up new TaskOpened events, and moves
each live task along by what the chain says now — nothing is assumed from earlier polls, so a
restart (votes come back from `AgentState`) or a race with another keeper changes nothing:

- VOTING: a member of the current round starts its job (`jobs.prepare_vote`) once, commits the
  vote (saved to disk first) before the commit deadline — or, when the job abstains (it could not
  re-execute in time; `policy.decide`), commits nothing that round — reveals it once every member committed or
  the commit phase is over (policy `silent` never does); anyone closes the votes once every member
  revealed or the reveal deadline passed.
- OPENING: once the spot draw exists, a revealed member opens its own evidence at the drawn
  chunks, the checked stage's operator opens its own rows read from its hidden store (the running
  server's, or the store directory of a range it no longer serves); anyone finalizes
  once everything is open or the open deadline passed.
- FRAUD: anyone refunds the client (proof rebuilt from the batch's settlement events).

Keeper calls (close_votes, finalize, refund_client) are sent once, not raced: for each (task,
round, action) one committee member is the keeper (`keeper_rank` 0: a rotation of the sorted
committee by keccak of the three). Time is cut into slots of `keeper_delay_blocks` from the block
the chain made the call due (`_due_block`: the deadline, or the block of the last reveal/opening
when everyone acted early — the same on every node, however late a node polls): the member ranked
k acts only in slot k (so a slow keeper that wakes up late does not race its fallback), anyone
after every member's slot; and everyone pre-flights the call as an `eth_call` on the pending block
first, so nobody sends what another keeper already sent.

Chain calls are synchronous and run in worker threads; re-executions run on the event loop next to
the data plane. A keeper call whose pre-flight reverts (someone was first) is not sent.
Blocks are counted as the contract does: a transaction sent at head `h` is mined at `h + 1` or
later, so a phase that ends at block `D` is only acted in while `h < D`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coincurve import PrivateKey
from eth_utils import keccak

from contracts.errors import ChainError, Revert
from contracts.rpc import Signer
from contracts.verification import FINAL_STATUSES, TaskStatus, VerdictKind
from node.verification.errors import AgentError
from node.verification.evidence import openings
from node.verification.jobs import Abstention, JobContext, prepare_vote
from node.verification.policy import Policy
from node.verification.rerun import Listener, ServerPool
from node.verification.stage_duties import StageDuties, Tracked
from node.verification.state import AgentState, Vote
from node.verification.task_data import load_task_data
from protocol.identity import address_of_key

log = logging.getLogger("veriplex.verifier")
ZERO = "0x" + "00" * 20
DONE = FINAL_STATUSES  # FRAUD too, unless the contract refunds in a separate keeper call


def keeper_rank(committee: list[str], me: str, task_id: int, rnd: int, what: str) -> int:
    """0 for the keeper of (task, round, action), k for its k-th fallback among the committee
    (a rotation of the sorted members by keccak of the three, the same on every node), and the
    committee's size for anyone outside it (the last resort)."""
    members = sorted({op.lower() for op in committee})
    if me.lower() not in members:
        return len(members)
    start = int.from_bytes(keccak(f"{task_id}:{rnd}:{what}".encode()), "big") % len(members)
    return (members.index(me.lower()) - start) % len(members)


def keeper_turn(rank: int, members: int, due_block: int, head: int, delay: int) -> bool:
    """Whether the keeper ranked `rank` may act at `head`: in its own slot of `delay` blocks
    counted from `due_block` (slot k for rank k), or — anyone — once every member's slot has
    passed. A keeper that wakes up after its slot leaves it to the next."""
    slot = (head - due_block) // delay
    return slot == rank or slot >= members


@dataclass(frozen=True)
class AgentConfig:
    policy: Policy = Policy.HONEST
    poll_s: float = 0.5
    job_timeout_s: float = 120.0
    start_block: int | None = None  # None: resume at the saved cursor (or the head − catch-up)
    catchup_blocks: int = 256  # how far back a (re)start looks for tasks opened while it was down
    retry_margin_blocks: int = 3  # a job starts no new attempt this close to the commit deadline
    keeper_delay_blocks: int = 6  # blocks per keeper slot (the keeper's tx lands in 1 or 2)
    keeper_gas: int = 10_000_000  # cap for keeper calls, pre-flighted instead of estimated


class VerifierAgent(StageDuties):
    """One node's verifier, stage-operator and keeper roles in the Verification game."""

    def __init__(self, chain: Any, key: bytes, pool: ServerPool, state: AgentState,
                 config: AgentConfig = AgentConfig(), say: Callable[[str], None] | None = None,
                 stores: Callable[[tuple[int, int]], Any] | None = None):
        self.chain = chain
        self.ver = chain.verification
        self.pkey = PrivateKey(key)
        self.signer = Signer.from_key(key)
        self.me = address_of_key(self.pkey)
        self.pool, self.state, self.config = pool, state, config
        self.say = say or (lambda text: log.info("%s", text))
        self.stores = stores  # layers -> HiddenStateStore of a range no running server holds
        self.listener = Listener()
        self.tasks: dict[int, Tracked] = {}
        self.votes: dict[tuple[int, int], Vote] = {}
        self.trees: dict[tuple[int, int], Any] = {}
        self.jobs: dict[tuple[int, int], asyncio.Task] = {}
        self.abstained: dict[tuple[int, int], str] = {}  # rounds this member commits nothing in
        self.next_block: int | None = config.start_block
        self.chain_id = chain.chain_id
        self.events: list[str] = []  # one line per thing this agent did (tests, logs)
        self.stage_opened: set[tuple[int, int]] = set()
        self.blamed: set[int] = set()  # tasks of our stage whose input commitment was looked at
        # the older game refunded a convicted task's client in a keeper call of its own; the
        # current one refunds when it finalizes
        self.refunds = any(f.get("name") == "refund_client" for f in self.ver.abi)
        self.due_since: dict[tuple[int, int, str], int] = {}  # keeper call -> head first seen due
        self.ranks: dict[tuple[int, int, str], int] = {}
        self.committee_size: dict[tuple[int, int, str], int] = {}

    # ── lifecycle ─────────────────────────────────────────────────────────────────────────────
    async def run(self, stop: asyncio.Event) -> None:
        await self.listener.start()
        self.say(f"verifier: agent on as {self.me} (policy {self.config.policy}), following "
                 f"Verification at {self.ver.address}")
        restored = False
        try:
            while not stop.is_set():
                try:
                    if not restored:  # the chain may not answer yet: retried every poll
                        await asyncio.to_thread(self._restore)
                        restored = True
                    await self.step()
                except (ChainError, AgentError) as e:
                    log.warning("verifier agent: %s", e)
                except Exception:
                    log.exception("verifier agent: unexpected error (retrying next poll)")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.poll_s)
        finally:
            for t in self.jobs.values():
                t.cancel()
            await self.listener.stop()
            await self.pool.stop()

    def _restore(self) -> None:
        """Votes saved before a restart: follow their tasks again. Warn about an unfunded key."""
        if self.chain.balance(self.me) == 0:
            self.say(f"verifier: WARNING operator {self.me} holds no coin for gas: it cannot vote, open "
                     "or keep (and a member that does not reveal is slashed); fund the operator key")
        for v in self.state.votes():
            self.votes[(v.task_id, v.round)] = v
            if v.task_id not in self.tasks:
                evs = self.ver.events("TaskOpened", task_id=v.task_id)
                if evs:
                    self._track(evs[0])

    def _track(self, ev: Any) -> None:
        a = ev.args
        tid = int(a["task_id"])
        if tid not in self.tasks:
            self.tasks[tid] = Tracked(tid, int(a["stage"]), str(a["stage_operator"]), ev.tx_hash,
                                      block=int(getattr(ev, "block_number", 0) or 0))

    def _note(self, text: str) -> None:
        self.events.append(text)
        self.say(f"verifier: {text}")

    # ── one poll ──────────────────────────────────────────────────────────────────────────────
    async def step(self) -> None:
        head = await asyncio.to_thread(self._scan)
        for tid in list(self.tasks):
            await self._advance(tid, head)

    def _scan(self) -> int:
        head = self.chain.block_number()
        if self.next_block is None:
            # Tasks opened while this node was down (or just before it first started) still need
            # its votes, openings and keeping: resume at the saved cursor, at most `catchup_blocks`
            # back (older tasks are past every deadline a member could still meet).
            floor = max(0, head - self.config.catchup_blocks)
            saved = self.state.cursor()
            self.next_block = floor if saved is None else min(max(saved, floor), head + 1)
        if head >= self.next_block:
            for ev in self.ver.events("TaskOpened", from_block=self.next_block, to_block=head):
                self._track(ev)
            self.next_block = head + 1
            self.state.save_cursor(self.next_block)
        return head

    async def _advance(self, tid: int, head: int) -> None:
        t = await asyncio.to_thread(self.ver.task, tid)
        if t is None or (t.status in DONE and not (t.status is TaskStatus.FRAUD and self.refunds)):
            self._drop(tid)
            return
        tr = self.tasks[tid]
        if (t.stage > 0 and tr.stage_operator.lower() == self.me.lower() and tid not in self.blamed
                and t.status in (TaskStatus.VOTING, TaskStatus.OPENING, TaskStatus.DRAWING)):
            await self._blame_input(tr, t)
            t = await asyncio.to_thread(self.ver.task, tid)
            if t is None or t.status in DONE:
                self._drop(tid)
                return
        if t.status is TaskStatus.VOTING:
            await self._voting(self.tasks[tid], t, head)
        elif t.status is TaskStatus.OPENING:
            await self._opening(self.tasks[tid], t, head)
        elif t.status is TaskStatus.FRAUD:
            await self._keep("refund_client", tid, t.round, head, lambda: self._refund_args(t))

    def _drop(self, tid: int) -> None:
        self.tasks.pop(tid, None)
        self.blamed.discard(tid)
        for k in [k for k in {*self.votes, *self.jobs, *self.abstained} if k[0] == tid]:
            self.votes.pop(k, None)
            self.trees.pop(k, None)
            self.abstained.pop(k, None)
            job = self.jobs.pop(k, None)
            if job is not None:
                job.cancel()
        for kk in [kk for kk in {*self.due_since, *self.ranks} if kk[0] == tid]:
            self.due_since.pop(kk, None)
            self.ranks.pop(kk, None)
            self.committee_size.pop(kk, None)
        self.state.forget(tid)

    def _members(self, tid: int, rnd: int) -> list[tuple[str, Any]]:
        out = []
        for op in self.ver.committee(tid):
            m = self.ver.member(tid, op)
            if m.round == rnd:
                out.append((op, m))
        return out

    # ── VOTING ────────────────────────────────────────────────────────────────────────────────
    async def _voting(self, tr: Tracked, t: Any, head: int) -> None:
        key = (tr.task_id, t.round)
        members = await asyncio.to_thread(self._members, tr.task_id, t.round)
        mine = next((m for op, m in members if op.lower() == self.me.lower()), None)
        if mine is not None:
            vote = self.votes.get(key)
            if mine.commitment == b"\x00" * 32:
                if head >= t.commit_deadline:
                    pass  # too late to commit: close_votes will slash the missing reveal
                elif vote is None and key not in self.abstained:
                    self._start_job(tr, t, key)
                elif vote is not None:  # an abstaining member commits nothing
                    await self._commit(vote)
            elif vote is not None and not mine.revealed and self.config.policy.reveals:
                all_committed = all(m.commitment != b"\x00" * 32 for _, m in members)
                if (head >= t.commit_deadline or all_committed) and head < t.reveal_deadline:
                    await self._reveal(vote)
        all_revealed = bool(members) and all(m.revealed for _, m in members)
        if head > t.reveal_deadline or all_revealed:
            await self._keep("close_votes", tr.task_id, t.round, head, lambda: (tr.task_id,),
                             due=lambda: self._due_block(tr, "VerdictRevealed", t.round,
                                                         t.reveal_deadline, all_revealed))

    def _start_job(self, tr: Tracked, t: Any, key: tuple[int, int]) -> None:
        job = self.jobs.get(key)
        if job is not None and not job.done():
            return
        self.jobs[key] = asyncio.get_running_loop().create_task(self._job(tr, t, key))

    async def _job(self, tr: Tracked, t: Any, key: tuple[int, int]) -> None:
        try:
            if tr.data is None:
                tr.data = await asyncio.to_thread(load_task_data, self.chain, tr.task_id, tr.stage, tr.tx_hash)
            threshold = await asyncio.to_thread(lambda: self.ver.params().suspect_threshold)
            ctx = JobContext(self.chain, self.chain_id, self.pkey, self.pool, self.listener,
                             self.config.job_timeout_s, t.commit_deadline, self.config.retry_margin_blocks,
                             suspect_threshold=threshold)
            out = await prepare_vote(ctx, tr.data, t.round, self.config.policy)
            if isinstance(out, Abstention):
                self.abstained[key] = out.reason
                self._note(f"task {tr.task_id} round {t.round}: abstained, commits nothing ({out.reason})")
                return
            vote, tree = out
            assert tree.bits is not None  # a tree built from rows (not from leaf hashes only)
            await asyncio.to_thread(self.state.save, vote, tree.bits[:, : tree.shape.hidden_size])
            self.votes[key], self.trees[key] = vote, tree
            self._note(f"task {tr.task_id} round {t.round}: verdict {vote.label} "
                       f"({vote.note}; output root 0x{vote.output_root.hex()[:16]}…)")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # retried next poll while the commit phase lasts
            log.warning("verifier: task %d job failed: %s", tr.task_id, e)
            self.jobs.pop(key, None)

    async def _commit(self, vote: Vote) -> None:
        try:
            await asyncio.to_thread(self.ver.commit_verdict, vote.task_id, vote.kind_code,
                                    vote.output_root, vote.salt, tuple(vote.leaf),
                                    sender=self.signer)
        except Revert as e:
            log.info("verifier: commit on task %d refused: %s", vote.task_id, e)
            return
        vote.committed = True
        await asyncio.to_thread(self.state.save, vote)
        self._note(f"task {vote.task_id} round {vote.round}: committed")

    async def _reveal(self, vote: Vote) -> None:
        try:
            await asyncio.to_thread(self.ver.reveal_verdict, vote.task_id, vote.kind_code,
                                    vote.output_root, vote.salt, tuple(vote.leaf),
                                    sender=self.signer)
        except Revert as e:
            log.info("verifier: reveal on task %d refused: %s", vote.task_id, e)
            return
        vote.revealed = True
        await asyncio.to_thread(self.state.save, vote)
        self._note(f"task {vote.task_id} round {vote.round}: revealed {vote.label}")

    # ── OPENING ───────────────────────────────────────────────────────────────────────────────
    async def _opening(self, tr: Tracked, t: Any, head: int) -> None:
        tid = tr.task_id
        try:
            spots = await asyncio.to_thread(self.ver.spot_checks, tid)
        except Revert:
            return  # the spot block is not there yet
        members = await asyncio.to_thread(self._members, tid, t.round)
        if head < t.open_deadline:
            vote = self.votes.get((tid, t.round))
            mine = next((m for op, m in members if op.lower() == self.me.lower()), None)
            # The chain, not the local flags, says what is left to do (a crash may sit in between).
            if (vote is not None and mine is not None and mine.revealed and not mine.opened
                    and vote.kind_code != 4):  # a NO_INPUT member has no evidence to open
                await self._open_own(vote, tr, spots)
            if tr.stage_operator.lower() == self.me.lower():
                await self._open_stage(tr, t, spots)
            if (t.input_operator or "").lower() == self.me.lower() and any(
                    m.kind == VerdictKind.NO_INPUT for _, m in members):
                await self._open_input(tr, t, spots)
        all_opened = all(m.opened or not m.revealed for _, m in members)
        if head > t.open_deadline or all_opened:
            await self._keep("finalize", tid, t.round, head, lambda: (tid,),
                             due=lambda: self._due_block(tr, "ChunksOpened", t.round,
                                                         t.open_deadline, all_opened))

    async def _open_own(self, vote: Vote, tr: Tracked, spots: list[tuple[int, int]]) -> None:
        key = (vote.task_id, vote.round)
        tree = self.trees.get(key)
        if tree is None:
            rid = (await asyncio.to_thread(self.ver.task, vote.task_id)).request_id
            tree = await asyncio.to_thread(self.state.evidence, vote, self.chain_id, rid)
            self.trees[key] = tree
        if tree is None:
            log.warning("verifier: no evidence tree of task %d round %d to open", vote.task_id, vote.round)
            return
        try:
            await asyncio.to_thread(self.ver.open_chunks, vote.task_id, self.me, openings(tree, spots),
                                    sender=self.signer)
        except Revert as e:
            log.info("verifier: opening on task %d refused: %s", vote.task_id, e)
            return
        vote.opened = True
        await asyncio.to_thread(self.state.save, vote)
        self._note(f"task {vote.task_id} round {vote.round}: opened {len(spots)} chunks of its evidence")

    # ── keeper ────────────────────────────────────────────────────────────────────────────────
    def _refund_args(self, t: Any) -> tuple[Any, ...]:
        from node.verification.task_data import refund_proof

        return (t.task_id, refund_proof(self.chain, t.batch_id, t.request_id))

    def keeper_rank(self, tid: int, rnd: int, what: str) -> int:
        key = (tid, rnd, what)
        if key not in self.ranks:
            committee = self.ver.committee(tid)
            self.committee_size[key] = len({op.lower() for op in committee})
            self.ranks[key] = keeper_rank(committee, self.me, tid, rnd, what)
        return self.ranks[key]

    def _due_block(self, tr: Tracked, event: str, rnd: int, deadline: int, early: bool) -> int:
        """The block the chain made a keeper call due: the one after `deadline`, or — when
        every member acted before it — the block of the last such act (`event`) this round."""
        if not early:
            return deadline + 1
        acts = [e.block_number for e in self.ver.events(event, from_block=tr.block,
                                                        task_id=tr.task_id)
                if e.args.get("round", rnd) == rnd]
        return min(deadline + 1, max(acts)) if acts else deadline + 1

    async def _keep(self, what: str, tid: int, rnd: int, head: int,
                    args: Callable[[], tuple[Any, ...]],
                    due: Callable[[], int] | None = None) -> None:
        """Send keeper call `what` in our slot (see the module docstring) once its pre-flight
        on the pending block passes."""
        key = (tid, rnd, what)
        if key not in self.due_since:
            self.due_since[key] = head if due is None else await asyncio.to_thread(due)
        since = self.due_since[key]
        rank = await asyncio.to_thread(self.keeper_rank, tid, rnd, what)
        if not keeper_turn(rank, self.committee_size[(tid, rnd, what)], since, head,
                           self.config.keeper_delay_blocks):
            return
        try:
            call_args = await asyncio.to_thread(args)
            await asyncio.to_thread(self.ver.simulate, what, *call_args, sender=self.me)
        except Revert as e:  # done by another keeper already (or not due on chain yet)
            log.debug("verifier: %s on task %d not sent: %s", what, tid, e)
            return
        try:  # no gas estimate (a binary search of a heavy call): sent within a block or so
            await asyncio.to_thread(self.ver.send, what, *call_args, sender=self.signer,
                                    gas=self.config.keeper_gas)
        except Revert as e:
            log.info("verifier: %s on task %d reverted: %s", what, tid, e)
            return
        self._note(f"task {tid}: {what}" + (f" (fallback keeper, rank {rank})" if rank else ""))

