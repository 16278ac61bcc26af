"""Re-execution through an ordinary StageServer: an honest stage passes, a perturbed one fails, and
the server commits its output root before anything about the check exists; the pool of servers
the agent builds loads a range once for concurrent jobs and never stops one in use."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
import torch
from coincurve import PrivateKey

from node.dataplane.directory import StaticDirectory
from node.verification.errors import RerunError
from node.verification.evidence import check_against_root
from node.verification.rerun import Listener, RerunJob, ServerPool, fetch_all, run_job
from protocol.identity import address_of_key
from tests.support.agent import CHAIN_ID, RANGES, make_server, serve_request
from verifier.profiles import FP32
from verifier.tolerance import judge

WORKERS = [PrivateKey(bytes([k + 1]) * 32) for k in range(2)]
VERIFIER = PrivateKey(b"\x55" * 32)
GATEWAY = PrivateKey(b"\x77" * 32)
PROMPT = [5, 17, 99, 3, 250, 41, 7]


def _directory() -> StaticDirectory:
    return StaticDirectory([address_of_key(k) for k in (*WORKERS, VERIFIER)],
                           [address_of_key(GATEWAY), address_of_key(VERIFIER)])


async def _check(model: Path, tmp: Path, stage: int, perturb: float = 0.0):
    d = _directory()
    workers = [make_server(model, r, k, d, tmp / f"w{j}", perturb=perturb)
               for j, (r, k) in enumerate(zip(RANGES, WORKERS, strict=True))]
    verifier = make_server(model, RANGES[stage], VERIFIER, d, tmp / "v")
    listener = Listener()
    for s in (*workers, verifier):
        await s.start()
    await listener.start()
    try:
        ran = await serve_request(workers, GATEWAY, PROMPT, 5)
        P, rid = ran.positions, ran.request.rid
        sc = [c.commit for c in ran.commits]
        # Inputs: stage 0's tokens, or stage j-1's rows — each proven against its committed root.
        src = 0 if stage == 0 else stage - 1
        w = workers[src]
        rows_in, toks_in = await fetch_all(VERIFIER, CHAIN_ID, w.host, w.port, rid, src, w.layers, P,
                                           256, operator=w.address)
        check_against_root(CHAIN_ID, rid, src, sc[src], rows_in, toks_in)
        seq = toks_in[: sc[0].n_tokens] if stage == 0 else ran.sequence
        x = torch.tensor(seq[:P]) if stage == 0 else rows_in
        res = await run_job(verifier, listener, VERIFIER, RerunJob(CHAIN_ID, rid, stage, tuple(RANGES), x,
                                                                   tuple(seq)), timeout_s=60)
        claimed_rows, claimed_toks = await fetch_all(VERIFIER, CHAIN_ID, workers[stage].host,
                                                     workers[stage].port, rid, stage, RANGES[stage], P, 256)
        claimed = check_against_root(CHAIN_ID, rid, stage, sc[stage], claimed_rows, claimed_toks)
        return ran, res, claimed, judge(claimed_rows, res.rows, FP32)
    finally:
        await listener.stop()
        for s in (*workers, verifier):
            await s.stop()


@pytest.mark.parametrize("stage", [0, 1])
def test_rerun_of_an_honest_stage_passes_and_commits_the_same_shape(tiny_model, tmp_path, stage):
    ran, res, claimed, verdict = asyncio.run(_check(tiny_model, tmp_path, stage))
    sc = ran.commits[stage].commit
    assert verdict.passed, verdict.reasons
    # Same shape as the stage's commitment (the contract proves members' openings against it) ...
    assert res.tree.shape == claimed.shape
    assert (res.tree.shape.positions, res.tree.shape.n_tokens) == (sc.positions, sc.n_tokens)
    # ... but its own root: a prefill is not bit-identical to prefill + decode.
    assert res.root == res.tree.root
    # What the server was sent: an ordinary one-token request, then the gateway's COMMIT question.
    from protocol.frames import Kind

    middle = [Kind.TOKEN] if stage == 0 else [Kind.HIDDEN]
    assert res.sent == [Kind.OPEN, *middle, Kind.COMMIT, Kind.FETCH]


def test_rerun_against_a_perturbed_worker_fails_the_tolerance_test(tiny_model, tmp_path):
    _, _, _, verdict = asyncio.run(_check(tiny_model, tmp_path, 1, perturb=0.02))
    assert not verdict.passed and verdict.reasons


def test_concurrent_jobs_share_one_loaded_server_and_a_leased_one_is_never_stopped(tiny_model, tmp_path):
    built = []

    def build(layers):
        built.append(layers)
        return make_server(tiny_model, layers, VERIFIER, _directory(), tmp_path / f"r{len(built)}")

    async def refused(srv) -> bool:
        try:
            _, w = await asyncio.open_connection(srv.host, srv.port)
        except OSError:
            return True
        w.close()
        return False

    async def main():
        pool = ServerPool(list, build, keep=1)
        async with contextlib.AsyncExitStack() as leases:
            first = await asyncio.gather(*(leases.enter_async_context(pool.lease(RANGES[0])) for _ in range(3)))
            assert built == [RANGES[0]] and all(s is first[0] for s in first)
            second = await leases.enter_async_context(pool.lease(RANGES[1]))
            # over `keep`, but the first range is in use: both keep running
            assert set(pool.extra) == set(RANGES) and not await refused(first[0])
        assert len(pool.extra) == 1  # released: the idle surplus was stopped
        stopped = second if RANGES[0] in pool.extra else first[0]
        assert await refused(stopped)
        await pool.stop()
        with pytest.raises(RerunError, match="cannot load one"):
            async with ServerPool(list, None).lease(RANGES[0]):
                pass

    asyncio.run(main())
