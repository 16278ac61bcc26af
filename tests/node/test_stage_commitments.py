"""COMMIT / COMMITTED / FETCH / ROWS: the frames, and stages that commit exactly the rows and tokens
the whole model computes locally (so a commitment proves what the stage ran), after the session
closed, to the request's gateway only."""

from __future__ import annotations

import asyncio

import pytest
import torch
from coincurve import PrivateKey

from contracts.verification import StageCommit, attestation_digest
from node.dataplane_errors import BadMessage, BadSignature, RemoteError
from node.executor import StageExecutor, generate_local
from node.hidden_store import HiddenStateStore
from node.protocol import (
    ErrorCode,
    Kind,
    commit_body,
    committed_body,
    fetch_body,
    make_frame,
    parse_commit,
    parse_committed,
    parse_fetch,
    parse_frame,
    parse_rows,
    recover,
    rows_body,
)
from node.shard import load_shard
from node.stage_query import SignedStageCommit, commit_all, fetch_rows, request_commitment
from verifier.encoding import Domain
from verifier.merkle import StageCommitment

PROMPT = list(range(5, 17))
NEW = 6


# ── frames ────────────────────────────────────────────────────────────────────────────────────
def test_commit_and_fetch_bodies_round_trip():
    assert parse_commit(commit_body(17)) == 17
    sc = StageCommit(b"\x11" * 32, 17, 64, 18)
    assert parse_committed(committed_body(sc, b"\x22" * 65)) == (sc, b"\x22" * 65)
    fb = parse_fetch(fetch_body(0, 4, 3, 9))
    assert (fb.layer_start, fb.layer_end, fb.pos_from, fb.pos_to) == (0, 4, 3, 9)
    rows = torch.randn(6, 8)
    start, got, toks = parse_rows(rows_body(3, rows, [1, 2, 3]), d=8)
    assert start == 3 and toks == [1, 2, 3] and torch.equal(got, rows)
    start, got, toks = parse_rows(rows_body(0, torch.empty(0, 8), []), d=8)
    assert got.shape == (0, 8) and toks == []


def test_frames_of_the_new_kinds_survive_the_wire():
    key = PrivateKey(b"\x05" * 32)
    f = make_frame(key, Kind.COMMIT, 31337, b"\x01" * 32, 0, 2, 1, commit_body(9))
    g = parse_frame(f.to_bytes()[4:])
    assert g.kind == Kind.COMMIT and g.stage == 1 and parse_commit(g.body) == 9
    assert g.signer() == f.signer()


@pytest.mark.parametrize("bad, message", [
    (lambda: parse_commit(b"\x01\x00\x00"), "COMMIT body must be 4 bytes"),
    (lambda: parse_commit(b"\x00" * 4), "0 positions"),
    (lambda: parse_committed(b"\x00" * 100), "COMMITTED body must be"),
    (lambda: parse_committed(committed_body(StageCommit(b"\x01" * 32, 0, 8, 0), b"\x00" * 65)),
     "is empty"),
    (lambda: parse_fetch(b"\x00" * 15), "FETCH body must be 16 bytes"),
    (lambda: parse_fetch(fetch_body(0, 4, 0, 1)[:8] + b"\x05\x00\x00\x00\x01\x00\x00\x00"),
     "position range"),
    (lambda: parse_fetch(b"\x04\x00\x00\x00" + b"\x04\x00\x00\x00" + b"\x00" * 8), "layer range"),
    (lambda: parse_rows(b"\x00\x00"), "too short"),
    (lambda: parse_rows(b"\x00" * 4 + b"\xff\x00\x00\x00"), "says 255 tokens"),
    (lambda: parse_rows(rows_body(0, torch.zeros(2, 8), [])[:-3]), "ROWS tensor"),
    (lambda: parse_rows(rows_body(0, torch.zeros(2, 8), []), d=16), "expected shape"),
    (lambda: parse_rows(rows_body(0, torch.zeros(3, 8), []), max_rows=2), "at most 2"),
])
def test_malformed_commit_and_fetch_bodies_are_refused_with_a_reason(bad, message):
    with pytest.raises(BadMessage, match=message):
        bad()


def test_signed_stage_commit_round_trips_json_and_checks_its_attestation():
    key = PrivateKey(b"\x09" * 32)
    from node.protocol import address_of_key, sign_digest

    rid = b"\x42" * 32
    sc = StageCommit(b"\x33" * 32, 10, 64, 11)
    sig = sign_digest(key, attestation_digest(31337, rid, 0, sc))
    ssc = SignedStageCommit(0, address_of_key(key), (0, 4), sc, sig)
    again = SignedStageCommit.from_json(ssc.to_json())
    assert again == ssc
    again.check(31337, rid)
    with pytest.raises(BadSignature, match="not by its operator"):
        SignedStageCommit(1, ssc.operator, (0, 4), sc, sig).check(31337, rid)
    with pytest.raises(BadMessage, match="malformed stage commitment"):
        SignedStageCommit.from_json({**ssc.to_json(), "root": "0x12"})


# ── served by stages ──────────────────────────────────────────────────────────────────────────
def _reference(model, ranges):
    return generate_local([StageExecutor(load_shard(model, a, b)) for a, b in ranges], PROMPT, NEW)


@pytest.mark.parametrize("ranges", [[(0, 8)], [(0, 4), (4, 8)], [(0, 3), (3, 6), (6, 8)]])
def test_stages_commit_the_rows_and_tokens_the_whole_model_computes(in_process_pipeline,
                                                                    tiny_llama, ranges):
    ref = _reference(tiny_llama, ranges)
    seq = PROMPT + ref.tokens
    P = len(seq) - 1

    async def main():
        p = await in_process_pipeline(ranges).start()
        try:
            req = p.request(len(PROMPT), NEW)
            gen = await p.client().generate(req, PROMPT, step_timeout_s=20)
            await asyncio.sleep(0.05)  # every session closes: answers come from the store
            assert all(not s.sessions.sessions for s in p.servers)
            commits = await commit_all(p.gateway, p.chain_id, req, P)
            again = await commit_all(p.gateway, p.chain_id, req, P)
            built = [s.stored.commits_built for s in p.servers]
            fetched = [await fetch_rows(p.gateway, p.chain_id, st.host, st.port, req.rid, j,
                                        (st.start, st.end), 0, P, operator=st.operator)
                       for j, st in enumerate(req.stages)]
            return req, gen, commits, again, built, fetched
        finally:
            await p.stop()

    req, gen, commits, again, built, fetched = asyncio.run(main())
    assert gen.tokens == ref.tokens
    assert again == commits and built == [1] * len(ranges)  # repeated COMMITs hit the cache
    for j, (c, rows) in enumerate(zip(commits, ref.stage_hidden, strict=True)):
        tokens = seq if j in (0, len(ranges) - 1) else []
        want = StageCommitment.build(Domain(31337, req.rid, j), rows[:P], tokens)
        assert c.commit == StageCommit(want.root, P, rows.shape[1], len(tokens))
        assert recover(attestation_digest(31337, req.rid, j, c.commit), c.signature) == c.operator
        got_rows, got_tokens = fetched[j]
        assert torch.equal(got_rows, rows[:P].float())
        assert got_tokens == (seq if j in (0, len(ranges) - 1) else PROMPT)


def test_commit_is_refused_to_anyone_but_the_gateway_and_for_rows_not_held(in_process_pipeline):
    async def main():
        p = await in_process_pipeline([(0, 4), (4, 8)]).start()
        try:
            req = p.request(len(PROMPT), 3)
            await p.client().generate(req, PROMPT, step_timeout_s=20)
            P = len(PROMPT) + 2
            errors = {}
            for name, key, stage, positions in [
                ("stranger", PrivateKey(b"\x66" * 32), 1, P),
                ("operator", p.keys[0], 1, P),
                ("too many positions", p.gateway, 1, P + 5),
                ("tokens past the end", p.gateway, 0, P + 1),
            ]:
                with pytest.raises(RemoteError) as e:
                    await request_commitment(key, p.chain_id, req, stage, positions)
                errors[name] = e.value
            ok = await request_commitment(p.gateway, p.chain_id, req, 1, P)  # still serving
            return errors, ok, P
        finally:
            await p.stop()

    errors, ok, P = asyncio.run(main())
    assert errors["stranger"].code == ErrorCode.BAD_SIGNATURE
    assert "only the request's gateway" in str(errors["stranger"])
    assert errors["operator"].code == ErrorCode.BAD_SIGNATURE
    assert errors["too many positions"].code == ErrorCode.NOT_STORED
    assert "holds rows for [0," in str(errors["too many positions"])
    assert errors["tokens past the end"].code == ErrorCode.NOT_STORED
    assert ok[0].positions == P


def test_fetch_is_open_to_registered_operators_but_not_to_strangers(in_process_pipeline):
    async def main():
        p = await in_process_pipeline([(0, 4), (4, 8)]).start()
        try:
            req = p.request(len(PROMPT), 2)
            await p.client().generate(req, PROMPT, step_timeout_s=20)
            st = req.stages[0]
            rows, toks = await fetch_rows(p.keys[1], p.chain_id, st.host, st.port, req.rid, 0,
                                          (0, 4), 2, 5)
            only_tokens = await fetch_rows(p.gateway, p.chain_id, st.host, st.port, req.rid, 0,
                                           (0, 4), 0, 0)
            errs = []
            for key, layers, stage, span in [(PrivateKey(b"\x66" * 32), (0, 4), 0, (0, 2)),
                                             (p.gateway, (0, 5), 0, (0, 2)),
                                             (p.gateway, (0, 4), 1, (0, 2)),
                                             (p.gateway, (0, 4), 0, (0, 500))]:
                with pytest.raises(RemoteError) as e:
                    await fetch_rows(key, p.chain_id, st.host, st.port, req.rid, stage, layers, *span)
                errs.append(e.value)
            return rows, toks, only_tokens, errs
        finally:
            await p.stop()

    rows, toks, only_tokens, errs = asyncio.run(main())
    assert rows.shape == (3, rows.shape[1]) and rows.dtype == torch.float32
    assert toks[: len(PROMPT)] == PROMPT and len(toks) == len(PROMPT) + 2
    assert only_tokens[0].shape[0] == 0 and only_tokens[1] == toks
    assert [e.code for e in errs] == [ErrorCode.BAD_SIGNATURE, ErrorCode.NOT_STORED,
                                      ErrorCode.NOT_ASSIGNED, ErrorCode.NOT_STORED]


def test_request_info_survives_a_store_restart_and_goes_with_eviction(tmp_path):
    clock = [1000.0]
    store = HiddenStateStore(tmp_path, 10**6, 5.0, 50.0, clock=lambda: clock[0])
    rid = b"\x07" * 32
    store.open(rid, 0, 4, 8, torch.float32, 16)
    store.set_info(rid, 0, 4, "0x" + "ab" * 20, 0, 2, [1, 2, 3])
    assert store.put_token(rid, 0, 4, 3, 9) and store.put_token(rid, 0, 4, 3, 9)
    assert not store.put_token(rid, 0, 4, 7, 1)  # a gap is not recorded
    assert store.put_token(rid, 0, 4, 2, 4)  # a re-routed sequence drops what followed
    again = HiddenStateStore(tmp_path, 10**6, 5.0, 50.0, clock=lambda: clock[0])
    info = again.info(rid, 0, 4)
    assert (info.stage, info.n_stages, info.tokens) == (0, 2, [1, 2, 4])
    assert info.gateway.lower() == "0x" + "ab" * 20
    again.close(rid, 0, 4)
    clock[0] += 10
    assert again.evict_expired() == 1
    assert list(tmp_path.iterdir()) == []
