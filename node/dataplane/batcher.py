"""Iteration-level scheduling for one stage: which rows of which requests go into the next step.

Pure bookkeeping (no IO, no torch kernels): the stage server submits a `Job` per request step — the
rows this stage must still compute for it — and asks `plan()` for the next batch. Policy, as in
vLLM / SGLang / Parallax workers:

- a step waits (briefly, `wait_s`) until the decode rows of the running requests are all back, so a
  wave of requests stays one batch instead of fragmenting;
- every running decode (a job with one row left) gets its row in the step, oldest first, up to
  `max_decode_rows` — capped at ⌈running / micro_batches⌉ on the first stage, so the requests
  split into that many groups circulating round the ring one after another and every stage has
  work while the others compute. `micro_batches` 0 (the default) means as many groups as the
  pipeline has stages: right when each stage has its own cores (its own machine, or its share of
  a shared one). 1 suits only stages that share cores *and* each use all of them, taking turns;
  there a second group would oversubscribe the cores;
- then prefills (new prompts, re-route replays, verification re-executions — all alike: the stage
  cannot and must not tell them apart) in arrival order, each contributing a chunk, up to
  `prefill_chunk` rows per step in total: a long prompt or a verification job is spread over several
  steps and never stalls the running decodes (chunked prefill), and decodes are never starved.

A job leaves the batcher when its last row is computed (`advance`), or at once when its request is
cancelled, finished or re-routed (`drop`), which is what frees its place in the next step.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

SETTLE_S = 0.005  # no new row for this long after a smaller group's last one: the group is in
BURST_MAX_S = 4 * SETTLE_S  # the longest a later stage waits for a burst of prompts to end


@dataclass
class Job:
    """A request's rows still to compute on this stage for one step (prefill chunk or decode row)."""

    rid: bytes
    x: torch.Tensor  # ids (T,) or rows (T, d) not yet computed
    start: int  # position of x[0]
    step: int
    epoch: int
    forward_from: int  # first position of the rows this step sends on (a resync re-sends them all)
    resend: bool = False  # send the stored rows [forward_from, end) (a resync), not just computed ones
    seq: int = 0  # arrival order
    outs: list[torch.Tensor] = field(default_factory=list)  # computed rows, in order
    logits: torch.Tensor | None = None  # last stage: the logits of the step's last row
    ready_at: float = 0.0  # when it was submitted (the server's clock), for the gather wait

    @property
    def remaining(self) -> int:
        return int(self.x.shape[0])

    @property
    def end(self) -> int:
        return self.start + self.remaining

    def advance(self, n: int, hidden: torch.Tensor, logits: torch.Tensor | None) -> bool:
        """Record that the first `n` rows were computed; True when the job is complete."""
        self.outs.append(hidden)
        self.x, self.start = self.x[n:], self.start + n
        if logits is not None:
            self.logits = logits
        return self.remaining == 0


class Batcher:
    """The jobs of one stage and the rule that picks each step's batch."""

    def __init__(self, max_decode_rows: int = 256, prefill_chunk: int = 256, micro_batches: int = 0):
        if max_decode_rows < 1 or prefill_chunk < 1 or micro_batches < 0:
            raise ValueError(f"max_decode_rows ({max_decode_rows}) and prefill_chunk ({prefill_chunk}) "
                             f"must be >= 1, micro_batches ({micro_batches}) >= 0 (0: one per stage)")
        self.max_decode_rows = max_decode_rows
        self.prefill_chunk = prefill_chunk
        self.micro_batches = micro_batches
        self.jobs: dict[bytes, Job] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self.jobs)

    def submit(self, job: Job) -> None:
        if job.rid in self.jobs:
            raise ValueError(f"request {job.rid.hex()} already has rows waiting on this stage")
        job.seq = next(self._seq)
        self.jobs[job.rid] = job

    def drop(self, rid: bytes) -> Job | None:
        return self.jobs.pop(rid, None)

    def get(self, rid: bytes) -> Job | None:
        return self.jobs.get(rid)

    def groups(self, stages: int) -> int:
        """Micro-batches in a pipeline of `stages` stages (`micro_batches`, 0: one per stage)."""
        return self.micro_batches or max(1, stages)

    def wait_s(self, running: int, now: float, max_wait_s: float, stages: int = 1,
               bursts: bool = False) -> float:
        """How long to wait for more decode rows before stepping (0: step now). A step is worth
        taking once prefill work is ready or ⌈running / groups⌉ decode rows are: otherwise
        the rows of requests whose tokens are still on their way round the ring would be split over
        several steps — each reading every weight again — and stay split. Groups differ by one
        when `running` does not divide evenly: ⌊running / groups⌋ rows are a whole (smaller) group
        once no further row has come for `SETTLE_S` (a group's rows arrive back to back, sent
        together after the previous stage's step). Waiting for the larger group's size there would
        hold the smaller group until the next group's rows came, and the ring would fall back to
        taking turns. Never more than `max_wait_s` after the oldest ready row (a slow or lost
        request cannot hold the others).

        `bursts` (every stage but the first): rows arrive in bursts, every request's rows of one
        step of the input stage sent back to back, so prefill work also waits until no new job
        has come for `SETTLE_S`. Stepping on a burst's first prompt would leave the rest for a
        second step, reading every weight again for a few rows (traced: a 60-row step, then one
        of 180, where the input stage had sent 240 rows in one burst). Never more than
        `BURST_MAX_S` after the oldest prompt: an input stage that trickles rows cannot hold
        the stage's steps (everyone's decodes ride them) longer than that."""
        if not self.jobs:
            return 0.0
        decodes = [j for j in self.jobs.values() if j.remaining == 1 and j.outs == []]
        if len(decodes) < len(self.jobs):  # prefill work: go, once the burst it came in is in
            if not bursts:
                return 0.0
            ready = [j.ready_at for j in self.jobs.values()]
            return max(0.0, min(max(ready) + SETTLE_S, min(ready) + BURST_MAX_S, min(ready)
                                + max_wait_s) - now)
        groups = self.groups(stages)
        target = min(self.max_decode_rows, max(1, math.ceil(running / groups)))
        if len(decodes) >= target:
            return 0.0
        if len(decodes) >= min(self.max_decode_rows, max(1, running // groups)):
            return max(0.0, max(j.ready_at for j in decodes) + SETTLE_S - now)
        return max(0.0, min(j.ready_at for j in decodes) + max_wait_s - now)

    def plan(self, running: int | None = None, stages: int = 1) -> list[tuple[Job, int]]:
        """The next step: (job, rows to compute) pairs. `running` = requests open on this stage,
        for the micro-batch cap (None: no cap); `stages`: the pipeline's, for `groups`."""
        decodes = [j for j in self.jobs.values() if j.remaining == 1 and j.outs == []]
        prefills = [j for j in self.jobs.values() if not (j.remaining == 1 and j.outs == [])]
        cap = self.max_decode_rows
        if running is not None and self.groups(stages) > 1:
            cap = min(cap, max(1, math.ceil(running / self.groups(stages))))
        out = [(j, 1) for j in sorted(decodes, key=lambda j: j.seq)[:cap]]
        budget = self.prefill_chunk
        for j in sorted(prefills, key=lambda j: j.seq):
            if budget <= 0:
                break
            n = min(j.remaining, budget)
            out.append((j, n))
            budget -= n
        return out
