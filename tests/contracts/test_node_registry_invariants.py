"""Stateful fuzzing of NodeRegistry: money is conserved, slashes are bounded, roles hold.

The handler keeps its own ledger (solmate's BalanceSum pattern) and after every step checks that
the contract's coin balance equals stake + unbonding + credits, that the contract's running
totals equal the ledger, and that a slash never takes more than the node held.
"""

from __future__ import annotations

import boa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.support.boa import ETH, HW, deployer_for, funded, mine

N = 4  # node owners
MIN = ETH
UNBONDING = 5
amounts = st.integers(min_value=1, max_value=5 * ETH)
who = st.integers(min_value=0, max_value=N - 1)


class RegistryMachine(RuleBasedStateMachine):
    @initialize()
    def deploy(self) -> None:
        self.admin, self.slasher, self.stranger = funded(), funded(), funded()
        with boa.env.prank(self.admin):
            self.reg = deployer_for("NodeRegistry").deploy(MIN, UNBONDING, 3_000, 0)
            self.reg.set_slasher(self.slasher)
        self.owners = [funded(100) for _ in range(N)]
        self.operators = [funded(1) for _ in range(N)]
        self.stake = [0] * N
        self.unbonding = [0] * N
        self.ready = [0] * N
        self.registered = [False] * N
        self.credits: dict[str, int] = {}

    def _block(self) -> int:
        return int(boa.env.evm.patch.block_number)

    @rule(i=who, amount=st.integers(min_value=MIN, max_value=5 * ETH))
    def register(self, i: int, amount: int) -> None:
        with boa.env.prank(self.owners[i]):
            if self.registered[i]:
                with boa.reverts("registry: already registered"):
                    self.reg.register(funded(0), "http://n", HW, value=amount)
                return
            self.reg.register(self.operators[i], "http://n", HW, value=amount)
        self.registered[i] = True
        self.stake[i] += amount

    @rule(i=who, amount=amounts)
    def add_stake(self, i: int, amount: int) -> None:
        if not self.registered[i]:
            return
        with boa.env.prank(self.owners[i]):
            self.reg.add_stake(value=amount)
        self.stake[i] += amount

    @rule(i=who, amount=amounts)
    def unbond(self, i: int, amount: int) -> None:
        if not self.registered[i]:
            return
        with boa.env.prank(self.owners[i]):
            if amount > self.stake[i]:
                with boa.reverts("registry: amount exceeds stake"):
                    self.reg.request_unbond(amount)
                return
            self.reg.request_unbond(amount)
        self.stake[i] -= amount
        self.unbonding[i] += amount
        self.ready[i] = self._block() + UNBONDING

    @rule(blocks=st.integers(min_value=1, max_value=UNBONDING))
    def advance(self, blocks: int) -> None:
        mine(blocks)

    @rule(i=who)
    def withdraw(self, i: int) -> None:
        if not self.registered[i] or self.unbonding[i] == 0:
            return
        with boa.env.prank(self.owners[i]):
            if self._block() < self.ready[i]:
                with boa.reverts("registry: still unbonding"):
                    self.reg.withdraw()
                return
            before = boa.env.get_balance(self.owners[i])
            self.reg.withdraw()
        assert boa.env.get_balance(self.owners[i]) - before == self.unbonding[i]
        self.unbonding[i] = 0

    @rule(i=who, amount=amounts, prover=st.integers(min_value=0, max_value=N - 1))
    def slash(self, i: int, amount: int, prover: int) -> None:
        if not self.registered[i]:
            return
        held = self.stake[i] + self.unbonding[i]
        p = self.owners[prover]
        with boa.env.prank(self.slasher):
            if held == 0:
                with boa.reverts("registry: nothing to slash"):
                    self.reg.slash(self.owners[i], amount, p, "fuzz")
                return
            taken = self.reg.slash(self.owners[i], amount, p, "fuzz")
        assert taken == min(amount, held) <= held
        from_stake = min(taken, self.stake[i])
        self.stake[i] -= from_stake
        self.unbonding[i] -= taken - from_stake
        self.credits[p] = self.credits.get(p, 0) + taken * 3_000 // 10_000

    @rule(i=who)
    def claim(self, i: int) -> None:
        p = self.owners[i]
        with boa.env.prank(p):
            if self.credits.get(p, 0) == 0:
                with boa.reverts("registry: nothing to claim"):
                    self.reg.claim()
                return
            self.reg.claim()
        self.credits[p] = 0

    @rule(i=who)
    def strangers_and_operators_cannot_change_roles_or_slash(self, i: int) -> None:
        for caller in (self.stranger, self.operators[i], self.owners[i]):
            with boa.env.prank(caller):
                with boa.reverts("ownable: caller is not the owner"):
                    self.reg.set_slasher(caller)
                with boa.reverts("registry: caller is not the slasher"):
                    self.reg.slash(self.owners[i], 1, caller, "")
        assert self.reg.slasher() == self.slasher and self.reg.owner() == self.admin

    @invariant()
    def balance_equals_stake_plus_unbonding_plus_credits(self) -> None:
        if not hasattr(self, "reg"):
            return
        total = sum(self.stake) + sum(self.unbonding) + sum(self.credits.values())
        assert boa.env.get_balance(self.reg.address) == total
        assert self.reg.total_staked() == sum(self.stake)
        assert self.reg.total_unbonding() == sum(self.unbonding)
        assert self.reg.total_credits() == sum(self.credits.values())
        for i in range(N):
            if self.registered[i]:
                n = self.reg.nodes(self.owners[i])
                assert (n.stake, n.unbonding) == (self.stake[i], self.unbonding[i])


RegistryMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRegistryInvariants = RegistryMachine.TestCase
