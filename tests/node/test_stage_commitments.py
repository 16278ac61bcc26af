"""COMMIT / COMMITTED / FETCH / ROWS: the frames, and stages that commit exactly the rows and tokens
the whole model computes locally (so a commitment proves what the stage ran), after the session
closed, to the request's gateway only."""

from __future__ import annotations

import asyncio

import pytest
import torch
from coincurve import PrivateKey

from contracts.verification import attestation_digest
from node.dataplane.hidden_store import HiddenStateStore
from node.dataplane.query import (
    SignedStageCommit,
    commit_all,
    fetch_rows,
    input_relay,
    request_commitment,
)
from node.runtime.executor import StageExecutor, generate_local
from node.runtime.shard import load_shard
from protocol.dataplane_errors import BadMessage, BadSignature, RemoteError
from protocol.frames import (
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
)
from protocol.identity import recover
from protocol.messages import StageCommit
from protocol.rows import parse_rows, rows_body
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
    (lambda: parse_commit(b"\x01\x00\x00"), "COMMIT body must be at least 4 bytes"),
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
    from protocol.identity import address_of_key, sign_digest

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
            commits = await commit_all(p.gateway, p.chain_id, req, P, seq)
            again = await commit_all(p.gateway, p.chain_id, req, P, seq)
            built = [s.stored.commits_built for s in p.servers]
            grown = [s.stored.commits_grown for s in p.servers]
            fetched = [await fetch_rows(p.gateway, p.chain_id, st.host, st.port, req.rid, j,
                                        (st.start, st.end), 0, P, operator=st.operator)
                       for j, st in enumerate(req.stages)]
            return req, gen, commits, again, built, grown, fetched
        finally:
            await p.stop()

    req, gen, commits, again, built, grown, fetched = asyncio.run(main())
    assert gen.tokens == ref.tokens
    assert again == commits and built == [1] * len(ranges)  # repeated COMMITs hit the cache
    assert grown == [1] * len(ranges)  # from the trees grown while the rows were stored
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
            gen = await p.client().generate(req, PROMPT, step_timeout_s=20)
            P = len(PROMPT) + 2
            first = await request_commitment(p.gateway, p.chain_id, req, 0, P)
            relay = input_relay(first, 1, PROMPT + gen.tokens, P)
            errors = {}
            for name, key, stage, positions in [
                ("stranger", PrivateKey(b"\x66" * 32), 1, P),
                ("operator", p.keys[0], 1, P),
                ("too many positions", p.gateway, 1, P + 5),
                ("tokens past the end", p.gateway, 0, P + 1),
            ]:
                with pytest.raises(RemoteError) as e:
                    await request_commitment(key, p.chain_id, req, stage, positions,
                                             relay=relay if stage else None)
                errors[name] = e.value
            ok = await request_commitment(p.gateway, p.chain_id, req, 1, P, relay=relay)  # still serving
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


def test_a_stage_commits_only_on_its_input_stages_commitment_to_the_rows_it_received(
        in_process_pipeline):
    """Stage-level blame, the stage's side (node.dataplane.input_check): COMMIT to stage 1 must
    relay stage 0's signed commitment; stage 1 signs only if that is stage 0's signature over the
    root of the rows it received, and keeps it (the proof if stage 0 ever settles another)."""
    from dataclasses import replace

    from contracts.verification import attestation_digest
    from protocol.frames import InputRelay
    from protocol.identity import sign_digest

    async def main():
        p = await in_process_pipeline([(0, 4), (4, 8)]).start()
        try:
            req = p.request(len(PROMPT), 3)
            gen = await p.client().generate(req, PROMPT, step_timeout_s=20)
            seq = PROMPT + gen.tokens
            P = len(seq) - 1
            sc0, sig0 = await request_commitment(p.gateway, p.chain_id, req, 0, P)
            good = input_relay((sc0, sig0), 1, seq, P)
            other = replace(sc0, root=b"\x42" * 32)  # stage 0 signs a commitment to other rows
            forged = InputRelay(other, sign_digest(p.keys[0], attestation_digest(
                p.chain_id, req.rid, 0, other)), good.tokens)
            stranger = InputRelay(sc0, sign_digest(PrivateKey(b"\x66" * 32), attestation_digest(
                p.chain_id, req.rid, 0, sc0)), good.tokens)
            short = InputRelay(sc0, sig0, good.tokens[:-1])
            errors = {}
            for name, relay in [("none", None), ("other rows", forged), ("stranger", stranger),
                                ("tokens", short)]:
                with pytest.raises(RemoteError) as e:
                    await request_commitment(p.gateway, p.chain_id, req, 1, P, relay=relay)
                errors[name] = e.value
            ok = await request_commitment(p.gateway, p.chain_id, req, 1, P, relay=good)
            srv = p.servers[1]
            kept = srv.sessions.store.input(req.rid, *srv.layers)
            return errors, ok, kept, (sc0, sig0), srv.sessions.inputs.checked
        finally:
            await p.stop()

    errors, ok, kept, first, checked = asyncio.run(main())
    assert errors["none"].code == ErrorCode.BAD_MESSAGE and "must relay" in str(errors["none"])
    assert errors["other rows"].code == ErrorCode.BAD_MESSAGE
    assert "the rows it sent here give" in str(errors["other rows"])
    assert errors["stranger"].code == ErrorCode.BAD_SIGNATURE
    assert errors["tokens"].code == ErrorCode.BAD_MESSAGE and "shape" in str(errors["tokens"])
    assert ok[0].positions == first[0].positions
    assert parse_committed(kept) == first  # the evidence stage 1 keeps
    assert checked == 1


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


# ── commitment trees grown as rows are stored ─────────────────────────────────────────────────
def _commit_root(stored, gateway: PrivateKey, rid: bytes, positions: int) -> StageCommit:
    f = make_frame(gateway, Kind.COMMIT, 31337, rid, 0, 0, 0, commit_body(positions))
    answer = asyncio.run(stored.commit(parse_frame(f.to_bytes()[4:])))
    return parse_committed(answer.body)[0]


def test_a_stage_commits_from_its_grown_tree_through_rewinds_and_rebuilds_it_after_a_restart(
        tiny_llama, tmp_path, monkeypatch):
    from node.dataplane.directory import StaticDirectory
    from node.dataplane.sessions import SessionTable
    from node.dataplane.stored_requests import StoredRequests
    from protocol.identity import address_of_key
    from protocol.messages import PipelineRequest, StageAssignment

    op, gw = PrivateKey(b"\x31" * 32), PrivateKey(b"\x32" * 32)
    ex = StageExecutor(load_shard(tiny_llama, 0, 8))
    store = HiddenStateStore(tmp_path, 10**8, 600, 600)
    table = SessionTable(ex, store, kv_budget_bytes=2**30)
    req = PipelineRequest(chain_id=31337, request_id="0x" + "cd" * 32, gateway=address_of_key(gw),
                          stages=[StageAssignment(operator=address_of_key(op), host="h", port=1,
                                                  start=0, end=8)],
                          prompt_len=len(PROMPT), max_new_tokens=8)
    rid = req.rid
    table.note_open(table.admit(req, b"", b"", 0), PROMPT)
    table.store_rows(rid, 0, ex.forward(rid, torch.tensor(PROMPT), 0).hidden)

    def decode(tokens):
        for tok in tokens:
            p = table.cached(rid)
            table.note_token(rid, p, tok)
            table.store_rows(rid, p, ex.forward(rid, torch.tensor([tok]), p).hidden)

    decode([3, 4, 5])
    table.rewind(rid, len(PROMPT) + 1)  # a re-route resumes earlier, with other tokens
    assert table.leaves.get(rid, Domain(31337, rid, 0), len(PROMPT) + 1) is not None
    decode([6, 7])
    P = len(PROMPT) + 3
    table.note_token(rid, P, 8)
    seq = store.info(rid, 0, 8).tokens
    assert seq == PROMPT + [3, 6, 7, 8]
    stored = StoredRequests(store, op, StaticDirectory([address_of_key(op)]), 31337, (0, 8), 2**20,
                            leaves=table.leaves)
    want = StageCommitment.build(Domain(31337, rid, 0), store.read(rid, 0, 8, 0, P), seq)
    assert _commit_root(stored, gw, rid, P).root == want.root
    assert stored.commits_grown == 1
    monkeypatch.setattr("node.dataplane.stored_requests.INLINE_TOKENS", 0)  # long requests: in a thread
    threaded = StoredRequests(store, op, StaticDirectory([]), 31337, (0, 8), 2**20, leaves=table.leaves)
    assert _commit_root(threaded, gw, rid, P).root == want.root and threaded.commits_grown == 1

    table.close(rid)
    restarted = HiddenStateStore(tmp_path, 10**8, 600, 600)  # trees live in memory only
    fresh = StoredRequests(restarted, op, StaticDirectory([address_of_key(op)]), 31337, (0, 8), 2**20)
    assert rid not in fresh.leaves
    assert _commit_root(fresh, gw, rid, P).root == want.root
    assert fresh.commits_grown == 0 and rid in fresh.leaves  # rebuilt from the rows, then kept
    shorter = StageCommitment.build(Domain(31337, rid, 0), store.read(rid, 0, 8, 0, P - 1), seq[:P])
    assert _commit_root(fresh, gw, rid, P - 1).root == shorter.root
    assert fresh.commits_grown == 1


def test_commit_leaves_drop_trees_they_cannot_trust_and_stay_within_their_byte_budget():
    from node.dataplane.stored_requests import CommitLeaves

    rows = torch.randn(4, 40)
    a, b = b"\x01" * 32, b"\x02" * 32
    dom_a, dom_b = Domain(1, a, 0), Domain(1, b, 0)
    leaves = CommitLeaves()
    leaves.stored(a, dom_a, 40, 2, rows)  # rows before position 2 were never seen
    assert a not in leaves
    leaves.stored(a, dom_a, 40, 0, rows)
    assert leaves.get(a, dom_a, 4) is not None
    assert leaves.get(a, Domain(1, a, 1), 4) is None and leaves.get(a, dom_a, 3) is None
    leaves.stored(a, Domain(1, a, 1), 40, 4, rows)  # re-routed to another stage index
    assert a not in leaves
    leaves.stored(a, dom_a, 40, 0, rows)
    leaves.stored(a, dom_a, 40, 4, torch.full((1, 40), float("nan")))
    assert a not in leaves and leaves.nbytes == 0  # COMMIT rebuilds from the store and says why
    leaves.stored(a, dom_a, 40, 0, rows)
    leaves.rewound(a, 2)
    assert leaves.get(a, dom_a, 2).root(2)[0] == StageCommitment.build(dom_a, rows[:2]).root
    leaves.rewound(a, 3)  # more rows than the tree holds: it cannot be current
    assert a not in leaves

    one = CommitLeaves()
    one.stored(a, dom_a, 40, 0, rows)
    small = CommitLeaves(max_bytes=one.nbytes)
    small.stored(a, dom_a, 40, 0, rows)
    small.stored(b, dom_b, 40, 0, rows)  # the least recently used tree goes
    assert a not in small and b in small and small.nbytes == one.nbytes


def test_rows_are_hashed_after_the_step_yields_and_anything_reading_the_tree_waits_for_them():
    from node.dataplane.stored_requests import CommitLeaves

    rid, dom = b"\x03" * 32, Domain(1, b"\x03" * 32, 2)
    prefill = torch.randn(20, 64)
    decoded = torch.randn(1, 64)

    async def main():
        leaves = CommitLeaves()
        leaves.stored(rid, dom, 64, 0, prefill)
        leaves.stored(rid, dom, 64, len(prefill), decoded)  # queued behind the prefill, in order
        deferred = leaves.nbytes == 0
        await asyncio.sleep(0)  # the loop runs the callback
        settled = leaves.nbytes > 0
        leaves.stored(rid, dom, 64, len(prefill) + 1, prefill)
        acc = leaves.get(rid, dom, 2 * len(prefill) + 1)  # settles what is pending first
        return deferred, settled, acc

    deferred, settled, acc = asyncio.run(main())
    rows = torch.cat([prefill, decoded, prefill])
    assert deferred and settled
    assert acc.root(len(rows))[0] == StageCommitment.build(dom, rows).root



def test_stages_taking_turns_hash_their_rows_before_sending_them_on(tiny_llama, tmp_path):
    """With `micro_batches` 1 (stages sharing cores, taking turns) a step's rows are hashed at
    once, while the next stage waits anyway: deferred, the hashing would run on the cores the
    next stage computes on. Every other setting defers it (the test above)."""
    from node.dataplane.directory import StaticDirectory
    from node.dataplane.hidden_store import HiddenStateStore
    from node.dataplane.server import StageServer
    from node.runtime.executor import StageExecutor
    from node.runtime.shard import load_shard

    rid, dom = b"\x04" * 32, Domain(1, b"\x04" * 32, 0)
    rows = torch.randn(3, 64)

    async def hashed_at_once(mb: int) -> bool:
        store = HiddenStateStore(tmp_path / str(mb), 10**6, 60, 60)
        srv = StageServer(StageExecutor(load_shard(tiny_llama, 0, 2)), store,
                          PrivateKey(b"\x01" * 32), StaticDirectory([], []), 1, micro_batches=mb)
        assert srv.sessions.inputs.leaves.defer == srv.sessions.leaves.defer
        srv.sessions.leaves.stored(rid, dom, 64, 0, rows)
        srv.sessions.hash_stored()  # what the step loop does once a step's rows are all stored
        return srv.sessions.leaves.nbytes > 0  # before the loop got a turn

    assert asyncio.run(hashed_at_once(1))
    assert not asyncio.run(hashed_at_once(0)) and not asyncio.run(hashed_at_once(2))


@pytest.mark.parametrize("micro_batches", [0, 1])
def test_requests_batched_together_each_commit_their_own_rows_from_trees_grown_in_one_pass(
        in_process_pipeline, micro_batches):
    """Every step hashes all its requests' rows in one pass (`verifier.merkle.append_rows`), at
    once (stages taking turns) or deferred to the loop: each request's commitment still comes from
    its own grown tree and equals `build` over the rows it stored, for the rows it received too."""
    prompts = [PROMPT, PROMPT[:5], PROMPT * 2, PROMPT[3:]]

    async def main():
        p = await in_process_pipeline([(0, 3), (3, 8)], micro_batches=micro_batches).start()
        try:
            reqs = [p.request(len(x), NEW) for x in prompts]
            gens = await asyncio.gather(*(p.client().generate(r, x, step_timeout_s=20)
                                          for r, x in zip(reqs, prompts, strict=True)))
            await asyncio.sleep(0.05)
            out = []
            for r, x, g in zip(reqs, prompts, gens, strict=True):
                seq = x + g.tokens
                commits = await commit_all(p.gateway, p.chain_id, r, len(seq) - 1, seq)
                rows = [(await fetch_rows(p.gateway, p.chain_id, st.host, st.port, r.rid, j,
                                          (st.start, st.end), 0, len(seq) - 1,
                                          operator=st.operator))[0]
                        for j, st in enumerate(r.stages)]
                out.append((r, seq, commits, rows))
            return out, [s.stored.commits_grown for s in p.servers], [s.max_batch for s in p.servers]
        finally:
            await p.stop()

    out, grown, max_batch = asyncio.run(main())
    assert max(max_batch) > 1  # the requests did share steps
    assert grown == [len(prompts)] * 2  # every commitment from a grown tree, none rebuilt
    for r, seq, commits, rows in out:
        for j, (c, stage_rows) in enumerate(zip(commits, rows, strict=True)):
            want = StageCommitment.build(Domain(31337, r.rid, j), stage_rows, seq)
            assert c.commit.root == want.root


def test_after_a_failover_every_stage_commits_exactly_the_rows_it_stores(in_process_pipeline):
    """Stage 1 dies mid-generation; a spare rebuilds it from one prefill (its tree grown from that),
    stages 0 and 2 re-sync under a new epoch keeping their trees, and each COMMIT equals `build`
    over what that stage stores. (Rewinds are covered by the SessionTable test above.)"""

    async def main():
        from protocol.identity import address_of_key
        from protocol.messages import PipelineRequest, StageAssignment

        p = await in_process_pipeline([(0, 3), (3, 6), (6, 8), (3, 6)]).start()
        try:
            stages = [StageAssignment(operator=address_of_key(k), host="127.0.0.1", port=s.port,
                                      start=a, end=b)
                      for (a, b), k, s in zip(p.ranges, p.keys, p.servers, strict=True)]
            req = PipelineRequest(chain_id=p.chain_id, request_id="0x" + "5e" * 32,
                                  gateway=address_of_key(p.gateway), stages=stages[:3],
                                  prompt_len=len(PROMPT), max_new_tokens=NEW)
            spare, dead = stages[3], p.servers[1]

            def on_token(i: int, _tok: int) -> None:
                if i == 2:
                    async def kill():
                        await dead.stop()
                        for s in list(dead.sessions.sessions.values()):
                            s.upstream.transport.abort()
                    asyncio.get_running_loop().create_task(kill())

            gen = await p.client().generate(req, PROMPT, replace=lambda k, r: spare,
                                            on_token=on_token, step_timeout_s=5)
            final = gen.request
            P = len(PROMPT) + len(gen.tokens) - 1
            commits = await commit_all(p.gateway, p.chain_id, final, P, PROMPT + gen.tokens)
            want = []
            for j, st in enumerate(final.stages):
                rows, toks = await fetch_rows(p.gateway, p.chain_id, st.host, st.port, final.rid, j,
                                              (st.start, st.end), 0, P)
                tokens = toks[: P + 1] if j in (0, 2) else []
                want.append(StageCommitment.build(Domain(p.chain_id, final.rid, j), rows, tokens).root)
            grown = [s.stored.commits_grown for s in p.servers]
            return gen, commits, want, grown
        finally:
            await p.stop()

    gen, commits, want, grown = asyncio.run(main())
    assert len(gen.handovers) == 1 and gen.handovers[0].stage == 1
    assert [c.commit.root for c in commits] == want
    assert grown == [1, 0, 1, 1]  # the survivors kept growing their trees through the re-sync
