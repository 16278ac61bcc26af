"""Verification revert paths (titanoboa): every assert of the contract is reached with the input
that should trip it, and its module-prefixed reason is checked."""

from __future__ import annotations

import os
from dataclasses import replace

import boa
import pytest

from contracts.batch import Record
from contracts.verification import Opening, commitment_root
from contracts.verification import verdict_commitment as vc
from protocol.messages import StageCommit

from .boa_helpers import funded, mine
from .verification_game import HIDDEN, PARAMS, WINDOW, Game, _leaf


@pytest.fixture(scope="module")
def g():
    return Game()


def voting_task(g):
    req = g.settle()
    return req, g.open_task(req)


def commit_all(g, tid, verdict=True, root=b"\x11" * 32):
    salts = {}
    for op in g.round_members(tid):
        salts[op] = os.urandom(32)
        with boa.env.prank(op):
            g.ver.commit_verdict(tid, vc(tid, op, verdict, root, salts[op]))
    return salts


# ---------------------------------------------------------------- admin


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"sample_bps": 10_001}, "verification: sample rate above 100%"),
        ({"committee_size": 0}, "verification: committee size outside 1..16"),
        ({"committee_size": 17}, "verification: committee size outside 1..16"),
        ({"max_rounds": 0}, "verification: rounds outside 1..3"),
        ({"max_rounds": 4}, "verification: rounds outside 1..3"),
        ({"reveal_blocks": 0}, "verification: zero phase length"),
        ({"randomness_delay": 0}, "verification: randomness delay is zero"),
        ({"spot_chunks": 5}, "verification: spot chunks outside 1..4"),
        ({"max_bad": 32}, "verification: max_bad must be below 32"),
    ],
)
def test_set_params_rejects_out_of_range_values(g, change, reason):
    with boa.env.prank(g.s.admin), boa.reverts(reason):
        g.ver.set_params(replace(PARAMS, **change).as_tuple())


def test_only_the_owner_sets_params_and_randomness(g):
    with boa.env.prank(funded()):
        with boa.reverts("ownable: caller is not the owner"):
            g.ver.set_params(PARAMS.as_tuple())
        with boa.reverts("ownable: caller is not the owner"):
            g.ver.set_randomness(g.rand)
    with boa.env.prank(g.s.admin), boa.reverts("verification: randomness is the zero address"):
        g.ver.set_randomness("0x" + "00" * 20)


# ---------------------------------------------------------------- open_task


def test_open_task_rejects_unknown_released_and_duplicate_requests(g):
    req = g.settle()
    args = (_leaf(req.leaf), req.proof, [g.pipeline.as_tuple()], g.stage_commits(req))
    with boa.reverts("randomness: block not final yet"):
        g.ver.open_task(req.batch_id, *args)
    mine(2)
    with boa.reverts("verification: unknown batch"):
        g.ver.open_task(999, *args)
    g.ver.open_task(req.batch_id, *args)
    with boa.reverts("verification: task already open"):
        g.ver.open_task(req.batch_id, *args)
    other = g.settle()
    mine(WINDOW + 1)
    g.s.pay.release(other.batch_id, [g.pipeline.as_tuple()])
    with boa.reverts("verification: batch already released"):
        g.ver.open_task(
            other.batch_id,
            _leaf(other.leaf),
            other.proof,
            [g.pipeline.as_tuple()],
            g.stage_commits(other),
        )


def test_open_task_rejects_bad_proofs_pipelines_and_commitments(g):
    req = g.settle()
    mine(2)
    leaf, pipes, sc = _leaf(req.leaf), [g.pipeline.as_tuple()], g.stage_commits(req)
    with boa.reverts("verification: record not in batch"):
        g.ver.open_task(req.batch_id, leaf, [b"\x01" * 32], pipes, sc)
    forged = (leaf[0], leaf[1], leaf[2], leaf[3], leaf[4], leaf[5] - 1, leaf[6])
    with boa.reverts("verification: record not in batch"):
        g.ver.open_task(req.batch_id, forged, req.proof, pipes, sc)
    other = (g.s.model_id, [(g.s.operators[2], 0, 8)])
    with boa.reverts("verification: pipelines do not match batch"):
        g.ver.open_task(req.batch_id, leaf, req.proof, [other], sc)
    with boa.reverts("verification: one commitment per stage"):
        g.ver.open_task(req.batch_id, leaf, req.proof, pipes, sc[:1])
    swapped = [sc[1], sc[0]]
    with boa.reverts("verification: stage commitments do not match record"):
        g.ver.open_task(req.batch_id, leaf, req.proof, pipes, swapped)


def test_open_task_rejects_unsampled_requests_and_empty_commitments(g):
    with boa.env.prank(g.s.admin):
        g.ver.set_params(replace(PARAMS, sample_bps=0).as_tuple())
    try:
        req = g.settle()
        mine(2)
        assert not g.ver.is_sampled(req.batch_id, req.leaf.request_id)
        with boa.reverts("verification: request not sampled"):
            g.ver.open_task(
                req.batch_id,
                _leaf(req.leaf),
                req.proof,
                [g.pipeline.as_tuple()],
                g.stage_commits(req),
            )
    finally:
        with boa.env.prank(g.s.admin):
            g.ver.set_params(PARAMS.as_tuple())
    # A stage commitment of no rows: the chosen stage has nothing to check.
    g.seq += 1
    empty = [
        StageCommit(b"\x05" * 32, 0, HIDDEN).as_tuple(),
        StageCommit(b"\x06" * 32, 0, HIDDEN).as_tuple(),
    ]
    record = Record(
        g.seq,
        0,
        0,
        100,
        20,
        100 * 10**9 + 60 * 10**9,
        commitment_root([StageCommit(*e) for e in empty]),
    )
    with boa.env.prank(g.gateway):
        bid = g.s.pay.settle_batch([g.key], [g.pipeline.as_tuple()], [record.as_tuple()])
    mine(2)
    from contracts.batch import leaves_of

    lf = leaves_of(g.s.chain_id, g.s.pay.address, g.gateway, [g.key], [record])[0]
    with boa.reverts("verification: empty stage commitment"):
        g.ver.open_task(bid, _leaf(lf), [], [g.pipeline.as_tuple()], empty)


def test_open_task_needs_an_eligible_verifier():
    small = Game(nodes=2)  # both nodes serve the pipeline
    req = small.settle()
    with boa.reverts("verification: no eligible verifier"):
        small.open_task(req)


# ---------------------------------------------------------------- votes


def test_commit_rejects_strangers_repeats_empty_and_late_commits(g):
    _, tid = voting_task(g)
    op = g.round_members(tid)[0]
    with boa.env.prank(funded()), boa.reverts("verification: caller is not on the committee"):
        g.ver.commit_verdict(tid, b"\x01" * 32)
    with boa.env.prank(op):
        with boa.reverts("verification: empty commitment"):
            g.ver.commit_verdict(tid, b"\x00" * 32)
        g.ver.commit_verdict(tid, b"\x01" * 32)
        with boa.reverts("verification: already committed"):
            g.ver.commit_verdict(tid, b"\x02" * 32)
    with boa.reverts("verification: unknown task"):
        g.ver.commit_verdict(10**6, b"\x01" * 32)
    mine(PARAMS.commit_blocks + 1)
    with (
        boa.env.prank(g.round_members(tid)[1]),
        boa.reverts("verification: commit deadline passed"),
    ):
        g.ver.commit_verdict(tid, b"\x01" * 32)


def test_reveal_rejects_early_wrong_double_and_late_reveals(g):
    _, tid = voting_task(g)
    m0, m1, m2 = g.round_members(tid)
    root, salt = b"\x11" * 32, b"\x22" * 32
    with boa.env.prank(m0):
        g.ver.commit_verdict(tid, vc(tid, m0, True, root, salt))
        with boa.reverts("verification: commits still open"):
            g.ver.reveal_verdict(tid, True, root, salt)
    with boa.env.prank(m1):
        g.ver.commit_verdict(tid, vc(tid, m1, True, root, salt))
    mine(PARAMS.commit_blocks + 1)
    with boa.env.prank(m0):
        with boa.reverts("verification: reveal does not match commitment"):
            g.ver.reveal_verdict(tid, False, root, salt)
        with boa.reverts("verification: reveal does not match commitment"):
            g.ver.reveal_verdict(tid, True, root, b"\x23" * 32)
        g.ver.reveal_verdict(tid, True, root, salt)
        with boa.reverts("verification: already revealed"):
            g.ver.reveal_verdict(tid, True, root, salt)
    with boa.env.prank(m2), boa.reverts("verification: nothing committed"):
        g.ver.reveal_verdict(tid, True, root, salt)
    with boa.reverts("verification: reveals still open"):
        g.ver.close_votes(tid)
    mine(PARAMS.reveal_blocks + 1)
    with boa.env.prank(m1), boa.reverts("verification: reveal deadline passed"):
        g.ver.reveal_verdict(tid, True, root, salt)
    g.ver.close_votes(tid)
    with boa.env.prank(m1), boa.reverts("verification: not voting"):
        g.ver.reveal_verdict(tid, True, root, salt)
    with boa.env.prank(m1), boa.reverts("verification: not voting"):
        g.ver.commit_verdict(tid, root)
    with boa.reverts("verification: not voting"):
        g.ver.close_votes(tid)


# ---------------------------------------------------------------- spot check


def opening_task(g):
    """A task whose three members revealed PASS with honest roots; spots drawable."""
    req = g.settle()
    tid = g.open_task(req)
    t = g.ver.tasks(tid)
    own = {}
    for op in g.round_members(tid):
        own[op] = g.own_commitment(req, t.stage, "honest")
        salt = os.urandom(32)
        with boa.env.prank(op):
            g.ver.commit_verdict(tid, vc(tid, op, True, own[op].root, salt))
        own[op] = (own[op], salt)
    for op, (c, salt) in own.items():
        with boa.env.prank(op):
            g.ver.reveal_verdict(tid, True, c.root, salt)
    with boa.reverts("verification: not opening"):
        g.ver.spot_checks(tid)
    with boa.reverts("verification: not opening"):
        g.ver.finalize(tid)
    g.ver.close_votes(tid)
    with boa.reverts("randomness: block not final yet"):
        g.ver.spot_checks(tid)
    mine(PARAMS.randomness_delay + 1)
    spots = list(zip(*g.ver.spot_checks(tid), strict=True))
    return req, tid, t, {op: c for op, (c, _) in own.items()}, spots


def openings(c, spots):
    return [Opening.from_chunk(c.open_chunk(int(p), int(k))).as_tuple() for p, k in spots]


def test_open_chunks_rejects_bad_openings(g):
    req, tid, t, own, spots = opening_task(g)
    claim = req.commits[t.stage]
    good = openings(claim, spots)
    with boa.reverts("verification: wrong number of openings"):
        g.ver.open_chunks(tid, t.stage_operator, good[:1])
    hi, lo, sib = good[0]
    tampered = [(bytes([hi[0] ^ 1]) + hi[1:], lo, sib)] + good[1:]
    with boa.reverts("verification: opening does not match root"):
        g.ver.open_chunks(tid, t.stage_operator, tampered)
    with boa.reverts("verification: wrong proof length"):
        g.ver.open_chunks(tid, t.stage_operator, [(hi, lo, sib[:-1])] + good[1:])
    with boa.reverts("verification: wrong proof length"):
        g.ver.open_chunks(tid, t.stage_operator, [(hi, lo, [*sib, sib[0]])] + good[1:])
    stranger = funded()
    with boa.reverts("verification: party has no revealed verdict"):
        g.ver.open_chunks(tid, stranger, good)
    g.ver.open_chunks(tid, t.stage_operator, good)
    with boa.reverts("verification: already opened"):
        g.ver.open_chunks(tid, t.stage_operator, good)
    m0 = g.round_members(tid)[0]
    with boa.reverts("verification: opening does not match root"):
        # Chunks the draw did not pick, each of the same kind (full / the partial last one), so the
        # revert is the root check and not the last chunk's padding rule.
        moved = [(int(p_), 1 - int(k)) if int(k) < 2 else ((int(p_) + 1) % t.commit[1], 2)
                 for p_, k in spots]
        g.ver.open_chunks(tid, m0, openings(own[m0], moved))
    g.ver.open_chunks(tid, m0, openings(own[m0], spots))
    with boa.reverts("verification: already opened"):
        g.ver.open_chunks(tid, m0, openings(own[m0], spots))
    with boa.reverts("verification: openings still open"):
        g.ver.finalize(tid)
    mine(PARAMS.open_blocks + 1)
    m1 = g.round_members(tid)[1]
    with boa.reverts("verification: open deadline passed"):
        g.ver.open_chunks(tid, m1, openings(own[m1], spots))
    g.ver.finalize(tid)
    with boa.reverts("verification: not opening"):
        g.ver.open_chunks(tid, m1, openings(own[m1], spots))
    with boa.reverts("verification: no fraud to refund"):
        g.ver.refund_client(tid, req.proof)


def test_padding_of_a_partial_last_chunk_must_be_zero(g):
    req, tid, t, own, spots = opening_task(g)
    last = HIDDEN // 32  # chunk 2 holds values 64..79 in `hi`; `lo` is padding
    # A stage that committed non-zero padding cannot open that chunk.
    from verifier.encoding import Domain
    from verifier.merkle import StageCommitment

    c = StageCommitment.build(Domain(g.s.chain_id, req.leaf.request_id, t.stage), req.rows[t.stage])
    o = c.open_chunk(0, last)
    vals = list(o.values)
    assert vals[16:] == [0] * 16
    vals[20] = 1
    bad = Opening.from_values(vals, o.siblings)
    # the spot-check contract itself has no padding rule; Verification refuses the opening
    with boa.reverts("verification: non-zero chunk padding"):
        g.ver.internal._check_padding(HIDDEN, last, bad.hi, bad.lo)
    good = Opening.from_chunk(o)
    g.ver.internal._check_padding(HIDDEN, last, good.hi, good.lo)
    # d = 40: chunk 1 holds 8 values, so the tail of `hi` is padding too
    vals = [1] * 8 + [0] * 24
    g.ver.internal._check_padding(40, 1, *Opening.from_values(vals, ()).as_tuple()[:2])
    vals[9] = 3
    with boa.reverts("verification: non-zero chunk padding"):
        g.ver.internal._check_padding(40, 1, *Opening.from_values(vals, ()).as_tuple()[:2])


def test_randomness_expires_after_256_blocks(g):
    n = boa.env.evm.patch.block_number
    mine(300)
    with boa.reverts("randomness: block too old"):
        g.rand.value(n)
    g.rand.value(n + 290)  # still among the last 256: readable
