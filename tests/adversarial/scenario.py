"""What every adversarial scenario checks at its end, on top of the boa game of
tests/support/game.py: the attacker ends lower than honest play would leave it,
no honest party lower, and nothing stuck (the batch releases; no task is left open)."""

from __future__ import annotations

import boa

from tests.support.boa import mine
from tests.support.game import WINDOW, Game, Request

BURN = "0x000000000000000000000000000000000000dEaD"


def release(g: Game, req: Request) -> None:
    """Release the request's batch once its window is over: nothing may hold it."""
    mine(WINDOW + 2)
    assert g.ver.open_tasks(req.batch_id) == 0, "a task still holds the batch's escrow"
    g.s.pay.release(req.batch_id, [req.pipeline.as_tuple()])
    assert g.s.pay.batches(req.batch_id).pipelines_hash == b"\x00" * 32


def snapshot(g: Game, owners: list[str]) -> dict[str, int]:
    return {o: g.worth(o) for o in owners}


def honest_owners(g: Game, exclude: set[str]) -> list[str]:
    return [o for o in g.s.owners if o not in exclude]


def assert_no_honest_loss(g: Game, before: dict[str, int]) -> None:
    for owner, was in before.items():
        assert g.worth(owner) >= was, f"honest node {owner} lost {was - g.worth(owner)} wei"


def assert_books(g: Game) -> None:
    """Payments and NodeRegistry hold exactly what they owe (funds conserved)."""
    pay, reg = g.s.pay, g.s.reg
    assert boa.env.get_balance(pay.address) == (
        pay.total_deposits() + pay.total_balances() + pay.total_escrow() + pay.verifier_pool()
        + pay.total_bonds()
    )
    assert boa.env.get_balance(reg.address) == (
        reg.total_staked() + reg.total_unbonding() + reg.total_credits()
    )
