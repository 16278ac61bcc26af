"""Stateful fuzzing of the Verification game (hypothesis + titanoboa): random stages cheat or not,
random committee members behave honestly, lazily, falsely or go silent; the handler keeps its own
books and checks after every step that no slash exceeds what a node held, every node's stake plus
its slashes stays what it put in, no reward or refund is paid twice, rewards are exactly the
peer-prediction rule's, and Payments' coin balance still equals its books."""

from __future__ import annotations

import boa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from contracts.verification import TaskStatus

from .boa_helpers import ETH
from .verification_game import PARAMS, Game, Plan

BEHAVIOURS = st.sampled_from(
    ["honest", "honest", "lazy_copy", "garbage_pass", "accuse", "silent", "no_reveal", "no_open"]
)
EXTRA_STAKE = 5 * ETH


class VerificationGame(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.g = Game(nodes=14)
        s = self.g.s
        for owner in s.owners:
            with boa.env.prank(owner):
                s.reg.add_stake(value=EXTRA_STAKE)
        self.put_in = {o: ETH + EXTRA_STAKE for o in s.owners}
        self.paid = {o: 0 for o in s.owners}  # rewards we expect each owner to hold
        self.refunded: set[int] = set()
        self.tasks: list[int] = []
        self.client_deposit = s.pay.deposits(self.g.client)

    @rule(
        cheat=st.booleans(),
        b=st.lists(BEHAVIOURS, min_size=3, max_size=3),
        b2=st.lists(BEHAVIOURS, min_size=6, max_size=6),
    )
    def play_a_task(self, cheat, b, b2) -> None:
        g = self.g
        req = g.settle(cheat_stages=(0, 1) if cheat else ())
        self.client_deposit -= req.charge
        tid = g.open_task(req)
        self.tasks.append(tid)
        g.play_round(tid, req, Plan(cheat=cheat, behaviours=dict(enumerate(b))))
        pool = g.s.pay.verifier_pool()
        g.ver.finalize(tid)
        if TaskStatus(g.ver.tasks(tid).status) is TaskStatus.VOTING:
            g.play_round(tid, req, Plan(cheat=cheat, behaviours=dict(enumerate(b2))))
            pool = g.s.pay.verifier_pool()
            g.ver.finalize(tid)
        status = TaskStatus(g.ver.tasks(tid).status)
        assert status in (TaskStatus.PASSED, TaskStatus.FRAUD, TaskStatus.UNRESOLVED)
        self._expect_rewards(tid, pool)
        if status is TaskStatus.FRAUD:
            g.ver.refund_client(tid, req.proof)
            self.client_deposit += req.charge
            self.refunded.add(tid)
        self.req = req

    def _expect_rewards(self, tid: int, pool_before: int) -> None:
        """Mirror the peer-prediction rule from the members' revealed state."""
        g = self.g
        members = [g.ver.member(tid, op) for op in g.ver.committee(tid)]
        scored = [m for m in members if m.revealed and not m.slashed]
        status = TaskStatus(g.ver.tasks(tid).status)
        pool = pool_before
        for m in scored:
            agreeing = sum(1 for p in scored if p is not m and p.verdict == m.verdict)
            if len(scored) > 1:
                amount = PARAMS.verifier_reward_wei * agreeing // (len(scored) - 1)
            else:
                amount = (
                    PARAMS.verifier_reward_wei
                    if (
                        status is not TaskStatus.UNRESOLVED
                        and m.verdict == (status is TaskStatus.PASSED)
                    )
                    else 0
                )
            amount = min(amount, pool)
            pool -= amount
            self.paid[m.owner] += amount
        assert g.s.pay.verifier_pool() == pool

    @rule()
    def refunds_and_finalization_happen_once(self) -> None:
        g = self.g
        for tid in self.tasks:
            with boa.reverts():
                g.ver.finalize(tid)
            if tid in self.refunded:
                with boa.reverts("verification: no fraud to refund"):
                    g.ver.refund_client(tid, self.req.proof)

    @invariant()
    def slashes_never_exceed_what_a_node_put_in(self) -> None:
        if not hasattr(self, "g"):
            return
        reg = self.g.s.reg
        for owner, put_in in self.put_in.items():
            n = reg.nodes(owner)
            assert n.slashed_total <= put_in
            assert n.stake + n.unbonding + n.slashed_total == put_in

    @invariant()
    def rewards_and_refunds_are_paid_once(self) -> None:
        if not hasattr(self, "g"):
            return
        s = self.g.s
        for owner in s.owners[2:]:  # the pipeline's two owners also earn from releases
            assert s.pay.balances(owner) == self.paid[owner]
        assert s.pay.deposits(self.g.client) == self.client_deposit
        books = (
            s.pay.total_deposits()
            + s.pay.total_balances()
            + s.pay.total_escrow()
            + s.pay.verifier_pool()
        )
        assert boa.env.get_balance(s.pay.address) == books


VerificationGame.TestCase.settings = settings(
    max_examples=10,
    stateful_step_count=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_the_verification_game_keeps_its_books = VerificationGame.TestCase
