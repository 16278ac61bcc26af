"""The data plane end to end in one process: stage servers on loopback TCP, a signing gateway client.

Exactness: the networked pipeline runs the same executors over the same positions in the same order
as `generate_local`, and hidden rows cross the wire as raw bytes, so tokens and stored rows must be
bit-identical (atol=0).
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from node.runtime.executor import StageExecutor, generate_local
from node.runtime.shard import load_shard
from protocol.dataplane_errors import RemoteError
from protocol.frames import ErrorCode
from protocol.sampling import Sampling

PROMPT = list(range(5, 25))


def reference(model, ranges, n, sampling=None):
    return generate_local([StageExecutor(load_shard(model, a, b)) for a, b in ranges], PROMPT, n,
                          sampling=sampling)


@pytest.mark.parametrize("ranges", [[(0, 8)], [(0, 4), (4, 8)], [(0, 3), (3, 6), (6, 8)]])
def test_networked_pipeline_equals_the_local_reference_and_stores_every_row(
        in_process_pipeline, tiny_llama, ranges):
    ref = reference(tiny_llama, ranges, 10)

    async def main():
        p = await in_process_pipeline(ranges).start()
        try:
            req = p.request(len(PROMPT), 10)
            gen = await p.client().generate(req, PROMPT, step_timeout_s=20)
            await asyncio.sleep(0.05)  # the CLOSE travels down the chain after the last token
            rows = [s.sessions.stored(req.rid, 0, len(PROMPT) + 9) for s in p.servers]
            open_sessions = [len(s.sessions.sessions) for s in p.servers]
            reserved = [s.sessions.kv_reserved for s in p.servers]
            return gen, rows, open_sessions, reserved
        finally:
            await p.stop()

    gen, rows, open_sessions, reserved = asyncio.run(main())
    assert gen.tokens == ref.tokens
    for got, want in zip(rows, ref.stage_hidden, strict=True):
        assert torch.equal(got, want)
    assert open_sessions == [0] * len(ranges)  # freed on finish on every stage
    assert reserved == [0] * len(ranges)


def test_sampled_generation_is_reproducible_from_the_request_seed(in_process_pipeline, tiny_llama):
    ranges = [(0, 4), (4, 8)]
    params = Sampling(temperature=0.8, top_p=0.9, seed=1234)
    ref = reference(tiny_llama, ranges, 12, sampling=params)

    async def main():
        p = await in_process_pipeline(ranges).start()
        try:
            req = p.request(len(PROMPT), 12, sampling=Sampling(temperature=0.8, top_p=0.9, seed=1234))
            return await p.client().generate(req, PROMPT, step_timeout_s=20)
        finally:
            await p.stop()

    assert asyncio.run(main()).tokens == ref.tokens


def test_stop_token_ends_generation_early(in_process_pipeline, tiny_llama):
    ranges = [(0, 4), (4, 8)]
    ref = reference(tiny_llama, ranges, 10)
    stop = ref.tokens[3]

    async def main():
        p = await in_process_pipeline(ranges).start()
        try:
            req = p.request(len(PROMPT), 10, stop_ids=(stop,))
            return await p.client().generate(req, PROMPT, step_timeout_s=20)
        finally:
            await p.stop()

    tokens = asyncio.run(main()).tokens
    assert tokens == ref.tokens[: ref.tokens.index(stop) + 1]


def test_request_over_the_kv_budget_is_refused_quoting_bytes(in_process_pipeline):
    ranges = [(0, 4), (4, 8)]

    async def main():
        # The second stage's budget holds 100 positions; the request needs 20 + 200.
        p = in_process_pipeline(ranges)
        await p.start()
        per_token = p.servers[1].executor.kv_bytes_per_token
        p.servers[1].sessions.kv_budget_bytes = 100 * per_token
        try:
            with pytest.raises(RemoteError) as e:
                await p.client().generate(p.request(len(PROMPT), 200), PROMPT, step_timeout_s=20)
            await asyncio.sleep(0.05)
            return e.value, per_token, [len(s.sessions.sessions) for s in p.servers]
        finally:
            await p.stop()

    err, per_token, open_sessions = asyncio.run(main())
    assert err.code == ErrorCode.NO_CAPACITY and err.stage == 1
    assert f"needs {220 * per_token} bytes" in str(err)
    assert f"only {100 * per_token} of {100 * per_token} bytes are free" in str(err)
    assert open_sessions == [0, 0]  # the gateway's cancel freed stage 0's admitted session


def test_cancel_mid_generation_frees_every_stage(in_process_pipeline):
    ranges = [(0, 3), (3, 6), (6, 8)]

    async def main():
        p = await in_process_pipeline(ranges).start()
        try:
            req = p.request(len(PROMPT), 500)

            def stop_after_three(i, _tok):
                if i == 2:
                    raise KeyboardInterrupt  # the caller walks away: the client sends CLOSE(CANCELLED)

            with pytest.raises(KeyboardInterrupt):
                await p.client().generate(req, PROMPT, step_timeout_s=20, on_token=stop_after_three)
            for _ in range(50):
                await asyncio.sleep(0.02)
                if not any(s.sessions.sessions for s in p.servers):
                    break
            return [len(s.sessions.sessions) for s in p.servers], [s.sessions.kv_reserved for s in p.servers]
        finally:
            await p.stop()

    assert asyncio.run(main()) == ([0, 0, 0], [0, 0, 0])


def test_idle_sessions_are_freed_after_the_timeout(in_process_pipeline):
    from protocol.frames import Kind, make_frame, open_body
    from protocol.identity import sign_digest
    from protocol.messages import encode_request

    async def main():
        p = await in_process_pipeline([(0, 4), (4, 8)], session_timeout_s=0.2).start()
        try:
            req = p.request(len(PROMPT), 50)
            raw = encode_request(req)
            body = open_body(raw, sign_digest(p.gateway, req.digest(raw)), PROMPT)
            # Stage 0's operator opens the request on stage 1, then never sends its rows.
            f = make_frame(p.keys[0], Kind.OPEN, p.chain_id, req.rid, 0, 0, 1, body)
            reader, writer = await asyncio.open_connection("127.0.0.1", p.servers[1].port)
            writer.write(f.to_bytes())
            await asyncio.sleep(0.1)
            opened = len(p.servers[1].sessions.sessions)
            await asyncio.sleep(0.8)
            writer.close()
            return opened, len(p.servers[1].sessions.sessions), p.servers[1].sessions.kv_reserved
        finally:
            await p.stop()

    assert asyncio.run(main()) == (1, 0, 0)


def test_gateway_disconnect_cancels_its_requests_on_every_stage(in_process_pipeline):
    async def main():
        p = await in_process_pipeline([(0, 3), (3, 6), (6, 8)]).start()
        try:
            req = p.request(len(PROMPT), 500)
            reader, writer = await asyncio.open_connection("127.0.0.1", p.servers[0].port)
            p.client()._send_open(writer, req, PROMPT)
            await reader.readexactly(4)  # the first token is on its way: every stage has a session
            opened = [len(s.sessions.sessions) for s in p.servers]
            writer.close()
            for _ in range(100):
                await asyncio.sleep(0.02)
                if not any(s.sessions.sessions for s in p.servers):
                    break
            return opened, [len(s.sessions.sessions) for s in p.servers]
        finally:
            await p.stop()

    opened, later = asyncio.run(main())
    assert opened[0] == 1 and later == [0, 0, 0]


def test_rewinding_a_session_drops_cache_and_stored_rows_and_recomputes_identically(tiny_llama, tmp_path):
    from node.dataplane.hidden_store import HiddenStateStore
    from node.dataplane.sessions import SessionTable
    from protocol.messages import PipelineRequest, StageAssignment

    ex = StageExecutor(load_shard(tiny_llama, 0, 8))
    table = SessionTable(ex, HiddenStateStore(tmp_path, 10**8, 60, 60), kv_budget_bytes=2**30)
    req = PipelineRequest(chain_id=1, request_id="0x" + "ab" * 32, gateway="0x" + "22" * 20,
                          stages=[StageAssignment(operator="0x" + "11" * 20, host="h", port=1,
                                                  start=0, end=8)],
                          prompt_len=len(PROMPT), max_new_tokens=8)
    table.admit(req, b"", b"", 0)
    ids = torch.tensor(PROMPT + [3, 4, 5])
    first = ex.forward(req.rid, ids[: len(PROMPT)], 0)
    table.store_rows(req.rid, 0, first.hidden)
    for p in range(len(PROMPT), len(ids)):
        table.store_rows(req.rid, p, ex.forward(req.rid, ids[p : p + 1], p).hidden)
    before = table.stored(req.rid, 0, len(ids))

    table.rewind(req.rid, len(PROMPT) + 1)
    assert table.cached(req.rid) == len(PROMPT) + 1
    assert table.store.entry(req.rid, 0, 8).rows == len(PROMPT) + 1
    for p in range(len(PROMPT) + 1, len(ids)):
        table.store_rows(req.rid, p, ex.forward(req.rid, ids[p : p + 1], p).hidden)
    assert torch.equal(table.stored(req.rid, 0, len(ids)), before)


def test_a_request_closed_on_a_stage_is_admitted_again_by_a_reroute_and_starts_from_empty(tiny_llama, tmp_path):
    """A stage whose session ended (its upstream died) gets the re-routed OPEN of a higher epoch:
    it re-admits the request with its stored rows dropped, since it recomputes them; the same
    epoch is still refused as a replay."""
    import pytest

    from node.dataplane.hidden_store import HiddenStateStore
    from node.dataplane.sessions import SessionTable
    from protocol.dataplane_errors import Replay
    from protocol.messages import PipelineRequest, StageAssignment

    ex = StageExecutor(load_shard(tiny_llama, 0, 8))
    table = SessionTable(ex, HiddenStateStore(tmp_path, 10**8, 60, 60), kv_budget_bytes=2**30)
    stages = [StageAssignment(operator="0x" + "11" * 20, host="h", port=1, start=0, end=8)]
    req = PipelineRequest(chain_id=1, request_id="0x" + "ac" * 32, gateway="0x" + "22" * 20,
                          stages=stages, prompt_len=len(PROMPT), max_new_tokens=8)
    table.admit(req, b"", b"", 0)
    table.store_rows(req.rid, 0, ex.forward(req.rid, torch.tensor(PROMPT), 0).hidden)
    assert table.close(req.rid)
    with pytest.raises(Replay):
        table.admit(req, b"", b"", 0)
    again = req.model_copy(update={"epoch": 1})
    s = table.admit(again, b"", b"", 0)
    assert s.epoch == 1 and table.cached(req.rid) == 0
    assert table.store.entry(req.rid, 0, 8).rows == 0
    out = ex.forward(req.rid, torch.tensor(PROMPT), 0)
    table.store_rows(req.rid, 0, out.hidden)
    assert torch.equal(table.stored(req.rid, 0, len(PROMPT)), out.hidden)
