"""Attacks 4-6 of issue 14: conviction from evidence, not luck. Partial forgeries (one chunk, only
the generated positions, only a token id) are named by the accusers and convicted; a spoiler
accuser loses instead of stalling the task; withheld inputs convict the withholder, not the
verifiers who could not re-execute."""

from __future__ import annotations

import pytest

from contracts.verification import TaskStatus
from tests.support.boa import mine
from tests.support.game import Game, Plan

from .scenario import assert_books, assert_no_honest_loss, release, snapshot


def _other_stages(g: Game, req, stage: int) -> set[str]:
    return {g.operator_owner[s.operator] for j, s in enumerate(req.pipeline.stages) if j != stage}


@pytest.mark.parametrize("forgery", ["chunk", "decode", "tokens"])
def test_a_partial_forgery_is_convicted_and_its_accusers_paid(forgery: str) -> None:
    g = Game()
    req = g.settle(forge={0: forgery, 1: forgery})
    deposit = g.s.pay.deposits(g.client)
    snap = snapshot(g, g.s.owners)
    tid = g.open_task(req)
    cheater = g.operator_owner[g.ver.tasks(tid).stage_operator]
    cheater_before = snap.pop(cheater)
    honest = snap
    members = g.round_members(tid)
    assert g.run(tid, req, Plan(cheat=True)) == TaskStatus.FRAUD
    for op in members:
        assert not g.ver.member(tid, op).slashed  # the honest accusers stand
    release(g, req)
    assert g.worth(cheater) < cheater_before  # convicted: slashed, no pay for the request
    assert g.s.pay.deposits(g.client) == deposit + req.record.charge
    assert g.s.reg.nodes(cheater).jailed_until > 0  # FRAUD jails the stage
    assert_no_honest_loss(g, honest)
    assert_books(g)


def test_a_spoiler_accuser_loses_and_the_honest_stage_is_paid() -> None:
    g = Game()
    req = g.settle()
    tid = g.open_task(req)
    spoiler_op = g.round_members(tid)[0]
    spoiler = g.ver.member(tid, spoiler_op).owner
    honest = snapshot(g, [o for o in g.s.owners if o != spoiler])
    before = g.worth(spoiler)
    assert g.run(tid, req, Plan(behaviours={0: "spoiler"})) == TaskStatus.PASSED
    assert g.ver.member(tid, spoiler_op).slashed
    release(g, req)
    assert g.worth(spoiler) < before
    assert_no_honest_loss(g, honest)
    assert_books(g)


def test_a_spoiler_colluding_with_a_cheat_cannot_save_it() -> None:
    g = Game()
    req = g.settle(forge={0: "rows", 1: "rows"})
    snap = snapshot(g, g.s.owners)
    tid = g.open_task(req)
    cheater = g.operator_owner[g.ver.tasks(tid).stage_operator]
    spoiler_op = g.round_members(tid)[0]
    spoiler = g.ver.member(tid, spoiler_op).owner
    colluders = {cheater, spoiler}
    before = sum(snap.pop(o) for o in colluders)
    honest = snap
    assert g.run(tid, req, Plan(cheat=True, behaviours={0: "spoiler"})) == TaskStatus.FRAUD
    release(g, req)
    assert sum(g.worth(o) for o in colluders) < before
    assert_no_honest_loss(g, honest)


def test_withheld_inputs_convict_the_withholder_not_the_verifiers() -> None:
    g = Game()
    req = g.settle_checked(1)
    withholder = g.operator_owner[req.pipeline.stages[0].operator]
    tid = g.open_task(req, wait=False)
    assert g.ver.tasks(tid).stage == 1
    members = g.round_members(tid)
    owners = [g.ver.member(tid, op).owner for op in members]
    before = {o: g.worth(o) for o in owners}
    w_before = g.worth(withholder)
    plan = Plan(behaviours={i: "no_input" for i in range(len(members))})
    g.play_round(tid, req, plan, open_input=False)  # the withholder opens nothing
    g.finalize(tid)
    for o in owners:
        assert g.worth(o) >= before[o]  # nobody who could not re-execute is slashed
    assert g.worth(withholder) < w_before


@pytest.mark.parametrize("registered", [False, True])
def test_honest_bf16_noise_is_judged_by_the_models_registered_chunk_rule(registered: bool) -> None:
    """Both stages serve honestly in bf16 (6 elements of every chunk 9 scale ulps off what the
    members recompute: another GPU's kernels). The game's default rule (D, K) = (6, 4), fitted to
    fp32-like noise, would convict them; the model's registered rule (a bf16 rule, (12, 7) here,
    `ModelRegistry.set_serving`) is fixed in the task when it opens and judges it: PASSED, nobody
    slashed, the stage paid."""
    g = Game()
    if registered:
        g.register_serving(2, (12, 7))
    req = g.settle(forge={0: "bf16", 1: "bf16"})
    snap = snapshot(g, g.s.owners)
    tid = g.open_task(req)
    want = (1 << 64 | 12 << 8 | 7) if registered else 0
    assert g.ver.tasks(tid).chunk_rule == want
    if registered:
        g.register_serving(1, (1, 2))  # a later registration does not move an open task's rule
        g.rule = (12, 7)
        assert g.ver.tasks(tid).chunk_rule == want
    status = g.run(tid, req, Plan())
    if not registered:  # the misconfiguration the registered rule prevents: an honest stage convicted
        assert status == TaskStatus.FRAUD
        return
    assert status == TaskStatus.PASSED
    assert not any(g.ver.member(tid, op).slashed for op in g.round_members(tid))
    release(g, req)
    assert_no_honest_loss(g, snap)
    assert_books(g)


def test_a_committee_held_by_a_coalition_cannot_frame_an_honest_stage() -> None:
    """Every seat of round 0 is the coalition's: all accuse the honest stage with made-up evidence
    (it outnumbers the stage's at the named leaf, so the leaf is judged bad). Before anything is
    slashed a committee twice as large, drawn from a fresh block, judges again; its honest members'
    evidence agrees with the stage: PASSED, the stage paid, and each framer loses its verifier
    slash. (A coalition must hold both committees: with a stake share f, about f^3 * P(>= 4 of 7).)"""
    g = Game()
    req = g.settle()
    tid = g.open_task(req)
    framers = g.round_members(tid)
    stage_owner = g.operator_owner[g.ver.tasks(tid).stage_operator]
    framer_owners = {g.operator_owner[op] for op in framers}
    snap = snapshot(g, [o for o in g.s.owners if o not in framer_owners])
    before = {op: g.stake(op) for op in framers}
    g.play_round(tid, req, Plan(behaviours={i: "accuse" for i in range(len(framers))}))
    assert g.finalize(tid) == TaskStatus.DRAWING  # a conviction waits for its confirmation
    mine(g.params.randomness_delay + 1)
    g.ver.next_round(tid)
    assert g.run(tid, req, Plan(), rounds=1) == TaskStatus.PASSED  # the larger, fresh committee
    for op in framers:
        assert g.ver.member(tid, op).slashed
        assert g.stake(op) == before[op] - g.params.verifier_slash_wei
    release(g, req)
    assert g.worth(stage_owner) > snap[stage_owner]  # paid for the request, never slashed
    assert_no_honest_loss(g, snap)
    assert_books(g)


def test_half_a_confirming_committee_cannot_save_a_convicted_cheat() -> None:
    """Round 0 convicts a cheat; the confirming committee seats 2 x 3 + 1 = 7. Three of them
    collude with the cheat and copy its claim as their evidence (PASS). With 6 seats that split
    the committee 3 : 3, the final round tied and the cheat walked away UNRESOLVED (and paid); an
    odd committee cannot split evenly: the 4 honest accusers carry the leaf, FRAUD, and the three
    colluders lose their verifier slash."""
    g = Game()
    req = g.settle(forge={0: "rows", 1: "rows"})
    tid = g.open_task(req)
    cheater = g.operator_owner[g.ver.tasks(tid).stage_operator]
    cheater_before = g.worth(cheater)
    g.play_round(tid, req, Plan(cheat=True))
    assert g.finalize(tid) == TaskStatus.DRAWING
    mine(g.params.randomness_delay + 1)
    g.ver.next_round(tid)
    second = g.round_members(tid)
    assert len(second) == 2 * g.params.committee_size + 1
    colluders = second[:3]
    g.play_round(tid, req, Plan(cheat=True, behaviours={0: "lazy_copy", 1: "lazy_copy",
                                                        2: "lazy_copy"}))
    assert g.finalize(tid) == TaskStatus.FRAUD
    for op in colluders:
        assert g.ver.member(tid, op).slashed
    for op in second[3:]:
        assert not g.ver.member(tid, op).slashed
    release(g, req)
    assert g.worth(cheater) < cheater_before
    assert_books(g)


def test_an_input_stage_that_opens_its_spots_but_serves_no_rows_is_slashed() -> None:
    """Data availability: opening a few random spots on chain shows the input stage holds its rows,
    not that it served them. A cheating stage whose input stage (same owner, say) refuses every
    FETCH would otherwise never be judged. A round where NO_INPUT outnumbers the standing verdicts
    decides nothing (the one colluding PASS does not pass the cheat) and escalates; when the last,
    larger round cannot get the rows either, the input stage is slashed although it opened its
    spots, and nobody is paid for the task."""
    g = Game()
    req = g.settle_checked(1, forge={1: "rows"})
    withholder = g.operator_owner[req.pipeline.stages[0].operator]
    tid = g.open_task(req, wait=False)
    assert len(g.round_members(tid)) == 3
    before = g.worth(withholder)
    # round 0: two members cannot get the rows, the third (colluding) vouches for the cheat
    plan = Plan(cheat=True, behaviours={0: "no_input", 1: "no_input", 2: "lazy_copy"})
    g.play_round(tid, req, plan)  # the input stage opens its spots: it has the rows
    assert g.ver.input_opened(tid, 0)
    assert g.finalize(tid) == TaskStatus.DRAWING  # not PASSED on one vouch; nobody slashed yet
    assert g.worth(withholder) == before
    mine(g.params.randomness_delay + 1)
    g.ver.next_round(tid)
    n = len(g.round_members(tid))
    g.play_round(tid, req, Plan(cheat=True, behaviours={i: "no_input" for i in range(n)}))
    assert g.finalize(tid) == TaskStatus.UNRESOLVED
    assert g.worth(withholder) == before - g.params.stage_slash_wei


def test_a_coalition_claiming_no_input_cannot_slash_an_honest_input_stage() -> None:
    """The rule turned around: a coalition holding two of round 0's three seats claims NO_INPUT
    against an honest input stage (and would collect the slash's prover share by finalizing).
    Round 0 decides nothing; the fresh, larger round gets the rows and passes the honest stage;
    the input stage keeps its stake and both stages are paid."""
    g = Game()
    req = g.settle_checked(1)
    honest = snapshot(g, [g.operator_owner[st.operator] for st in req.pipeline.stages])
    tid = g.open_task(req, wait=False)
    g.play_round(tid, req, Plan(behaviours={0: "no_input", 1: "no_input"}))
    assert g.finalize(tid) == TaskStatus.DRAWING
    mine(g.params.randomness_delay + 1)
    g.ver.next_round(tid)
    assert g.run(tid, req, Plan(), rounds=1) == TaskStatus.PASSED
    release(g, req)
    assert_no_honest_loss(g, honest)
    assert_books(g)


def test_one_false_no_input_does_not_slash_an_input_stage_that_opened() -> None:
    g = Game()
    req = g.settle_checked(1)
    input_owner = g.operator_owner[req.pipeline.stages[0].operator]
    tid = g.open_task(req, wait=False)
    before = g.worth(input_owner)
    assert g.run(tid, req, Plan(behaviours={0: "no_input"})) == TaskStatus.PASSED
    assert g.worth(input_owner) >= before
