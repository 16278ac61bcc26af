"""Stateful fuzzing of Payments: coin is conserved and no record is paid twice.

The handler keeps its own ledger of deposits, credited balances, escrow per batch and the
verifier pool, and after every step checks the contract's coin balance equals
deposits + balances + escrow + verifier pool and that the contract's running totals match it.
Each settled record is either released once or refunded once, never both, never twice.
"""

from __future__ import annotations

import boa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from contracts.apikeys import create_api_key
from contracts.batch import Pipeline, Record, Stage, leaves_of
from tests.support.boa import ETH, System, funded, keyed, mine

WINDOW = 4
PRICE_IN, PRICE_OUT = 10**9, 3 * 10**9


class PaymentsMachine(RuleBasedStateMachine):
    @initialize()
    def deploy(self) -> None:
        self.s = System(layers=8, nodes=2, window=WINDOW)
        self.gateway = funded()
        self.clients = []
        self.keys = []
        for nonce in range(2):
            client, pk = keyed()
            k = create_api_key(
                pk,
                self.gateway,
                20 * ETH,
                int(boa.env.evm.patch.timestamp) + 10**6,
                nonce,
                self.s.chain_id,
                self.s.pay.address,
            )
            with boa.env.prank(self.gateway):
                self.keys.append(self.s.pay.register_key(k.key.as_tuple(), k.signature))
            self.clients.append(client)
        self.pipeline = Pipeline(
            self.s.model_id, (Stage(self.s.operators[0], 0, 3), Stage(self.s.operators[1], 3, 8))
        )
        self.deposits = {c: 0 for c in self.clients}
        self.spent = {k: 0 for k in self.keys}
        self.balances: dict[str, int] = {}
        self.pool = 0
        self.batches: dict[int, dict] = {}  # id -> {"records", "leaves", "escrow", "released"}
        self.outcome: dict[bytes, str] = {}  # request id -> "escrow" | "released" | "refunded"
        self.next_seq = 1

    @rule(i=st.integers(0, 1), amount=st.integers(1, 5 * ETH))
    def deposit(self, i: int, amount: int) -> None:
        with boa.env.prank(self.clients[i]):
            self.s.pay.deposit(value=amount)
        self.deposits[self.clients[i]] += amount

    @rule(i=st.integers(0, 1), amount=st.integers(1, 5 * ETH))
    def withdraw_deposit(self, i: int, amount: int) -> None:
        c = self.clients[i]
        with boa.env.prank(c):
            if amount > self.deposits[c]:
                with boa.reverts("payments: amount exceeds deposit"):
                    self.s.pay.withdraw_deposit(amount)
                return
            self.s.pay.withdraw_deposit(amount)
        self.deposits[c] -= amount

    @rule(
        sizes=st.lists(
            st.tuples(st.integers(0, 1), st.integers(0, 4000), st.integers(0, 500)),
            min_size=1,
            max_size=12,
        ),
        replay=st.booleans(),
    )
    def settle(self, sizes, replay: bool) -> None:
        records = []
        for key_index, tin, tout in sizes:
            records.append(
                Record(
                    self.next_seq,
                    key_index,
                    0,
                    tin,
                    tout,
                    tin * PRICE_IN + tout * PRICE_OUT,
                    b"\x09" * 32,
                )
            )
            self.next_seq += 1
        if replay and self.batches:
            # a record already settled is skipped (reported), the rest of the batch settles
            records.append(next(iter(self.batches.values()))["records"][0])
        # The contract's rule, record by record: a seq settles once; a record is skipped when its
        # charge is below the minimum (1 wei) or its key's cap or client's deposit is short.
        settled_seqs = {r.seq for b in self.batches.values() for r in b["records"]}
        left = {k: self.deposits[self.clients[i]] for i, k in enumerate(self.keys)}
        cap = {k: 20 * ETH - self.spent[k] for k in self.keys}
        kept, seen = [], set()
        for r in records:
            k = self.keys[r.key_index]
            if r.seq in settled_seqs or r.seq in seen or r.charge == 0:
                continue
            if r.charge > left[k] or r.charge > cap[k]:
                continue
            seen.add(r.seq)
            left[k] -= r.charge
            cap[k] -= r.charge
            kept.append(r)
        with boa.env.prank(self.gateway):
            batch_id = self.s.pay.settle_batch(
                self.keys, [self.pipeline.as_tuple()], [r.as_tuple() for r in records]
            )
        skipped = [e.seq for e in self.s.pay.get_logs() if type(e).__name__ == "RecordSkipped"]
        assert sorted(skipped) == sorted(r.seq for r in records if r not in kept or
                                         records.index(r) != _first(records, r))
        if not kept:
            assert batch_id == 0
            return
        for r in kept:
            k = self.keys[r.key_index]
            self.deposits[self.clients[r.key_index]] -= r.charge
            self.spent[k] += r.charge
        leaves = leaves_of(self.s.chain_id, self.s.pay.address, self.gateway, self.keys, kept)
        self.batches[batch_id] = {
            "records": kept,
            "leaves": leaves,
            "escrow": sum(r.charge for r in kept),
            "released": False,
        }
        for lf in leaves:
            assert lf.request_id not in self.outcome
            self.outcome[lf.request_id] = "escrow"

    @rule(blocks=st.integers(1, WINDOW))
    def advance(self, blocks: int) -> None:
        mine(blocks)

    @precondition(lambda self: bool(getattr(self, "batches", None)))
    @rule(data=st.data())
    def release(self, data) -> None:
        batch_id = data.draw(st.sampled_from(sorted(self.batches)))
        b = self.batches[batch_id]
        info = self.s.pay.batches(batch_id)
        if b["released"]:
            with boa.reverts("payments: batch already released"):
                self.s.pay.release(batch_id, [self.pipeline.as_tuple()])
            return
        if boa.env.evm.patch.block_number < info.release_block:
            with boa.reverts("payments: verification window open"):
                self.s.pay.release(batch_id, [self.pipeline.as_tuple()])
            return
        self.s.pay.release(batch_id, [self.pipeline.as_tuple()])
        c = b["escrow"]
        fee, ver = c * 500 // 10_000, c * 1_000 // 10_000
        ops = c - fee - ver
        first = ops * 3 // 8
        for owner, amt in (
            (self.s.owners[0], first),
            (self.s.owners[1], ops - first),
            (self.s.admin, fee),
        ):
            self.balances[owner] = self.balances.get(owner, 0) + amt
        self.pool += ver
        b["escrow"], b["released"] = 0, True
        for lf in b["leaves"]:
            if self.outcome[lf.request_id] == "escrow":
                self.outcome[lf.request_id] = "released"

    @precondition(lambda self: bool(getattr(self, "batches", None)))
    @rule(data=st.data())
    def refund(self, data) -> None:
        batch_id = data.draw(st.sampled_from(sorted(self.batches)))
        b = self.batches[batch_id]
        idx = data.draw(st.integers(0, len(b["leaves"]) - 1))
        lf = b["leaves"][idx]
        args = (batch_id, lf.request_id, lf.key_hash, lf.pipeline_index, lf.charge)
        state = self.outcome[lf.request_id]
        with boa.env.prank(self.s.slasher):
            if b["released"]:
                with boa.reverts("payments: batch already released"):
                    self.s.pay.refund(*args)
                return
            if state == "refunded":
                with boa.reverts("payments: already refunded"):
                    self.s.pay.refund(*args)
                return
            self.s.pay.refund(*args)
        client = self.clients[self.keys.index(lf.key_hash)]
        self.deposits[client] += lf.charge
        self.spent[lf.key_hash] -= lf.charge
        b["escrow"] -= lf.charge
        self.outcome[lf.request_id] = "refunded"

    @rule(i=st.integers(0, 2))
    def withdraw(self, i: int) -> None:
        who = [self.s.owners[0], self.s.owners[1], self.s.admin][i]
        with boa.env.prank(who):
            if self.balances.get(who, 0) == 0:
                with boa.reverts("payments: nothing to withdraw"):
                    self.s.pay.withdraw()
                return
            self.s.pay.withdraw()
        self.balances[who] = 0

    @rule()
    def strangers_cannot_refund_or_change_roles(self) -> None:
        other = funded(1)
        with boa.env.prank(other):
            with boa.reverts("ownable: caller is not the owner"):
                self.s.pay.set_roles(other, other)
            with boa.reverts("payments: caller is not the verification role"):
                self.s.pay.pay_verifier(other, 1)
        assert self.s.pay.verification() == self.s.slasher

    @invariant()
    def coin_balance_equals_deposits_balances_escrow_and_pool(self) -> None:
        if not hasattr(self, "s"):
            return
        pay = self.s.pay
        escrow = sum(b["escrow"] for b in self.batches.values())
        assert pay.total_deposits() == sum(self.deposits.values())
        assert pay.total_balances() == sum(self.balances.values())
        assert pay.total_escrow() == escrow
        assert pay.verifier_pool() == self.pool
        assert boa.env.get_balance(pay.address) == (
            sum(self.deposits.values()) + sum(self.balances.values()) + escrow + self.pool
        )
        for k in self.keys:
            assert pay.keys(k).spent == self.spent[k]


def _first(records, r) -> int:
    """Index of the first record with r's seq (a repeated seq is skipped after its first)."""
    return next(i for i, x in enumerate(records) if x.seq == r.seq)


PaymentsMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPaymentsInvariants = PaymentsMachine.TestCase
