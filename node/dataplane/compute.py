"""A stage's compute loop: the batcher's plan run as one batched step, off the event loop.

The server has a request step's rows checked and turned into a `Job` (`prepare`: positions in order
and within capacity, rows well formed, the cache rewound after a re-route) and *submits* it; `StepLoop.run` forever waits until a step is worth
taking (`Batcher.wait_s`: a wave's other decode rows, at most one measured ring period), takes the
plan, resolves each request's KV session on the loop (a request cancelled while the step computes
only wastes its rows), runs `BatchedExecutor.step` in a one-thread pool — the event loop keeps
reading, checking and signing frames meanwhile — stores every request's computed rows, and hands
each request whose step is complete to `on_done` (send on, or sample). A failing step fails only
the requests whose rows it held (`on_fail`). `quiesce` waits out the step holding a re-routed
request's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from node.dataplane.batcher import Batcher, Job
from node.dataplane.sessions import DataSession, SessionTable
from node.runtime.batch import BatchedExecutor, Work
from node.runtime.models.errors import ExecutionError, ModelError
from protocol.dataplane_errors import BadMessage, DataPlaneError, Replay

log = logging.getLogger("veriplex.dataplane")


def job_is_decode(x: torch.Tensor, start: int, cached: int) -> bool:
    return x.shape[0] == 1 and start == cached


class StepLoop:
    """Runs one stage's batched steps; `steps` and `max_batch` count what it ran."""

    def __init__(self, executor: BatchedExecutor, sessions: SessionTable, batcher: Batcher,
                 gather_s: float, on_done: Callable[[DataSession, Job], Awaitable[None]],
                 on_fail: Callable[[DataSession, int, Exception], None]):
        self.executor, self.sessions, self.batcher = executor, sessions, batcher
        self.on_done, self.on_fail = on_done, on_fail
        self.gather_s = gather_s  # least of the longest wait for a wave's other decode rows
        self.period_s = 0.0  # measured time between a request's consecutive decode rows here
        self._work = asyncio.Event()  # set when jobs may be ready
        self._step_done = asyncio.Event()
        self._running: set[bytes] = set()  # requests whose rows are in the step now computing
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="veriplex-step")
        self.steps = 0  # batched steps run (tests and metrics)
        self.max_batch = 0  # most requests seen in one step

    def prepare(self, s: DataSession, x: torch.Tensor, start: int, step: int) -> Job:
        """The job for positions [start, start + T) of a request's step: checked against what its
        cache holds, and skipping what is already cached after a re-route (`remaining` 0: all)."""
        rid, req, ex = s.rid, s.request, self.executor
        end = start + x.shape[0]
        cached = self.sessions.cached(rid)
        resync = start < cached
        if resync and not s.resync:
            raise Replay(f"positions [{start}, {end}) are already cached ({cached} held)")
        if end > req.capacity:
            raise BadMessage(f"positions [{start}, {end}) exceed the request's {req.capacity}")
        if start > cached:
            raise ExecutionError(
                f"session {rid.hex()}: input starts at position {start} but the cache holds {cached} "
                "positions (positions must arrive in order, without gaps)")
        ex._embed_or_check(x)  # refuse bad rows here, before they change state or join a batch
        if self.batcher.get(rid) is not None:
            raise BadMessage(f"request {rid.hex()} sent step {step} before its previous step ran")
        # After a re-route this stage may be ahead of the sequence the gateway resumed from (it ran
        # positions whose token never reached the gateway): rewind cache and stored rows to it. The
        # last stage keeps one position fewer, to recompute the logits it samples from.
        if s.resync and s.index > 0 and start < cached:
            # A re-route: the input stage (maybe a new one) re-sent rows this stage already ran.
            # Recompute from what it sent now, so outputs, stored rows and the received-rows tree
            # all follow the rows that input stage commits to (node.dataplane.input_check).
            self.sessions.rewind(rid, start)
            cached = start
        keep = end - 1 if ex.shard.is_last else end
        if s.resync and cached > keep:
            self.sessions.rewind(rid, keep)
            cached = keep
        s.resync = False
        if s.index != 0:  # the first stage's next input is the TOKEN of this same step
            s.expect_step = step + 1
        now = time.monotonic()
        if s.last_ready and job_is_decode(x, start, cached):
            # one decode row per trip round the ring: its period bounds how long a step waits
            # for the rest of a wave (Batcher.wait_s)
            self.period_s = 0.8 * self.period_s + 0.2 * (now - s.last_ready)
        s.last_ready = now
        return Job(rid, x[max(cached - start, 0):], max(cached, start), step, s.epoch,
                   forward_from=start, resend=resync, ready_at=now)

    def submit(self, job: Job) -> None:
        self.batcher.submit(job)
        self._work.set()

    async def quiesce(self, rid: bytes) -> None:
        """Drop a request's queued rows and wait until no running step holds them (re-route)."""
        self.batcher.drop(rid)
        while rid in self._running:
            await self._step_done.wait()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run(self) -> None:
        """Forever: take the batcher's plan, run it as one batched step off the loop, hand out rows."""
        loop = asyncio.get_running_loop()
        ex = self.executor
        while True:
            await self._work.wait()
            self._work.clear()
            running = self.sessions.sessions
            stages = max((len(s.request.stages) for s in running.values()), default=1)
            wait = self.batcher.wait_s(len(running), time.monotonic(),
                                       max(self.gather_s, min(self.period_s, 2.0)), stages,
                                       bursts=not ex.shard.is_first)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), wait)
                self._work.set()  # look again: more rows came, or the wait is over
                continue
            plan = self.batcher.plan(len(running) if ex.shard.is_first else None, stages)
            if not plan:
                continue
            # Sessions are resolved now, on the loop: one cancelled while the step computes in
            # the worker thread only wastes its rows, it cannot fail the others'.
            works = [Work(j.rid, j.x[:n], j.start,
                          "last" if ex.shard.is_last and n == j.remaining else "none",
                          session=ex.session(j.rid))
                     for j, n in plan]
            self._running = {j.rid for j, _ in plan}
            self._step_done.clear()
            error: Exception | None = None
            t0 = time.monotonic()
            try:
                outs = await loop.run_in_executor(self._pool, ex.step, works)
            except Exception as e:  # inputs were checked at submission: this is a stage fault
                log.exception("batched step of %d requests failed", len(works))
                error, outs = e, []
            finally:
                self._running = set()
                self._step_done.set()
            log.debug("step %d: %d requests, %d rows, %.1f ms from %.4f", self.steps, len(plan),
                      sum(n for _, n in plan), 1e3 * (time.monotonic() - t0), t0)
            self.steps += 1
            self.max_batch = max(self.max_batch, len(plan))
            stored = []
            for k, (job, n) in enumerate(plan):
                s = self.sessions.sessions.get(job.rid)
                if s is None:  # cancelled or finished while the step ran: its KV is already gone
                    self.batcher.drop(job.rid)
                    continue
                try:
                    if error is not None:
                        if self.batcher.get(job.rid) is not job:
                            continue
                        raise error if isinstance(error, ModelError) else ModelError(str(error))
                    out = outs[k]
                    # The KV cache now holds these positions: the store must too, even when a
                    # re-route dropped the job meanwhile (its rewind then sees both alike).
                    self.sessions.store_rows(job.rid, out.start, out.hidden,
                                             None if ex.shard.is_first else works[k].x)
                    stored.append((s, job, n, out))
                except (DataPlaneError, ModelError) as e:
                    self.batcher.drop(job.rid)
                    self.on_fail(s, job.step, e)
            self.sessions.hash_stored()  # every request's rows in one pass, before they go on
            for s, job, n, out in stored:
                # re-checked per request: sending an earlier one's rows may have let others run
                if (self.sessions.sessions.get(job.rid) is not s or self.batcher.get(job.rid) is not job
                        or s.epoch != job.epoch):
                    continue
                try:
                    if job.advance(n, out.hidden, out.logits):
                        self.batcher.drop(job.rid)
                        await self.on_done(s, job)
                except (DataPlaneError, ModelError) as e:
                    self.batcher.drop(job.rid)
                    self.on_fail(s, job.step, e)
            if self.batcher:
                self._work.set()
