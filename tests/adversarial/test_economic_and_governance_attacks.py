"""Attacks 11-14 of issue 14: free tasks draining the verifier pool, all-or-nothing settlement,
owner powers without delay, and events an indexer cannot trust."""

from __future__ import annotations

import boa
from eth_abi import encode as abi_encode
from eth_utils import keccak

from contracts.batch import Record
from contracts.verification import SUSPECT_WEIGHT, TaskStatus
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


def _one_stage_game() -> tuple[Game, str, str]:
    """A game whose every record has one stage (the same operator is checked every time)."""
    from contracts.batch import Pipeline, Stage

    g = Game()
    op = g.s.operators[0]
    g.pipeline = Pipeline(g.s.model_id, (Stage(op, 0, 8),))
    return g, op, g.operator_owner[op]


def _judged(g: Game, suspect: bool) -> TaskStatus:
    req = g.settle()
    tid = g.open_task(req)
    n = len(g.round_members(tid))
    return g.run(tid, req, Plan(behaviours={i: "suspect" for i in range(n)}) if suspect else Plan())


def test_suspect_outcomes_jail_past_the_threshold_and_never_slash() -> None:
    """A cheat that only statistical evidence shows (every check SUSPECTED) is jailed after
    `suspect_threshold` outcomes in a row, never slashed; its score restarts after the jail."""
    g, op, owner = _one_stage_game()
    worth = g.worth(owner)
    for i in range(PARAMS.suspect_threshold):
        assert g.s.reg.nodes(owner).jailed_until == 0
        assert _judged(g, suspect=True) == TaskStatus.SUSPECTED
        last = i == PARAMS.suspect_threshold - 1
        assert g.ver.suspects(owner) == (0 if last else SUSPECT_WEIGHT * (i + 1))
    assert g.s.reg.nodes(owner).jailed_until > 0 and not g.s.reg.is_active(op)
    assert g.worth(owner) >= worth  # statistical evidence never slashes


def test_an_honest_operators_rare_suspicions_decay_and_never_jail() -> None:
    """Honest noise: a false suspicion now and then, passes in between. With a lifetime count
    (the old rule) `suspect_threshold` of them would jail an honest operator sooner or later; the
    CUSUM takes one off per PASSED, so one suspicion per SUSPECT_WEIGHT + 1 checks never adds up."""
    g, op, owner = _one_stage_game()
    for _ in range(PARAMS.suspect_threshold):  # as many suspicions as the old count jailed at
        assert _judged(g, suspect=True) == TaskStatus.SUSPECTED
        assert g.ver.suspects(owner) == SUSPECT_WEIGHT
        for _ in range(SUSPECT_WEIGHT):
            assert _judged(g, suspect=False) == TaskStatus.PASSED
        assert g.ver.suspects(owner) == 0
    assert g.s.reg.nodes(owner).jailed_until == 0 and g.s.reg.is_active(op)
    assert _judged(g, suspect=False) == TaskStatus.PASSED and g.ver.suspects(owner) == 0  # floored


def test_the_owner_cannot_move_the_chunk_rule_at_once() -> None:
    """The model's registered chunk rule decides which honest noise passes: tightened at once it
    would convict honest stages (every honest bf16 chunk fails (0, 0)), loosened at once it would
    clear a cheat. It waits out the timelock like every owner power, announced when queued, and
    tasks already opened keep theirs."""
    delay = 50
    g = Game(timelock=delay)
    models, admin, mid = g.s.models, g.s.admin, g.s.model_id
    op = keccak(abi_encode(["uint256", "uint8", "bytes32", "uint256", "uint256"],
                           [mid, 2, b"\x0f" * 32, 0, 0]))
    with boa.env.prank(admin), boa.reverts("timelock: operation not queued"):
        models.set_serving(mid, 2, b"\x0f" * 32, 0, 0)
    req = g.settle()
    tid = g.open_task(req)  # opened under the game's default
    with boa.env.prank(admin):
        models.queue(op)
    with boa.env.prank(admin), boa.reverts("timelock: delay not over"):
        models.set_serving(mid, 2, b"\x0f" * 32, 0, 0)
    mine(delay)
    with boa.env.prank(admin):
        models.set_serving(mid, 2, b"\x0f" * 32, 0, 0)
    assert g.ver.tasks(tid).chunk_rule == 0  # the open task keeps its rule
    assert g.ver.tasks(g.open_task(g.settle())).chunk_rule == 1 << 64  # later ones: (0, 0), announced
