"""Attacks 11-14 of issue 14: free tasks draining the verifier pool, all-or-nothing settlement,
owner powers without delay, and events an indexer cannot trust."""

from __future__ import annotations

import boa

from contracts.batch import Record
from contracts.verification import TaskStatus
from tests.support.boa import ETH, mine
from tests.support.game import CHARGE, PARAMS, WINDOW, Game, Plan


def test_free_records_cannot_be_settled_and_rewards_come_from_the_record() -> None:
    g = Game()
    free = Record(500, 0, 0, 0, 0, 0, b"\x01" * 32)
    with boa.env.prank(g.gateway):
        assert g.s.pay.settle_batch([g.key], [g.pipeline.as_tuple()], [free.as_tuple()]) == 0
    pool = g.s.pay.verifier_pool()
    req = g.settle()
    tid = g.open_task(req)
    assert g.run(tid, req, Plan()) == TaskStatus.PASSED
    paid = pool - g.s.pay.verifier_pool()
    # what the record's own verification share buys: charge x share / sample rate
    assert 0 < paid <= CHARGE * 1_000 // PARAMS.sample_bps


def test_one_revoked_key_or_rotated_operator_skips_only_its_records() -> None:
    g = Game()
    from contracts.apikeys import create_api_key
    from tests.support.boa import keyed
    from tests.support.game import _now

    other, other_key = keyed()
    with boa.env.prank(other):
        g.s.pay.deposit(value=ETH)
    signed = create_api_key(other_key, g.gateway, ETH, _now() + 10**6, 1, g.s.chain_id,
                            g.s.pay.address)
    with boa.env.prank(g.gateway):
        k2 = g.s.pay.register_key(signed.key.as_tuple(), signed.signature)
    with boa.env.prank(other):
        g.s.pay.revoke_key(1)
    good = Record(700, 0, 0, 4, 2, CHARGE, b"\x01" * 32)
    bad = Record(701, 1, 0, 4, 2, CHARGE, b"\x02" * 32)
    with boa.env.prank(g.gateway):
        bid = g.s.pay.settle_batch([g.key, k2], [g.pipeline.as_tuple()],
                                   [good.as_tuple(), bad.as_tuple()])
    assert bid > 0
    assert g.s.pay.is_settled(g.gateway, 700) and not g.s.pay.is_settled(g.gateway, 701)
    # a rotated hot key makes its pipeline inactive: its records are skipped, not the batch
    with boa.env.prank(g.s.owners[1]):
        g.s.reg.rotate_operator(boa.env.generate_address())
    with boa.env.prank(g.gateway):
        assert g.s.pay.settle_batch([g.key], [g.pipeline.as_tuple()],
                                    [Record(702, 0, 0, 4, 2, CHARGE, b"\x03" * 32).as_tuple()]) == 0


def test_owner_powers_wait_for_the_timelock_and_settled_batches_keep_their_terms() -> None:
    g = Game(timelock=50)
    admin = g.s.admin
    with boa.env.prank(admin), boa.reverts("registry: slasher already set"):
        g.s.reg.set_slasher(admin)
    with boa.env.prank(admin), boa.reverts("payments: roles already set"):
        g.s.pay.set_roles(admin, admin)
    with boa.env.prank(admin), boa.reverts("timelock: operation not queued"):
        g.s.pay.set_params(WINDOW, 5_000, 1_000, ETH, 1)
    req = g.settle()
    op = g.s.pay.params_op(WINDOW, 5_000, 1_000, ETH, 1)
    with boa.env.prank(admin):
        g.s.pay.queue(op)
    with boa.env.prank(admin), boa.reverts("timelock: delay not over"):
        g.s.pay.set_params(WINDOW, 5_000, 1_000, ETH, 1)
    mine(51)
    with boa.env.prank(admin):
        g.s.pay.set_params(WINDOW, 5_000, 1_000, ETH, 1)  # fee raised to 50%
    fee_before = g.s.pay.balances(admin)
    # the batch settled under 5%: its release still pays 5%
    mine(WINDOW + 2)
    tid = g.ver.task_of(req.leaf.request_id)
    assert tid == 0
    g.s.pay.release(req.batch_id, [req.pipeline.as_tuple()])
    assert g.s.pay.balances(admin) - fee_before == CHARGE * 500 // 10_000


def test_jail_events_log_the_effective_term() -> None:
    g = Game()
    req = g.settle(forge={0: "rows", 1: "rows"})
    tid = g.open_task(req)
    stage_op = g.ver.tasks(tid).stage_operator
    cheater = g.operator_owner[stage_op]
    assert g.run(tid, req, Plan(cheat=True)) == TaskStatus.FRAUD
    until = g.s.reg.nodes(cheater).jailed_until
    assert until > 0
    assert not g.s.reg.is_active(stage_op)
    # a shorter jail request logs the term in force, not the one asked for
    with boa.env.prank(g.s.admin):
        g.s.reg.jail(cheater, until - 10, "shorter")
    jailed = [e for e in g.s.reg.get_logs() if type(e).__name__ == "NodeJailed"]
    assert [e.until_block for e in jailed] == [until]


def test_suspect_outcomes_jail_past_the_threshold_and_never_slash() -> None:
    g = Game()
    stage_owner = None
    for _ in range(PARAMS.suspect_threshold):
        req = g.settle()
        tid = g.open_task(req)
        op = g.ver.tasks(tid).stage_operator
        stage_owner = g.operator_owner[op]
        members = g.round_members(tid)
        before = g.worth(stage_owner)
        assert g.run(tid, req, Plan(behaviours={i: "suspect" for i in range(len(members))})) \
            == TaskStatus.SUSPECTED
        assert g.worth(stage_owner) >= before  # statistical evidence never slashes
        if g.s.reg.nodes(stage_owner).jailed_until > 0:
            break
    assert stage_owner is not None
