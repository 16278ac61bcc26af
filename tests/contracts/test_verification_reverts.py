"""Verification revert paths (titanoboa): every assert of the contract is reached with the input
that should trip it, and its module-prefixed reason is checked."""

from __future__ import annotations

import os
from dataclasses import replace

import boa
import pytest

from contracts.verification import Opening, VerdictKind
from contracts.verification import verdict_commitment as _vc
from tests.support.boa import funded, mine
from tests.support.game import HIDDEN, PARAMS, WINDOW, Game, _leaf


@pytest.fixture(scope="module")
def g():
    return Game()


def voting_task(g):
    req = g.settle()
    return req, g.open_task(req)


def open_args(g, req, signature=None):
    sig = g.signature(req, g.chosen_stage(req)) if signature is None else signature
    return (_leaf(req.leaf), req.proof, [req.pipeline.as_tuple()],
            [sc.as_tuple() for sc in req.stage_commits], sig)


def vc(tid, op, verdict, root, salt, leaf=(0, 0)):
    kind = int(VerdictKind.PASS if verdict is True else VerdictKind.FAIL if verdict is False
               else verdict)
    return _vc(tid, op, kind, root, leaf[0], leaf[1], salt)


def reveal(g, tid, verdict, root, salt, leaf=(0, 0)):
    kind = int(VerdictKind.PASS if verdict is True else VerdictKind.FAIL if verdict is False
               else verdict)
    g.ver.reveal_verdict(tid, kind, root, leaf[0], leaf[1], salt)


# ---------------------------------------------------------------- admin


@pytest.mark.parametrize(
    "change",
    [
        {"sample_bps": 10_001},
        {"committee_size": 0},
        {"committee_size": 17},
        {"max_rounds": 0},
        {"max_rounds": 4},
        {"reveal_blocks": 0},
        {"randomness_delay": 0},
        {"spot_chunks": 5},
        {"max_bad": 32},
        {"open_task_blocks": 0},
        {"seat_stake_wei": 0},
        {"suspect_threshold": 0},
    ],
)
def test_set_params_rejects_out_of_range_values(g, change):
    with boa.env.prank(g.s.admin), boa.reverts("verification: params out of range"):
        g.ver.set_params(replace(PARAMS, **change).as_tuple())
    with pytest.raises(Exception, match="must be"):
        replace(PARAMS, **change).validate()


def test_params_must_fit_the_window_and_the_unbonding_period(g):
    with boa.env.prank(g.s.admin), boa.reverts("verification: window too short to open tasks"):
        g.ver.set_params(replace(PARAMS, open_task_blocks=WINDOW).as_tuple())
    with boa.env.prank(g.s.admin), boa.reverts("verification: unbonding < window + task lifetime"):
        g.ver.set_params(replace(PARAMS, commit_blocks=100).as_tuple())


def test_only_the_owner_sets_params_and_they_wait_for_the_timelock():
    slow = Game(timelock=20)
    with boa.env.prank(funded()), boa.reverts("ownable: caller is not the owner"):
        slow.ver.set_params(PARAMS.as_tuple())
    with boa.env.prank(funded()), boa.reverts("ownable: caller is not the owner"):
        slow.ver.queue(b"\x01" * 32)
    new = replace(PARAMS, sample_bps=5_000)
    with boa.env.prank(slow.s.admin), boa.reverts("timelock: operation not queued"):
        slow.ver.set_params(new.as_tuple())
    with boa.env.prank(slow.s.admin):
        slow.ver.queue(slow.ver.params_op(new.as_tuple()) if hasattr(slow.ver, "params_op")
                       else _params_op(new))
        with boa.reverts("timelock: already queued"):
            slow.ver.queue(_params_op(new))
        with boa.reverts("timelock: delay not over"):
            slow.ver.set_params(new.as_tuple())
    mine(21)
    with boa.env.prank(slow.s.admin):
        slow.ver.set_params(new.as_tuple())
    assert slow.ver.params().sample_bps == 5_000


def _params_op(p) -> bytes:
    from eth_abi import encode
    from eth_utils import keccak

    from contracts.verification import PARAMS_TYPE

    return keccak(encode([PARAMS_TYPE], [p.as_tuple()]))


# ---------------------------------------------------------------- open_task


def test_open_task_rejects_unknown_released_and_duplicate_requests(g):
    req = g.settle()
    with boa.reverts("randomness: block not final yet"):
        g.opener.open_task(req.batch_id, _leaf(req.leaf), req.proof, [g.pipeline.as_tuple()],
                           [sc.as_tuple() for sc in req.stage_commits], b"")
    args = open_args(g, req)
    with boa.reverts("opener: unknown batch"):
        g.opener.open_task(999, *args)
    g.opener.open_task(req.batch_id, *args)
    with boa.reverts("opener: task already open"):
        g.opener.open_task(req.batch_id, *args)
    other = g.settle()
    mine(WINDOW + 1)
    g.s.pay.release(other.batch_id, [g.pipeline.as_tuple()])
    with boa.reverts("opener: batch already released"):
        g.opener.open_task(other.batch_id, *open_args(g, other, signature=b""))
    with boa.reverts("verification: caller is not the task opener"):
        g.ver.start_task(1, _leaf(req.leaf), 0, g.gateway, 0, 1, (b"\x01" * 32, 1, 1, 1),
                         g.gateway, (b"\x01" * 32, 1, 1, 1), b"\x00" * 32, g.gateway, 1, "", g.gateway, 0)


def test_open_task_rejects_bad_proofs_pipelines_commitments_and_signatures(g):
    req = g.settle()
    leaf, proof, pipes, sc, sig = open_args(g, req)
    with boa.reverts("opener: record not in batch"):
        g.opener.open_task(req.batch_id, leaf, [b"\x01" * 32], pipes, sc, sig)
    forged = (leaf[0], leaf[1], leaf[2], leaf[3], leaf[4], leaf[5] - 1, leaf[6])
    with boa.reverts("opener: record not in batch"):
        g.opener.open_task(req.batch_id, forged, proof, pipes, sc, sig)
    other = (g.s.model_id, [(g.s.operators[2], 0, 8)])
    with boa.reverts("opener: pipelines do not match batch"):
        g.opener.open_task(req.batch_id, leaf, proof, [other], sc, sig)
    with boa.reverts("opener: one commitment per stage"):
        g.opener.open_task(req.batch_id, leaf, proof, pipes, sc[:1], sig)
    with boa.reverts("opener: stage commitments do not match record"):
        g.opener.open_task(req.batch_id, leaf, proof, pipes, [sc[1], sc[0]], sig)
    with boa.reverts("opener: stage did not sign this commitment"):
        g.opener.open_task(req.batch_id, leaf, proof, pipes, sc, sig[:64] + bytes([sig[64] ^ 1]))
    with boa.reverts("opener: stage did not sign this commitment"):
        g.opener.open_task(req.batch_id, leaf, proof, pipes, sc, b"\x01" * 10)


def test_open_task_rejects_unsampled_requests():
    rare = Game(params=replace(PARAMS, sample_bps=1))
    req = rare.settle()
    mine(2)
    assert not rare.opener.is_sampled(req.batch_id, req.leaf.request_id)
    with boa.reverts("opener: request not sampled"):
        rare.opener.open_task(req.batch_id, *open_args(rare, req, signature=b""))


def test_open_task_needs_an_eligible_verifier():
    small = Game(nodes=2)  # the stage under check and its input: nobody else to ask
    req = small.settle()
    while small.chosen_stage(req) != 1:
        req = small.settle()
    with boa.reverts("verification: no eligible verifier"):
        small.open_task(req, wait=False)


def test_expire_and_next_round_refuse_early_or_closed_tasks(g):
    req, tid = voting_task(g)
    with boa.reverts("verification: deadline not reached"):
        g.ver.expire(tid)
    with boa.reverts("verification: not drawing"):
        g.ver.next_round(tid)
    mine(g.ver.tasks(tid).deadline - boa.env.evm.patch.block_number + 1)
    g.ver.expire(tid)
    with boa.reverts("verification: task closed"):
        g.ver.expire(tid)


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
            reveal(g, tid, True, root, salt)
    with boa.env.prank(m1):
        g.ver.commit_verdict(tid, vc(tid, m1, True, root, salt))
    mine(PARAMS.commit_blocks + 1)
    with boa.env.prank(m0):
        with boa.reverts("verification: reveal does not match commitment"):
            reveal(g, tid, VerdictKind.SUSPECT, root, salt)
        with boa.reverts("verification: reveal does not match commitment"):
            reveal(g, tid, True, root, b"\x23" * 32)
        with boa.reverts("verification: unknown verdict kind"):
            reveal(g, tid, 9, root, salt)
        reveal(g, tid, True, root, salt)
        with boa.reverts("verification: already revealed"):
            reveal(g, tid, True, root, salt)
    with boa.env.prank(m2), boa.reverts("verification: nothing committed"):
        reveal(g, tid, True, root, salt)
    with boa.reverts("verification: reveals still open"):
        g.ver.close_votes(tid)
    mine(PARAMS.reveal_blocks + 1)
    with boa.env.prank(m1), boa.reverts("verification: reveal deadline passed"):
        reveal(g, tid, True, root, salt)
    g.ver.close_votes(tid)
    with boa.env.prank(m1), boa.reverts("verification: not voting"):
        reveal(g, tid, True, root, salt)
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
            reveal(g, tid, True, c.root, salt)
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


def test_a_fail_must_name_a_leaf_inside_the_commitment(g):
    _, tid = voting_task(g)
    m0 = g.round_members(tid)[0]
    root, salt = b"\x11" * 32, b"\x22" * 32
    for leaf in ((5, 0), (0, 3), (6, 65535)):  # positions 0..4, chunks 0..2, tokens 0..5
        with boa.env.anchor():
            with boa.env.prank(m0):
                g.ver.commit_verdict(tid, vc(tid, m0, False, root, salt, leaf))
            mine(PARAMS.commit_blocks + 1)
            with boa.env.prank(m0), boa.reverts("verification: leaf outside the commitment"):
                reveal(g, tid, False, root, salt, leaf)


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
    # SpotCheck.check_openings refuses the opening (the padding rule lives there now)
    with boa.reverts("verification: non-zero chunk padding"):
        g.spot.internal._check_padding(HIDDEN, last, bad.hi, bad.lo)
    good = Opening.from_chunk(o)
    g.spot.internal._check_padding(HIDDEN, last, good.hi, good.lo)
    # d = 40: chunk 1 holds 8 values, so the tail of `hi` is padding too
    vals = [1] * 8 + [0] * 24
    g.spot.internal._check_padding(40, 1, *Opening.from_values(vals, ()).as_tuple()[:2])
    vals[9] = 3
    with boa.reverts("verification: non-zero chunk padding"):
        g.spot.internal._check_padding(40, 1, *Opening.from_values(vals, ()).as_tuple()[:2])


def test_randomness_expires_after_256_blocks(g):
    n = boa.env.evm.patch.block_number
    mine(300)
    with boa.reverts("randomness: block too old"):
        g.rand.value(n)
    g.rand.value(n + 290)  # still among the last 256: readable
