"""The stage operator's duties in the verification game, as the agent of the node that served a
checked stage or its input stage (mixed into `VerifierAgent`):

- as the checked stage: open its committed rows at the spots (`_open_stage`), and first, if the
  task settled another input commitment than the one the stage checked at COMMIT, prove the input
  stage equivocated (`_blame_input`, TaskOpener.blame_input: stage-level blame);
- as the input stage, when a member reported NO_INPUT: open the spots of its own output
  (`_open_input`), or be slashed for withholding it.

Rows come back from the hidden store that served them: the running server's, else the store
directory for that range (`stores`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from contracts.errors import Revert
from node.verification.errors import AgentError
from node.verification.evidence import check_against_root, openings
from node.verification.task_data import TaskData, load_task_data

log = logging.getLogger("veriplex.verifier")


@dataclass
class Tracked:
    """A task this agent follows, as its TaskOpened event announced it."""

    task_id: int
    stage: int
    stage_operator: str
    tx_hash: str
    data: TaskData | None = None
    block: int = 0  # where it was opened (events about it are searched from there)


class StageDuties:
    """What the agent provides (`VerifierAgent` sets these in its constructor)."""

    chain: Any
    ver: Any  # contracts.verification.Verification
    chain_id: int
    me: str  # the operator address
    signer: Any  # contracts.rpc.Signer of the operator key
    pool: Any  # node.verification.rerun.ServerPool
    stores: Callable[[tuple[int, int]], Any] | None
    stage_opened: set[tuple[int, int]]
    blamed: set[int]

    def _note(self, text: str) -> None:
        raise NotImplementedError

    async def _open_stage(self, tr: Tracked, t: Any, spots: list[tuple[int, int]]) -> None:
        """As the checked stage's operator: open its committed rows, read back from its own store."""
        done_key = (tr.task_id, t.round)
        if done_key in self.stage_opened:
            return
        td = await self._task_data(tr)
        if await self._open_own_rows(tr.task_id, td, td.stage, spots, "our stage's chunks"):
            self.stage_opened.add(done_key)
            self._note(f"task {tr.task_id} round {t.round}: opened our stage's {len(spots)} chunks")

    async def _task_data(self, tr: Tracked) -> TaskData:
        if tr.data is None:
            tr.data = await asyncio.to_thread(load_task_data, self.chain, tr.task_id, tr.stage, tr.tx_hash)
        return tr.data

    async def _open_own_rows(self, task_id: int, td: TaskData, stage: int,
                             spots: list[tuple[int, int]], what: str) -> bool:
        """Open `spots` of stage `stage`'s committed rows (ours), read back from our store and
        checked against the committed root; False when they could not be opened (retried)."""
        sc = td.stage_commits[stage]
        try:
            rows, toks = await asyncio.to_thread(self._stored_rows, td, stage, sc.positions)
            tree = await asyncio.to_thread(check_against_root, self.chain_id, td.request_id, stage,
                                           sc, rows, toks)
            await asyncio.to_thread(self.ver.open_chunks, task_id, self.me, openings(tree, spots),
                                    sender=self.signer)
        except Revert as e:
            log.info("verifier: opening %s on task %d refused: %s", what, task_id, e)
        except Exception as e:
            log.warning("verifier: cannot open %s for task %d: %s", what, task_id, e)
            return False
        return True

    async def _blame_input(self, tr: Tracked, t: Any) -> None:
        """As the checked stage's operator: if the input commitment the task settled is not the
        one our stage checked against the rows it received before it committed (kept with its
        rows, node.dataplane.input_check), the kept one is the input stage's signature on other
        rows: submit it (TaskOpener.blame_input), so we are not judged on rows we never got."""
        from protocol.frames import parse_committed

        self.blamed.add(tr.task_id)
        td = await self._task_data(tr)
        store = self._store_of(td.layers)
        blob = store.input(td.request_id, *td.layers) if store is not None else None
        settled = t.input_commit
        if blob is None or settled is None:
            return
        sc, sig = parse_committed(blob)
        if sc.root == settled.root or (sc.positions, sc.hidden_size, sc.n_tokens) != (
                settled.positions, settled.hidden_size, settled.n_tokens):
            return
        try:
            await asyncio.to_thread(self.ver.blame_input, tr.task_id, sc, sig, sender=self.signer)
        except Revert as e:
            log.warning("verifier: blaming the input stage of task %d refused: %s", tr.task_id, e)
            return
        self._note(f"task {tr.task_id}: the input stage {t.input_operator} settled another commitment "
                   "than the one it sent us; proved it (blame_input)")

    async def _open_input(self, tr: Tracked, t: Any, spots: list[tuple[int, int]]) -> None:
        """As the input stage's operator, when a member reported NO_INPUT: open the random spots
        of our own committed output (what the checked stage re-executes from), read back from our
        store; else the game slashes us for withholding it."""
        done_key = (tr.task_id, -1 - t.round)
        if done_key in self.stage_opened or await asyncio.to_thread(
                self.ver.input_opened, tr.task_id, t.round):
            return
        td = await self._task_data(tr)
        n_spots = (await asyncio.to_thread(self.ver.params)).spot_chunks
        if await self._open_own_rows(tr.task_id, td, td.stage - 1, spots[:n_spots],
                                     "our (input) stage's spots"):
            self.stage_opened.add(done_key)
            self._note(f"task {tr.task_id} round {t.round}: a member had no input; opened our "
                       f"(input) stage's {min(n_spots, len(spots))} spots")

    def _store_of(self, layers: tuple[int, int]) -> Any:
        srv = next((s for s in self.pool.own() if tuple(s.layers) == tuple(layers)), None)
        if srv is not None:
            return srv.sessions.store
        return self.stores(layers) if self.stores else None

    def _stored_rows(self, td: TaskData, stage: int, positions: int) -> tuple[Any, list[int]]:
        """Stage `stage`'s rows [0, P) and tokens (ours), read from the hidden store that served
        them: the running server's, else (a shard swapped out since) the store directory for
        that range."""
        a, b = td.ranges[stage]
        store = self._store_of((a, b))
        if store is None:
            raise AgentError(f"no hidden store of layers [{a}, {b}) on this node")
        rows = store.read(td.request_id, a, b, 0, positions)
        return rows, list(store.info(td.request_id, a, b).tokens)
