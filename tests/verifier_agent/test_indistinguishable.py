"""One handler serves both: a verification job reaches `StageServer._dispatch` as the same frames —
kinds, header fields, body layouts — as an ordinary one-token inference request of the same length,
and the server has answered COMMIT before anything about the check (the claimed rows) is read."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from coincurve import PrivateKey

from node.dataplane.directory import StaticDirectory
from node.dataplane.query import commit_all
from node.verification.rerun import Listener, RerunJob, fetch_all, run_job
from protocol.frames import Kind, parse_close, parse_commit_ask, parse_open, parse_token
from protocol.identity import address_of_key
from protocol.messages import PipelineRequest, StageAssignment
from tests.support.agent import CHAIN_ID, RANGES, make_server, serve_request

WORKERS = [PrivateKey(bytes([k + 1]) * 32) for k in range(2)]
VERIFIER = PrivateKey(b"\x55" * 32)
GATEWAY = PrivateKey(b"\x77" * 32)


def layout(f, d: int) -> tuple:
    """A frame with every value that differs between two requests replaced by its type/shape."""
    head = (f.kind.name, f.stage, f.step, f.epoch, len(f.signature))
    if f.kind == Kind.OPEN:
        ob = parse_open(f.body)
        req = json.loads(ob.raw_request)
        keys = (tuple(sorted(req)), tuple(sorted(req["stages"][0])), tuple(sorted(req["sampling"])))
        shape = (req["prompt_len"], req["max_new_tokens"], req["epoch"], len(req["stages"]),
                 tuple((s["start"], s["end"]) for s in req["stages"]), req["sampling"]["temperature"])
        return (*head, keys, shape, len(ob.gateway_sig), len(ob.tokens))
    if f.kind == Kind.HIDDEN:
        from protocol.rows import parse_hidden

        start, rows = parse_hidden(f.body, d, torch.float32, 10_000)
        return (*head, start, tuple(rows.shape), str(rows.dtype), len(f.body))
    if f.kind == Kind.TOKEN:
        _, pos, done = parse_token(f.body)
        return (*head, pos, done, len(f.body))
    if f.kind == Kind.CLOSE:
        return (*head, parse_close(f.body).name)
    if f.kind == Kind.COMMIT:
        positions, relay = parse_commit_ask(f.body)
        relayed = None if relay is None else (relay.commit.positions, relay.commit.hidden_size,
                                              relay.commit.n_tokens, len(relay.tokens))
        return (*head, positions, relayed, len(f.body))
    return (*head, len(f.body))


def record(server, log: list, phase: dict, tag: str | None = None) -> None:
    """Wrap the server's one dispatch path: every frame it handles is logged (with the test's
    current phase, or a fixed tag) before it runs."""
    inner = server._dispatch

    async def dispatch(f, writer):
        log.append((tag or phase["now"], f))
        await inner(f, writer)

    server._dispatch = dispatch


async def _both(model, tmp, stage: int):
    d = StaticDirectory([address_of_key(k) for k in (*WORKERS, VERIFIER)],
                        [address_of_key(GATEWAY), address_of_key(VERIFIER)])
    workers = [make_server(model, r, k, d, tmp / f"w{j}") for j, (r, k) in enumerate(zip(RANGES, WORKERS,
                                                                                          strict=True))]
    # The server under test: stage `stage` of an inference pipeline, then the verifier's job.
    probe = make_server(model, RANGES[stage], VERIFIER, d, tmp / "probe")
    listener = Listener()
    for s in (*workers, probe):
        await s.start()
    await listener.start()
    log: list = []
    phase = {"now": "inference"}
    try:
        # 1. The original request (5 new tokens) on the workers: what the check is about.
        ran = await serve_request(workers, GATEWAY, [5, 17, 99, 3, 250, 41, 7], 5)
        P, rid = ran.positions, ran.request.rid
        # 2. An ordinary inference request through `probe`: prompt = P tokens, one new token.
        servers = list(workers)
        servers[stage] = probe
        record(probe, log, phase)
        stages = tuple(StageAssignment(operator=s.address, host=s.host, port=s.port, start=s.layers[0],
                                       end=s.layers[1]) for s in servers)
        from node.dataplane.client import PipelineClient

        req = PipelineRequest(chain_id=CHAIN_ID, request_id="0x" + bytes(32 * [9]).hex(),
                              gateway=address_of_key(GATEWAY), stages=stages, prompt_len=P,
                              max_new_tokens=1)
        gen = await PipelineClient(GATEWAY, CHAIN_ID).generate(req, ran.sequence[:P])
        # the gateway asks every stage after a request (each after the first with its input's answer)
        await commit_all(GATEWAY, CHAIN_ID, req, P, [*ran.sequence[:P], *gen.tokens])
        # 3. The verification job of the original request through the same server.
        phase["now"] = "check"
        if stage == 0:
            x = torch.tensor(ran.sequence[:P])
        else:
            w = workers[stage - 1]
            x, _ = await fetch_all(VERIFIER, CHAIN_ID, w.host, w.port, rid, stage - 1, w.layers, P, 256)
        worker = workers[stage]
        record(worker, log, phase, "claimed")
        await run_job(probe, listener, VERIFIER, RerunJob(CHAIN_ID, rid, stage, tuple(RANGES), x,
                                                          tuple(ran.sequence)), timeout_s=60)
        await fetch_all(VERIFIER, CHAIN_ID, worker.host, worker.port, rid, stage, worker.layers, P, 256)
        return log
    finally:
        await listener.stop()
        for s in (*workers, probe):
            await s.stop()


@pytest.mark.parametrize("stage", [0, 1])
def test_a_check_reaches_the_handler_exactly_as_an_inference_prefill(tiny_model, tmp_path, stage):
    log = asyncio.run(_both(tiny_model, tmp_path, stage))
    inference = [layout(f, 256) for tag, f in log if tag == "inference"]
    check = [layout(f, 256) for tag, f in log if tag == "check"]
    kinds = [x[0] for x in inference]
    # Up to and including COMMIT, the two frame sequences are the same in every field but values.
    upto = kinds.index("COMMIT") + 1
    assert inference[:upto] == check[:upto]
    assert kinds[:upto] == (["OPEN", "TOKEN", "COMMIT"] if stage == 0 else ["OPEN", "HIDDEN", "COMMIT"])
    # The check's only other question, FETCH of its own rows, is one the gateway may ask too.
    assert [x[0] for x in check[upto:]] == ["FETCH"]


def test_the_server_commits_before_the_claimed_rows_are_read(tiny_model, tmp_path):
    log = asyncio.run(_both(tiny_model, tmp_path, 1))
    order = [(tag, f.kind.name) for tag, f in log if tag != "inference"]
    committed_at = order.index(("check", "COMMIT"))
    claimed_at = order.index(("claimed", "FETCH"))
    assert committed_at < claimed_at
    # Nothing before the COMMIT tells the server what it is checked against: it never sees the
    # claimed rows, and no frame kind exists for a verdict.
    assert {k for _, k in order[:committed_at]} <= {"OPEN", "HIDDEN", "TOKEN", "CLOSE"}
