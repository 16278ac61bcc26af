"""Attacks 1-3 of issue 14: who may put work on chain. Framing through a self-made gateway,
impossible shapes that slash whole committees, and records paid without verifiable commitments."""

from __future__ import annotations

import boa
import pytest

from contracts.batch import Pipeline, Stage
from contracts.verification import TaskStatus
from tests.support.boa import ETH, funded, keyed, mine
from tests.support.game import GATEWAY_BOND, PARAMS, Game

from .scenario import assert_books, assert_no_honest_loss, honest_owners, release, snapshot


@pytest.fixture
def g() -> Game:
    return Game()


def _self_made_gateway(g: Game) -> tuple[str, bytes]:
    """An attacker that signs an API key naming itself as gateway (and bonds, or it could not
    settle at all)."""
    from contracts.apikeys import create_api_key
    from tests.support.game import _now

    attacker, key = keyed()
    with boa.env.prank(attacker):
        g.s.pay.deposit(value=ETH)
        g.s.pay.bond_gateway(value=GATEWAY_BOND)
    signed = create_api_key(key, attacker, ETH, _now() + 10**6, 1, g.s.chain_id, g.s.pay.address)
    with boa.env.prank(attacker):
        key_hash = g.s.pay.register_key(signed.key.as_tuple(), signed.signature)
    return attacker, key_hash


def test_unbonded_gateway_cannot_settle(g: Game) -> None:
    from contracts.batch import Record

    stranger = funded()
    rec = Record(1, 0, 0, 4, 2, 4 * 10**9 + 6 * 10**9, b"\x01" * 32)
    with boa.env.prank(stranger), boa.reverts("payments: gateway not bonded"):
        g.s.pay.settle_batch([g.key], [g.pipeline.as_tuple()], [rec.as_tuple()])


def test_framing_an_operator_through_a_self_made_gateway_fails_and_costs_the_gateway(g: Game) -> None:
    attacker, key_hash = _self_made_gateway(g)
    victim_op = g.s.operators[5]
    victim = g.operator_owner[victim_op]
    honest = snapshot(g, honest_owners(g, set()))
    bond_before = g.s.pay.gateway_bond(attacker)
    # One made-up stage: the uninvolved operator never signed this commitment.
    pipe = Pipeline(g.s.model_id, (Stage(victim_op, 0, 8),))
    req = g.settle(pipeline=pipe, gateway=attacker, key=key_hash)
    mine(2)
    # The attacker signs the commitment itself: the opener refuses it.
    forged = g.signature(req, 0, signer=g.s.operators[6])
    with boa.reverts("opener: stage did not sign this commitment"):
        g.open_task(req, signature=forged, wait=False)
    with boa.reverts("opener: stage did not sign this commitment"):
        g.open_task(req, signature=b"", wait=False)
    # Nobody can open it: once the time to open is over, anyone voids it against the gateway.
    mine(PARAMS.open_task_blocks + 1)
    watcher = funded()
    tid = g.void_unopened(req, watcher)
    assert g.ver.tasks(tid).status == TaskStatus.VOID
    release(g, req)
    assert g.s.reg.stake_of(victim) == ETH  # the victim is untouched
    assert g.s.pay.gateway_bond(attacker) == bond_before - PARAMS.gateway_slash_wei
    assert g.s.pay.balances(watcher) == PARAMS.gateway_slash_wei // 2
    assert_no_honest_loss(g, honest)
    assert_books(g)


def test_an_impossible_shape_voids_the_record_and_slashes_no_member(g: Game) -> None:
    honest = snapshot(g, g.s.owners)
    bond = g.s.pay.gateway_bond(g.gateway)
    # hidden size near 2**32 (the chunk index would overflow its type): signed by the stage,
    # but not the model's shape.
    req = g.settle(shape={"hidden_size": 2**32 - 1})
    deposit = g.s.pay.deposits(g.client)
    tid = g.open_task(req)
    t = g.ver.tasks(tid)
    assert t.status == TaskStatus.VOID
    assert list(g.ver.committee(tid)) == []  # nobody was seated, nobody can be slashed
    assert g.s.pay.deposits(g.client) == deposit + req.record.charge  # refunded
    assert g.s.pay.gateway_bond(g.gateway) == bond - PARAMS.gateway_slash_wei
    release(g, req)
    assert_no_honest_loss(g, honest)
    assert_books(g)


@pytest.mark.parametrize("shape", [
    {"positions": 10_099},  # 10,100 tokens billed for 5 committed rows (and vice versa)
    {"n_tokens": 0},  # a last stage without its token ids
])
def test_billed_tokens_must_match_the_committed_shape(g: Game, shape: dict[str, int]) -> None:
    req = g.settle(shape=shape)
    tid = g.open_task(req)
    assert g.ver.tasks(tid).status == TaskStatus.VOID
    release(g, req)


def test_a_zero_root_is_refunded_not_paid(g: Game) -> None:
    req = g.settle(forge={0: "zero", 1: "zero"})
    deposit = g.s.pay.deposits(g.client)
    ops_before = [g.s.pay.balances(g.operator_owner[s.operator]) for s in req.pipeline.stages]
    tid = g.open_task(req)
    assert g.ver.tasks(tid).status == TaskStatus.VOID
    release(g, req)
    assert g.s.pay.deposits(g.client) == deposit + req.record.charge
    ops_after = [g.s.pay.balances(g.operator_owner[s.operator]) for s in req.pipeline.stages]
    assert ops_after == ops_before  # the operators are not paid for what nobody can check


def test_an_inactive_stage_is_not_billable(g: Game) -> None:
    op = g.s.operators[1]
    owner = g.operator_owner[op]
    with boa.env.prank(owner):
        g.s.reg.request_unbond(ETH)  # below the minimum: no longer active
    deposit = g.s.pay.deposits(g.client)
    from contracts.batch import Record

    rec = Record(999, 0, 0, 4, 2, 4 * 10**9 + 2 * 3 * 10**9, b"\x01" * 32)
    with boa.env.prank(g.gateway):
        bid = g.s.pay.settle_batch([g.key], [g.pipeline.as_tuple()], [rec.as_tuple()])
    assert bid == 0  # skipped (reported), not charged
    assert g.s.pay.deposits(g.client) == deposit
    assert not g.s.pay.is_settled(g.gateway, 999)
