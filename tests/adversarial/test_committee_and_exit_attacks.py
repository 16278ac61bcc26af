"""Attacks 7-10 of issue 14: committee grinding, exit before conviction, escrow locked by a stale
task, and a verifier set capped at 64 registry slots."""

from __future__ import annotations

import boa

from contracts.verification import TaskStatus
from tests.support.boa import ETH, mine
from tests.support.game import PARAMS, UNBONDING, WINDOW, Game, Plan

from .scenario import assert_books, release


def test_stake_moved_after_the_seed_does_not_change_the_committee() -> None:
    """Grinding: the seed is public once the batch's randomness block is mined; topping up,
    unbonding or registering then changes nothing, since seats come from the stake snapshot at
    settlement. The same chain is played twice from the same block, with and without grinding."""
    g = Game()
    req = g.settle()
    mine(2)  # the seed exists now
    seen = []
    for grind in (False, True):
        with boa.env.anchor():
            if grind:
                for owner in g.s.owners[2:6]:  # the opener's own nodes
                    with boa.env.prank(owner):
                        g.s.reg.add_stake(value=50 * ETH)
                with boa.env.prank(g.s.owners[6]):
                    g.s.reg.request_unbond(ETH // 2)  # a tiny unbond to drop out
                g.s.add_node(stake=100 * ETH)  # a fresh node with a huge stake
            tid = g.open_task(req, wait=False)
            seen.append(g.round_members(tid))
    assert seen[0] == seen[1]


def test_a_gateway_cannot_keep_nodes_off_the_committee_by_listing_them() -> None:
    """Only the stage under check and its input stage are excluded, not every listed stage."""
    from contracts.batch import Pipeline, Stage

    g = Game(nodes=6)
    ops = g.s.operators
    pipe = Pipeline(g.s.model_id, tuple(Stage(ops[i], i, i + 1) for i in range(5))
                    + (Stage(ops[5], 5, 8),))
    req = g.settle(pipeline=pipe)
    tid = g.open_task(req)
    stage = g.ver.tasks(tid).stage
    excluded = {ops[stage]} | ({ops[stage - 1]} if stage > 0 else set())
    members = set(g.round_members(tid))
    assert members and not members & excluded
    assert members - excluded  # listed-but-unchecked stages can sit


def test_a_cheater_cannot_withdraw_before_its_conviction() -> None:
    for play in (False, True):
        g = Game()
        req = g.settle(forge={0: "rows", 1: "rows"})
        owners = [g.operator_owner[s.operator] for s in req.pipeline.stages]
        for owner in owners:  # both stages unbond everything at settlement
            with boa.env.prank(owner):
                g.s.reg.request_unbond(ETH)
        tid = g.open_task(req)
        cheater = g.operator_owner[g.ver.tasks(tid).stage_operator]
        if not play:
            mine(UNBONDING + 1)  # the unbonding period is over, the task still open
            with boa.env.prank(cheater), boa.reverts("registry: node is part of an open task"):
                g.s.reg.withdraw()
            g.ver.expire(tid)  # (its rounds' deadlines passed: the hard deadline closes it)
            continue
        # played in time, the cheat is convicted and the slash lands on the unbonding funds
        assert g.run(tid, req, Plan(cheat=True)) == TaskStatus.FRAUD
        assert g.s.reg.nodes(cheater).unbonding == ETH - PARAMS.stage_slash_wei
        mine(UNBONDING + 1)
        with boa.env.prank(cheater):
            g.s.reg.withdraw()  # unlocked once judged: what is left leaves


def test_unbonding_shorter_than_a_task_lifetime_is_refused() -> None:
    g = Game()
    with boa.env.prank(g.s.admin), boa.reverts("registry: unbonding shorter than a task's lifetime"):
        g.s.reg.set_params(ETH, WINDOW + 1, 5_000)
    with boa.env.prank(g.s.admin), boa.reverts("payments: unbonding shorter than window + task lifetime"):
        g.s.pay.set_params(UNBONDING, 500, 1_000, ETH, 1)


def test_an_escalated_task_never_reads_an_expired_block_and_the_deadline_frees_escrow() -> None:
    g = Game()
    req = g.settle()
    tid = g.open_task(req)
    # Round 0: every member silent, nobody opens: the task escalates to a fresh anchor block.
    members = g.round_members(tid)
    g.play_round(tid, req, Plan(behaviours={i: "silent" for i in range(len(members))}),
                 open_stage=False)
    assert g.finalize(tid) == TaskStatus.DRAWING
    mine(300)  # far more than blockhash's 256 blocks: nobody drew the next round
    g.ver.expire(tid)  # past the hard deadline: closed, the batch can be released
    assert g.ver.tasks(tid).status == TaskStatus.UNRESOLVED
    release(g, req)
    assert_books(g)


def test_more_than_64_nodes_can_verify_and_departed_slots_do_not_block() -> None:
    g = Game(nodes=70)
    for owner in g.s.owners[2:66]:  # the first 64 slots unbond (squatters that left)
        with boa.env.prank(owner):
            g.s.reg.request_unbond(ETH)
    mine(1)
    req = g.settle()
    tid = g.open_task(req)
    members = g.round_members(tid)
    allowed = set(g.s.operators[66:]) | {s.operator for s in req.pipeline.stages}
    assert members and set(members) <= allowed
