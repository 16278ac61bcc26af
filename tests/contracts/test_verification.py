"""Verification unit tests (titanoboa): the main flows of the game — an honest pass, a cheating
stage slashed and its client refunded, lazy and false verifiers slashed, non-revealers slashed, a
split escalated — and the escrow held while a task is open."""

from __future__ import annotations

from dataclasses import replace

import boa
import pytest

from contracts.verification import TaskStatus

from .boa_helpers import mine
from .verification_game import PARAMS, WINDOW, Game, Plan, _leaf


@pytest.fixture
def g():
    return Game()


def finish(g, task_id):
    g.ver.finalize(task_id)
    return TaskStatus(g.ver.tasks(task_id).status)


def test_honest_stage_passes_and_every_member_earns_the_full_reward(g):
    req = g.settle()
    tid = g.open_task(req)
    members = g.round_members(tid)
    assert len(members) == PARAMS.committee_size
    pool = g.s.pay.verifier_pool()
    stakes = {op: g.stake(op) for op in members}
    g.play_round(tid, req, Plan())
    assert finish(g, tid) is TaskStatus.PASSED
    for op in members:
        assert g.stake(op) == stakes[op]
        assert g.s.pay.balances(g.operator_owner[op]) == PARAMS.verifier_reward_wei
    assert g.s.pay.verifier_pool() == pool - len(members) * PARAMS.verifier_reward_wei
    assert g.ver.open_tasks(req.batch_id) == 0


def test_cheating_stage_is_slashed_and_its_client_refunded(g):
    req = g.settle(cheat_stages=(0, 1))
    tid = g.open_task(req)
    t = g.ver.tasks(tid)
    members = g.round_members(tid)
    stage_stake = g.stake(t.stage_operator)
    deposit = g.s.pay.deposits(g.client)
    g.play_round(tid, req, Plan(cheat=True))
    assert finish(g, tid) is TaskStatus.FRAUD
    assert g.stake(t.stage_operator) == stage_stake - PARAMS.stage_slash_wei
    # Each accuser proved a third of the fault and is credited its prover share of that third.
    share = g.s.reg.prover_share_bps()
    part = PARAMS.stage_slash_wei // 3
    parts = [part, part, PARAMS.stage_slash_wei - 2 * part]  # the last takes the rounding dust
    for op, amount in zip(members, parts, strict=True):
        assert g.s.reg.credits(g.operator_owner[op]) == amount * share // 10_000
    # The batch stays escrowed until the refund, which happens once.
    mine(WINDOW + 1)
    with boa.reverts("payments: verification still open"):
        g.s.pay.release(req.batch_id, [g.pipeline.as_tuple()])
    g.ver.refund_client(tid, req.proof)
    assert g.s.pay.deposits(g.client) == deposit + req.charge
    assert TaskStatus(g.ver.tasks(tid).status) is TaskStatus.REFUNDED
    with boa.reverts("verification: no fraud to refund"):
        g.ver.refund_client(tid, req.proof)
    g.s.pay.release(req.batch_id, [g.pipeline.as_tuple()])


def test_verifier_whose_pass_contradicts_its_own_evidence_is_slashed(g):
    req = g.settle()
    tid = g.open_task(req)
    lazy = g.round_members(tid)[0]
    before = g.stake(lazy)
    g.play_round(tid, req, Plan(behaviours={0: "garbage_pass"}))
    assert finish(g, tid) is TaskStatus.PASSED
    assert g.stake(lazy) == before - PARAMS.verifier_slash_wei
    m = g.ver.member(tid, lazy)
    assert m.slashed and not m.agrees
    assert g.s.pay.balances(g.operator_owner[lazy]) == 0


def test_lazy_copier_who_vouches_for_a_cheat_is_slashed_after_escalation(g):
    req = g.settle(cheat_stages=(0, 1))
    tid = g.open_task(req)
    lazy = g.round_members(tid)[0]
    before = g.stake(lazy)
    g.play_round(tid, req, Plan(cheat=True, behaviours={0: "lazy_copy"}))
    g.ver.finalize(tid)
    t = g.ver.tasks(tid)
    assert (TaskStatus(t.status), t.outcome_round) == (TaskStatus.VOTING, 1)
    assert len(g.round_members(tid)) == 2 * PARAMS.committee_size
    g.play_round(tid, req, Plan(cheat=True))
    assert finish(g, tid) is TaskStatus.FRAUD
    assert g.stake(lazy) == before - PARAMS.verifier_slash_wei
    assert g.s.pay.balances(g.operator_owner[lazy]) == 0


def test_always_accusing_verifier_is_slashed_and_the_honest_stage_passes(g):
    req = g.settle()
    tid = g.open_task(req)
    accuser = g.round_members(tid)[2]
    before = g.stake(accuser)
    g.play_round(tid, req, Plan(behaviours={2: "accuse"}))
    # Its evidence disagrees with the stage, so the accusation is consistent: a split.
    g.ver.finalize(tid)
    assert g.ver.tasks(tid).outcome_round == 1
    g.play_round(tid, req, Plan())
    assert finish(g, tid) is TaskStatus.PASSED
    assert g.stake(accuser) == before - PARAMS.verifier_slash_wei


def test_non_revealer_and_silent_member_are_slashed(g):
    req = g.settle()
    tid = g.open_task(req)
    members = g.round_members(tid)
    before = {op: g.stake(op) for op in members}
    g.play_round(tid, req, Plan(behaviours={0: "no_reveal", 1: "silent"}))
    assert finish(g, tid) is TaskStatus.PASSED
    assert g.stake(members[0]) == before[members[0]] - PARAMS.verifier_slash_wei
    assert g.stake(members[1]) == before[members[1]] - PARAMS.verifier_slash_wei
    assert g.stake(members[2]) == before[members[2]]
    # The one scored member has no peers: it is scored against the outcome.
    assert g.s.pay.balances(g.operator_owner[members[2]]) == PARAMS.verifier_reward_wei


def test_member_that_does_not_open_is_slashed(g):
    req = g.settle()
    tid = g.open_task(req)
    quiet = g.round_members(tid)[1]
    before = g.stake(quiet)
    g.play_round(tid, req, Plan(behaviours={1: "no_open"}))
    assert finish(g, tid) is TaskStatus.PASSED
    assert g.stake(quiet) == before - PARAMS.verifier_slash_wei


def test_committee_excludes_the_pipeline_and_draws_distinct_active_nodes(g):
    req = g.settle()
    tid = g.open_task(req)
    members = g.round_members(tid)
    assert len(set(members)) == len(members)
    assert not set(members) & {s.operator for s in g.pipeline.stages}
    assert all(g.s.reg.is_active(op) for op in members)


def test_accusers_whose_evidence_disagrees_do_not_convict_at_once(g):
    req = g.settle(cheat_stages=(0, 1))
    tid = g.open_task(req)
    # Two accusers computed the right rows; the third made its rows up: the accusations do
    # not agree with each other, so the committee escalates instead of convicting.
    g.play_round(tid, req, Plan(cheat=True, behaviours={1: "accuse"}))
    g.ver.finalize(tid)
    assert g.ver.tasks(tid).outcome_round == 1
    g.play_round(tid, req, Plan(cheat=True))
    assert finish(g, tid) is TaskStatus.FRAUD


def test_split_with_nobody_left_to_ask_is_decided_by_the_larger_agreeing_side():
    small = Game(nodes=5)  # two pipeline nodes and exactly one committee of three
    req = small.settle()
    tid = small.open_task(req)
    accuser = small.round_members(tid)[0]
    before = small.stake(accuser)
    small.play_round(tid, req, Plan(behaviours={0: "accuse"}))
    assert finish(small, tid) is TaskStatus.PASSED
    assert small.ver.tasks(tid).outcome_round == 0
    assert small.stake(accuser) == before - PARAMS.verifier_slash_wei


def test_an_even_split_in_the_last_round_is_unresolved_and_slashes_no_stage():
    small = Game(nodes=4)  # two pipeline nodes, a committee of two
    req = small.settle()
    tid = small.open_task(req)
    assert len(small.round_members(tid)) == 2
    stage_op = small.ver.tasks(tid).stage_operator
    stage_stake = small.stake(stage_op)
    small.play_round(tid, req, Plan(behaviours={0: "accuse"}))
    assert finish(small, tid) is TaskStatus.UNRESOLVED
    assert small.stake(stage_op) == stage_stake
    assert small.ver.open_tasks(req.batch_id) == 0


def test_is_sampled_predicts_which_requests_open_task_accepts():
    half = Game(params=replace(PARAMS, sample_bps=5_000))
    seen = set()
    for _ in range(10):
        req = half.settle()
        mine(2)
        sampled = half.ver.is_sampled(req.batch_id, req.leaf.request_id)
        seen.add(sampled)
        args = (_leaf(req.leaf), req.proof, [half.pipeline.as_tuple()], half.stage_commits(req))
        if sampled:
            half.ver.open_task(req.batch_id, *args)
        else:
            with boa.reverts("verification: request not sampled"):
                half.ver.open_task(req.batch_id, *args)
    assert seen == {True, False}
