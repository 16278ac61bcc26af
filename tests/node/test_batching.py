"""Continuous batching: per-request results do not depend on the batch, admission stays exact.

Tolerance. A batch of one runs the very kernels `StageExecutor` runs (atol=0). In a larger batch a
request's rows go through GEMMs over more rows and, with chunked prefill, attention over other query
shapes; on this CPU that moves fp32 values by a few ulps (≤ ~2e-4 on the tiny models' logits, whose
magnitudes are ~10). Greedy tokens are compared exactly — what a user sees — and rows with
`atol=1e-3`, well below any real divergence (a wrong position or mask changes rows by O(1)).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.dataplane.batcher import BURST_MAX_S, SETTLE_S, Batcher, Job
from node.runtime.batch import BatchedExecutor, Work
from node.runtime.executor import StageExecutor, generate_local
from node.runtime.shard import load_shard
from protocol.sampling import Sampling, sample_token

PROMPTS = [[5, 6, 7], list(range(9, 30)), [20], list(range(30, 43)), list(range(100, 108))]
NEW = 10


def _reference(model: Path, cuts, prompt, n, sampling=None):
    stages = [StageExecutor(load_shard(model, a, b)) for a, b in zip(cuts, cuts[1:], strict=False)]
    return generate_local(stages, prompt, n, sampling)


def test_a_batch_of_one_computes_exactly_what_the_unbatched_executor_does(tiny_model: Path):
    for cuts in [(0, 8), (0, 3, 8)]:
        ref = _reference(tiny_model, cuts, PROMPTS[1], NEW)
        stages = [BatchedExecutor(load_shard(tiny_model, a, b)) for a, b in zip(cuts, cuts[1:], strict=False)]
        got = generate_local(stages, PROMPTS[1], NEW)
        assert got.tokens == ref.tokens
        for r, g in zip(ref.stage_hidden, got.stage_hidden, strict=True):
            assert torch.equal(r, g)  # same kernels, shapes and dtype: any difference is a bug


def _run_batched(model: Path, cuts, prompts, n, chunk: int, samplings):
    """Drive every prompt through batched stages at once: chunked prefills join running decodes."""
    stages = [BatchedExecutor(load_shard(model, a, b)) for a, b in zip(cuts, cuts[1:], strict=False)]
    rids = [secrets.token_bytes(32) for _ in prompts]
    for ex in stages:
        for rid, sp in zip(rids, samplings, strict=True):
            ex.open(rid, sp, capacity=len(max(prompts, key=len)) + n)
    pending = {rid: torch.tensor(p) for rid, p in zip(rids, prompts, strict=True)}
    pos = dict.fromkeys(rids, 0)
    out: dict[bytes, list[int]] = {rid: [] for rid in rids}
    rows: dict[bytes, list[torch.Tensor]] = {rid: [] for rid in rids}
    admitted: list[bytes] = []
    while any(len(t) < n for t in out.values()):
        if len(admitted) < len(rids):  # one new request per step, like arrivals over time
            admitted.append(rids[len(admitted)])
        batch = []
        for rid in admitted:
            if len(out[rid]) >= n:
                continue
            x = pending[rid][:chunk]
            batch.append((rid, x))
        xs = [x for _, x in batch]
        for k, ex in enumerate(stages):
            outs = ex.step([Work(rid, x, pos[rid], "last") for (rid, _), x in zip(batch, xs, strict=True)])
            if k == len(stages) - 1:
                for (rid, _), o in zip(batch, outs, strict=True):
                    rows[rid].append(o.hidden)
                    pending[rid] = pending[rid][o.hidden.shape[0]:]
                    pos[rid] += o.hidden.shape[0]
                    if len(pending[rid]) == 0:
                        sp = samplings[rids.index(rid)]
                        tok = sample_token(o.logits[-1], sp, pos[rid])
                        out[rid].append(tok)
                        pending[rid] = torch.tensor([tok])
            xs = [o.hidden for o in outs]
    return [out[r] for r in rids], [torch.cat(rows[r])[: len(p) + n - 1] for r, p in zip(rids, prompts, strict=True)]


@pytest.mark.parametrize("chunk", [4, 256])
def test_batched_requests_get_the_tokens_they_get_alone(tiny_model: Path, chunk: int):
    samplings = [Sampling(), Sampling(0.8, 0.9, 7), Sampling(), Sampling(1.2, 0.95, 3), Sampling()]
    tokens, rows = _run_batched(tiny_model, (0, 3, 8), PROMPTS, NEW, chunk, samplings)
    for p, sp, got, got_rows in zip(PROMPTS, samplings, tokens, rows, strict=True):
        ref = _reference(tiny_model, (0, 3, 8), p, NEW, sp)
        assert got == ref.tokens
        assert torch.allclose(got_rows, ref.stage_hidden[-1], rtol=0, atol=1e-3)


def test_kv_held_never_exceeds_the_admitted_capacity(tiny_llama: Path):
    ex = BatchedExecutor(load_shard(tiny_llama, 0, 8))
    rid = b"\x01" * 32
    ex.open(rid, capacity=70)
    ex.forward(rid, torch.arange(3, 68), 0)
    kv = ex.session(rid).cache
    assert kv.alloc == 70 and kv.bytes_held == 70 * ex.kv_bytes_per_token
    ex.forward(rid, torch.tensor([5]), 65)
    ex.forward(rid, torch.tensor([5]), 66)
    with pytest.raises(Exception, match="admitted for 70"):
        ex.forward(rid, torch.tensor([5, 6, 7, 8]), 67)


# ── the batcher's policy ──────────────────────────────────────────────────────────────────────
def _job(rid: int, n: int, decode: bool = False) -> Job:
    return Job(bytes([rid]) * 32, torch.zeros(n, dtype=torch.int64), 0, 0, 0, 0)


def test_every_decode_rides_each_step_and_prefills_share_a_chunk_budget():
    b = Batcher(prefill_chunk=10)
    b.submit(_job(1, 25))  # a long prompt (or a verification job) first
    for r in (2, 3, 4):
        b.submit(_job(r, 1))
    b.submit(_job(5, 6))
    plan = [(j.rid[0], n) for j, n in b.plan()]
    assert plan == [(2, 1), (3, 1), (4, 1), (1, 10)]  # decodes never wait behind the prefill
    b.drop(bytes([3]) * 32)
    assert [j.rid[0] for j, _ in b.plan()] == [2, 4, 1]


def test_micro_batches_split_the_running_requests_into_groups():
    b = Batcher(micro_batches=2)
    for r in range(1, 8):
        b.submit(_job(r, 1))
    assert len(b.plan(running=7)) == 4
    assert len(b.plan(running=None)) == 7


def test_by_default_there_is_one_micro_batch_per_pipeline_stage():
    b = Batcher()
    for r in range(1, 13):
        b.submit(_job(r, 1))
    assert len(b.plan(running=12, stages=3)) == 4  # three groups of four round a 3-stage ring
    assert len(b.plan(running=12, stages=1)) == 12  # one stage: nothing to overlap
    # a later stage steps once its group's rows are in, not the whole wave's
    assert b.wait_s(running=24, now=0.0, max_wait_s=1.0, stages=2) == 0.0
    assert b.wait_s(running=24, now=0.0, max_wait_s=1.0, stages=1) > 0.0
    one = Batcher(micro_batches=1)  # stages taking turns on shared cores: the whole wave
    for r in range(1, 13):
        one.submit(_job(r, 1))
    assert one.wait_s(running=24, now=0.0, max_wait_s=1.0, stages=2) > 0.0


def test_the_smaller_of_two_uneven_groups_steps_once_its_rows_are_in():
    """15 requests round a 2-stage ring are groups of 8 and 7: the 7 must not wait for an 8th
    (which would only come with the other group, making the stages take turns)."""
    b = Batcher()
    for r in range(1, 8):
        j = _job(r, 1)
        j.ready_at = 10.0 + r * 0.0005  # a burst, sent together by the previous stage
        b.submit(j)
    settled = b.wait_s(running=15, now=10.004, max_wait_s=1.0, stages=2)
    assert 0.0 < settled <= 0.005  # just after its last row: the rest of the burst may be coming
    assert b.wait_s(running=15, now=10.004 + settled, max_wait_s=1.0, stages=2) == 0.0
    assert len(b.plan(running=15, stages=2)) == 7
    assert b.wait_s(running=17, now=10.01, max_wait_s=1.0, stages=2) > 0.5  # 7 of 8 or 9: wait



def test_a_later_stage_takes_a_burst_of_prompts_in_one_step():
    """The input stage sends every prompt of one step back to back: a later stage waits for the
    burst (`SETTLE_S` after its newest job), the first stage (prompts come from gateways, each
    on its own) does not, and a burst that never ends cannot hold a prompt past `max_wait_s`."""
    b = Batcher()
    for r in range(1, 4):
        j = _job(r, 60)
        j.ready_at = 10.0 + r * 0.001
        b.submit(j)
    assert b.wait_s(running=3, now=10.003, max_wait_s=1.0, stages=2) == 0.0
    settled = b.wait_s(running=3, now=10.004, max_wait_s=1.0, stages=2, bursts=True)
    assert 0.0 < settled < SETTLE_S  # SETTLE_S after the newest prompt
    assert b.wait_s(running=3, now=10.004 + settled, max_wait_s=1.0, stages=2, bursts=True) == 0.0
    assert len(b.plan(running=3, stages=2)) == 3
    late = _job(9, 60)
    late.ready_at = 11.5  # rows kept trickling in: the oldest prompt has waited long enough
    b.submit(late)
    assert b.wait_s(running=4, now=11.5, max_wait_s=1.0, stages=2, bursts=True) == 0.0
    b.drop(late.rid)
    late.ready_at = 10.0 + BURST_MAX_S  # a burst that goes on: BURST_MAX_S after its oldest row
    b.submit(late)
    assert b.wait_s(running=4, now=10.0 + BURST_MAX_S, max_wait_s=1.0, stages=2,
                    bursts=True) == pytest.approx(0.001)

# ── admission under a random mix of sizes and cancellations ──────────────────────────────────
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 12), st.booleans()),
                      min_size=2, max_size=6),
       budget_positions=st.integers(60, 160))
def test_admission_never_exceeds_the_budget_and_every_uncancelled_request_completes(
        in_process_pipeline, tiny_llama, sizes, budget_positions):
    async def body():
        probe = BatchedExecutor(load_shard(tiny_llama, 3, 8))
        budget = probe.kv_bytes_per_token * budget_positions
        p = await in_process_pipeline([(0, 3), (3, 8)], kv_budget_bytes=budget).start()
        violations: list[str] = []

        async def watch():  # samples both stages' books while requests run, queue and cancel
            while True:
                for srv in p.servers:
                    reserved = srv.sessions.kv_reserved
                    held = sum(s.cache.bytes_held for s in srv.executor.sessions.values())
                    if reserved > srv.sessions.kv_budget_bytes or held > reserved:
                        violations.append(f"{srv.layers}: held {held}, reserved {reserved}, "
                                          f"budget {srv.sessions.kv_budget_bytes}")
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        client = p.client()
        try:
            tasks = []
            for k, (plen, n, cancel) in enumerate(sizes):
                if plen + n > budget_positions:
                    n = max(1, budget_positions - plen)  # a request that can never fit is refused
                prompt = [(7 * k + i) % 200 + 3 for i in range(plen)]
                req = p.request(len(prompt), n)
                t = asyncio.create_task(client.generate(req, prompt, step_timeout_s=30))
                tasks.append((t, prompt, n, cancel))
            for t, _, _, cancel in tasks:
                if cancel:
                    await asyncio.sleep(0.01)
                    t.cancel()
            for t, prompt, n, cancel in tasks:
                if cancel:  # cancelled, or already finished when the cancellation came
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
                    continue
                gen = await t
                ref = _reference(tiny_llama, (0, 3, 8), prompt, n)
                assert gen.tokens == ref.tokens
            for _ in range(200):  # cancellations reach the stages asynchronously
                if all(not srv.sessions.sessions and not srv.waiting for srv in p.servers):
                    break
                await asyncio.sleep(0.01)
            for srv in p.servers:
                assert srv.sessions.sessions == {} and srv.sessions.kv_reserved == 0
                assert srv.executor.sessions == {} and not srv.waiting
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await p.stop()
        assert violations == []

    asyncio.run(body())


def test_a_request_cancelled_mid_batch_frees_its_kv_at_once_and_the_others_finish(
        in_process_pipeline, tiny_llama):
    async def body():
        p = await in_process_pipeline([(0, 3), (3, 8)]).start()
        client = p.client()
        try:
            prompts = [list(range(5, 25)), list(range(30, 40)), list(range(50, 70))]
            reqs = [p.request(len(x), 40) for x in prompts]
            seen = asyncio.Event()
            tasks = [asyncio.create_task(client.generate(
                r, x, on_token=(lambda i, _t: seen.set() if i == 3 else None) if k == 1 else None))
                for k, (r, x) in enumerate(zip(reqs, prompts, strict=True))]
            await seen.wait()
            victim = reqs[1].rid
            assert all(victim in srv.sessions.sessions for srv in p.servers)
            tasks[1].cancel()
            for _ in range(200):
                if all(victim not in srv.executor.sessions for srv in p.servers):
                    break
                await asyncio.sleep(0.005)
            for srv in p.servers:
                assert victim not in srv.executor.sessions and victim not in srv.sessions.sessions
                assert srv.batcher.get(victim) is None
                assert srv.sessions.kv_reserved == sum(
                    s.kv_reserved for s in srv.sessions.sessions.values())
            for k in (0, 2):
                gen = await tasks[k]
                assert gen.tokens == _reference(tiny_llama, (0, 3, 8), prompts[k], 40).tokens
            assert max(srv.max_batch for srv in p.servers) >= 2  # they really shared steps
        finally:
            await p.stop()

    asyncio.run(body())


def test_a_full_stage_queues_requests_instead_of_refusing_them(in_process_pipeline, tiny_llama):
    async def body():
        per_token = BatchedExecutor(load_shard(tiny_llama, 3, 8)).kv_bytes_per_token
        # room for one 30-position request at a time on the larger stage
        p = await in_process_pipeline([(0, 3), (3, 8)], kv_budget_bytes=per_token * 45).start()
        client = p.client()
        try:
            prompts = [list(range(10 + k, 30 + k)) for k in range(4)]
            gens = await asyncio.gather(*(client.generate(p.request(20, 10), x) for x in prompts))
            for x, g in zip(prompts, gens, strict=True):
                assert g.tokens == _reference(tiny_llama, (0, 3, 8), x, 10).tokens
        finally:
            await p.stop()

    asyncio.run(body())
