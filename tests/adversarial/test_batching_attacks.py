"""Attacks on a stage's batching by a party that feeds it rows.

A later stage waits for the rest of a burst of prompts before stepping (`Batcher.wait_s`,
`bursts`). An input stage of any pipeline through that stage chooses when its rows arrive: by
trickling one short prompt every few milliseconds, each just inside the settle window, it could
keep the burst "still arriving" and hold every step, and with it every other request's decode
rows. The wait is capped at `BURST_MAX_S` after the oldest prompt, so the attacker gains a few
milliseconds per step at most and the honest rows ride the first step after the cap.

A stage attends every decode row of a step in one padded call over its requests' histories side by
side (`BatchedExecutor`, `DecodeSlab`). A client that opens one long context beside many short
requests would make every short history pad to the long one's length: lanes × longest positions,
many times the KV admission reserved (one 8k-token context beside 100 short requests: ~24 GB on a
19-layer SmolLM2 stage), enough to kill the stage for everyone. The padded rows are bounded to
twice their own history; the long one attends alone. Decode histories stay in lanes between
steps: a party that re-routes a request (rewinding it and sending other rows for the same
positions) or cycles its own requests through the lanes beside a victim's must not make the
honest stage compute the victim's rows over stale or foreign K/V, which a verifier's re-execution
from the stage's committed inputs would then convict.

A stage hashes a step's rows of every request in one pass (`CommitLeaves`, `append_rows`). A
request whose rows cannot be committed (NaN or infinite, e.g. an input crafted to overflow) must
not take the honest requests' trees of that step down with it, nor lend them its rows.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from node.dataplane.batcher import BURST_MAX_S, SETTLE_S, Batcher, Job
from node.dataplane.stored_requests import CommitLeaves
from node.runtime.batch import BatchedExecutor, Work
from node.runtime.executor import StageExecutor
from node.runtime.models.tiny import build_tiny_model
from node.runtime.shard import load_shard
from verifier.encoding import Domain
from verifier.merkle import StageCommitment


def _job(tag: int, rows: int, ready_at: float) -> Job:
    return Job(bytes([tag]) * 32, torch.zeros(rows, dtype=torch.int64), 0, 0, 0, 0, ready_at=ready_at)


def test_a_trickling_input_stage_cannot_hold_a_later_stage_s_steps() -> None:
    b = Batcher()
    b.submit(_job(1, 60, 0.0))  # an honest prompt
    b.submit(_job(2, 1, 0.0))  # and a running request's decode row (its token is waiting)
    t, k, stepped_at = 0.0, 0, None
    while t < 1.0:  # the attacker: a 1-row prompt every SETTLE_S - 1 ms, for as long as it likes
        k += 1
        t = k * (SETTLE_S - 0.001)
        wait = b.wait_s(running=50, now=t, max_wait_s=2.0, stages=2, bursts=True)
        if wait == 0.0:
            stepped_at = t
            break
        b.submit(_job(100 + k, 1, t))
    assert stepped_at is not None and stepped_at <= BURST_MAX_S + SETTLE_S
    plan = {j.rid[0] for j, _ in b.plan(running=50, stages=2)}
    assert {1, 2} <= plan  # the honest prompt and decode row go in that step


def test_a_request_with_uncommittable_rows_cannot_spoil_the_trees_hashed_in_its_pass() -> None:
    honest, evil = b"\x0a" * 32, b"\x0e" * 32
    dom_h, dom_e = Domain(1, honest, 1), Domain(1, evil, 1)
    first, step = torch.randn(8, 64), torch.randn(1, 64)

    async def main() -> tuple[CommitLeaves, bool]:
        leaves = CommitLeaves()
        leaves.defer = False  # the pass runs when the owner settles: both requests in one pass
        for rid, dom in ((honest, dom_h), (evil, dom_e)):
            leaves.stored(rid, dom, 64, 0, first)
        leaves.settle_all()
        leaves.stored(evil, dom_e, 64, 8, torch.full((1, 64), float("inf")))
        leaves.stored(honest, dom_h, 64, 8, step)
        leaves.settle_all()
        return leaves, evil in leaves

    leaves, evil_kept = asyncio.run(main())
    acc = leaves.get(honest, dom_h, 9)
    assert acc is not None  # still grown: its COMMIT needs no rebuild
    assert acc.root(9)[0] == StageCommitment.build(dom_h, torch.cat([first, step])).root
    assert not evil_kept  # the attacker's tree is dropped: its COMMIT rebuilds and fails alone


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama", seed=0)


def test_one_long_context_among_many_short_ones_cannot_blow_up_a_stage_s_decode_memory(tiny_llama):
    ex = BatchedExecutor(load_shard(tiny_llama, 0, 8))
    long, short = b"\x01" * 32, [bytes([2, k]) * 16 for k in range(40)]
    ex.open(long, capacity=400)
    ex.step([Work(long, torch.randint(0, 200, (300,)), 0, "none")])
    for rid in short:
        ex.open(rid, capacity=16)
    ex.step([Work(rid, torch.randint(0, 200, (2,)), 0, "none") for rid in short])
    for _ in range(3):
        ex.step([Work(rid, torch.randint(0, 200, (1,)), ex.session(rid).length, "none")
                 for rid in [*short[:20], long, *short[20:]]])
    slab, held = ex._slab, sum(ex.session(r).cache.alloc for r in [long, *short])
    assert slab.lane_of(ex.session(long).cache) is None  # the long one attended alone
    # padding every short history to 300 positions would be 41 × 320 = 13,120 positions
    assert len(slab.lanes) * slab.cap <= 2 * held + 64 * 41 < 41 * 320
    assert len(slab.lanes) * slab.cap <= 41 * 64


def test_rewinds_and_lane_churn_beside_a_victim_leave_its_rows_what_a_verifier_recomputes(tiny_llama):
    ex = BatchedExecutor(load_shard(tiny_llama, 2, 5))
    d, gen = ex.shard.hidden_size, torch.Generator().manual_seed(0)
    victim, sent = b"\x0a" * 32, []  # the rows the victim's stage was sent, position by position
    ex.open(victim, capacity=64)
    attackers = [bytes([0xA0 + k]) * 32 for k in range(3)]

    def rows(t: int) -> torch.Tensor:
        return torch.randn(t, d, generator=gen)

    x = rows(12)
    sent[:] = list(x)
    ex.step([Work(victim, x, 0, "none")])
    for a in attackers:
        ex.open(a, capacity=64)
        ex.step([Work(a, rows(30), 0, "none")])  # longer histories than the victim's
    out = {}
    for rnd in range(12):
        if rnd % 3 == 2:  # the attacker cycles its requests: lanes change owners
            a = attackers.pop(0)
            ex.close(a)
            a = bytes([0xB0 + rnd]) * 32
            ex.open(a, capacity=64)
            ex.step([Work(a, rows(2), 0, "none")])
            attackers.append(a)
        if rnd == 5:  # a re-route: the victim goes back 4 positions and gets other rows for them
            s_ = ex.session(victim)
            s_.cache.crop(-4)
            s_.length -= 4
            x = rows(4)
            sent[s_.length:] = list(x)
            out.update(zip(range(s_.length, s_.length + 4),
                           ex.step([Work(victim, x, s_.length, "none")])[0].hidden, strict=True))
        x = rows(1)
        sent.append(x[0])
        work = [Work(victim, x, ex.session(victim).length, "none")]
        work += [Work(a, rows(1), ex.session(a).length, "none") for a in attackers]
        out[work[0].start] = ex.step(work)[0].hidden[0]
    # a verifier re-executes the stage over the rows it committed to receiving, in one prefill
    ref = StageExecutor(load_shard(tiny_llama, 2, 5)).run(torch.stack(sent), logits="none").hidden
    for pos, row in out.items():
        assert torch.allclose(row, ref[pos], rtol=0, atol=1e-3), pos
