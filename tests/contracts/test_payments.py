"""Payments unit tests (titanoboa): deposits, EIP-712 API keys, batch settlement, escrow,
release, refunds, and every revert path."""

from __future__ import annotations

import boa
import pytest

from contracts.apikeys import create_api_key
from contracts.batch import Pipeline, Record, Stage, leaves_of, merkle_root
from tests.support.boa import ETH, System, funded, keyed, mine

WINDOW = 10
ROOT = b"\x0c" * 32


@pytest.fixture
def s():
    return System(layers=8, nodes=3, window=WINDOW)


def now() -> int:
    return int(boa.env.evm.patch.timestamp)


class Setup:
    """A client with a deposit and a registered key for `gateway`."""

    def __init__(self, s: System, deposit: int = 10 * ETH, cap: int = 5 * ETH) -> None:
        self.s = s
        self.client, self.client_key = keyed()
        self.gateway = funded()
        with boa.env.prank(self.client):
            s.pay.deposit(value=deposit)
        self.signed = create_api_key(
            self.client_key, self.gateway, cap, now() + 3600, 1, s.chain_id, s.pay.address
        )
        with boa.env.prank(self.gateway):
            self.key = s.pay.register_key(self.signed.key.as_tuple(), self.signed.signature)
        self.pipeline = Pipeline(
            s.model_id, (Stage(s.operators[0], 0, 2), Stage(s.operators[1], 2, 8))
        )

    def record(
        self,
        seq: int,
        tin: int = 100,
        tout: int = 20,
        charge: int | None = None,
        key_index: int = 0,
        pipeline_index: int = 0,
    ) -> Record:
        if charge is None:
            charge = tin * 10**9 + tout * 3 * 10**9
        return Record(seq, key_index, pipeline_index, tin, tout, charge, ROOT)

    def settle(self, records, keys=None, pipelines=None, sender=None):
        keys = [self.key] if keys is None else keys
        pipelines = [self.pipeline] if pipelines is None else pipelines
        with boa.env.prank(sender or self.gateway):
            return self.s.pay.settle_batch(
                keys, [p.as_tuple() for p in pipelines], [r.as_tuple() for r in records]
            )


def balance_invariant(s):
    t = (
        s.pay.total_deposits()
        + s.pay.total_balances()
        + s.pay.total_escrow()
        + s.pay.verifier_pool()
        + s.pay.total_bonds()
    )
    assert boa.env.get_balance(s.pay.address) == t


SKIP_KEY, SKIP_CHARGE, SKIP_STAGE, SKIP_FUNDS, SKIP_SETTLED = 1, 2, 3, 4, 5


def skipped(s) -> list[tuple[int, int]]:
    """(seq, reason) of the RecordSkipped events of the last call."""
    return [(e.seq, e.reason) for e in s.pay.get_logs() if type(e).__name__ == "RecordSkipped"]


# ---------------------------------------------------------------- deposits


def test_deposit_and_withdraw_unspent(s):
    c = funded()
    with boa.env.prank(c):
        s.pay.deposit(value=3 * ETH)
        s.pay.withdraw_deposit(ETH)
        with boa.reverts("payments: amount exceeds deposit"):
            s.pay.withdraw_deposit(3 * ETH)
        with boa.reverts("payments: zero amount"):
            s.pay.withdraw_deposit(0)
        with boa.reverts("payments: zero amount"):
            s.pay.deposit(value=0)
    assert s.pay.deposits(c) == 2 * ETH
    balance_invariant(s)


# ---------------------------------------------------------------- keys


def test_key_hash_matches_the_python_eip712_digest(s):
    u = Setup(s)
    assert u.key == u.signed.key_hash == s.pay.key_hash(u.signed.key.as_tuple())
    st = s.pay.keys(u.key)
    assert (st.client, st.gateway, st.cap, st.spent, st.revoked) == (
        u.client,
        u.gateway,
        5 * ETH,
        0,
        False,
    )


def test_register_key_rejects_bad_keys(s):
    client, pk = keyed()
    gw = funded()

    def attempt(reason, cap=ETH, expiry=None, nonce=7, sig_from=None, gateway=gw):
        k = create_api_key(pk, gateway, cap, expiry or now() + 60, nonce, s.chain_id, s.pay.address)
        sig = k.signature
        if sig_from is not None:
            sig = create_api_key(
                sig_from, gateway, cap, expiry or now() + 60, nonce, s.chain_id, s.pay.address
            ).signature
        with boa.reverts(reason):
            s.pay.register_key(k.key.as_tuple(), sig)

    other_pk = keyed()[1]
    attempt("payments: bad key signature", sig_from=other_pk)
    attempt("payments: key expired", expiry=now())
    attempt("payments: gateway is the zero address", gateway="0x" + "00" * 20)
    k = create_api_key(pk, gw, ETH, now() + 60, 7, s.chain_id, s.pay.address)
    s.pay.register_key(k.key.as_tuple(), k.signature)
    attempt("payments: nonce already used")
    with boa.env.prank(client):
        s.pay.revoke_key(8)
        with boa.reverts("payments: key revoked"):
            s.pay.revoke_key(8)
    attempt("payments: key revoked", nonce=8)


def test_zero_cap_keys_are_rejected_on_chain_and_by_the_python_helper(s):
    from contracts.apikeys import ApiKey, ApiKeyError, sign_api_key

    client, pk = keyed()
    key = ApiKey(client, funded(), 0, now() + 60, 1)
    with boa.reverts("payments: zero cap"):
        s.pay.register_key(key.as_tuple(), sign_api_key(key, pk, s.chain_id, s.pay.address))
    with pytest.raises(ApiKeyError, match="cap"):
        create_api_key(pk, funded(), 0, now() + 60, 1, s.chain_id, s.pay.address)


def test_revoked_key_cannot_be_settled(s):
    u = Setup(s)
    with boa.env.prank(u.client):
        s.pay.revoke_key(1)
    # (was: the whole batch reverted; now the record is skipped and reported, issue 14 #12)
    assert u.settle([u.record(1)]) == 0
    assert skipped(s) == [(1, SKIP_KEY)]
    assert s.pay.deposits(u.client) == 10 * ETH and not s.pay.is_settled(u.gateway, 1)


# ---------------------------------------------------------------- settlement


def test_settle_batch_escrows_charges_and_stores_the_python_merkle_root(s):
    u = Setup(s)
    records = [u.record(seq, tin=10 + seq, tout=seq) for seq in range(1, 8)]
    total = sum(r.charge for r in records)
    batch_id = u.settle(records)
    assert batch_id == 1
    leaves = leaves_of(s.chain_id, s.pay.address, u.gateway, [u.key], records)
    assert s.pay.batches(1).root == merkle_root([lf.hash() for lf in leaves])
    assert s.pay.deposits(u.client) == 10 * ETH - total
    assert s.pay.keys(u.key).spent == total
    assert s.pay.total_escrow() == total == s.pay.pipeline_escrow(1, 0)
    assert all(s.pay.is_settled(u.gateway, r.seq) for r in records)
    assert s.pay.request_id_of(u.gateway, 3) == leaves[2].request_id
    balance_invariant(s)


def test_a_request_is_never_charged_twice(s):
    u = Setup(s)
    u.settle([u.record(5)])
    charged = s.pay.total_escrow()
    u.settle([u.record(6), u.record(5)])
    assert skipped(s) == [(5, SKIP_SETTLED)]
    u.settle([u.record(7), u.record(7)])
    assert skipped(s) == [(7, SKIP_SETTLED)]
    assert s.pay.total_escrow() == 3 * charged  # 5, 6 and 7 once each
    u.settle([u.record(300), u.record(6)])  # other bitmap word, then back
    assert skipped(s) == [(6, SKIP_SETTLED)]


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda u: dict(records=[]), "payments: empty batch"),
        (lambda u: dict(records=[u.record(1, key_index=1)]), "payments: bad key index"),
        (lambda u: dict(records=[u.record(1, pipeline_index=1)]), "payments: bad pipeline index"),
    ],
)
def test_settle_batch_rejects_malformed_batches(s, mutate, reason):
    u = Setup(s)
    with boa.reverts(reason):
        u.settle(**mutate(u))
    assert s.pay.batch_count() == 0 and s.pay.deposits(u.client) == 10 * ETH


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda u: dict(records=[u.record(1, charge=1)]), SKIP_CHARGE),
        (lambda u: dict(records=[u.record(1, tin=0, tout=0, charge=0)]), SKIP_CHARGE),
        (lambda u: dict(records=[u.record(1, tin=10**10)]), SKIP_FUNDS),
        (lambda u: dict(records=[u.record(1)], sender=funded()), SKIP_KEY),
    ],
)
def test_settle_batch_skips_and_reports_records_it_cannot_charge(s, mutate, reason):
    # (was: each of these reverted the whole batch; issue 14 #12: only the record is skipped)
    u = Setup(s)
    assert u.settle(**mutate(u)) == 0
    assert skipped(s) == [(1, reason)]
    assert s.pay.batch_count() == 0 and s.pay.deposits(u.client) == 10 * ETH


def test_one_bad_record_does_not_void_the_rest_of_the_batch(s):
    u = Setup(s)
    good, bad = u.record(1), u.record(2, charge=1)
    assert u.settle([good, bad]) == 1
    assert skipped(s) == [(2, SKIP_CHARGE)]
    assert s.pay.total_escrow() == good.charge
    leaves = leaves_of(s.chain_id, s.pay.address, u.gateway, [u.key], [good])
    assert s.pay.batches(1).root == merkle_root([lf.hash() for lf in leaves])


def test_settle_batch_skips_an_insufficient_deposit(s):
    u = Setup(s, deposit=10**9, cap=5 * ETH)
    assert u.settle([u.record(1)]) == 0
    assert skipped(s) == [(1, SKIP_FUNDS)]


def test_settle_batch_skips_an_expired_key(s):
    u = Setup(s)
    boa.env.time_travel(seconds=3601)
    assert u.settle([u.record(1)]) == 0
    assert skipped(s) == [(1, SKIP_KEY)]


def test_two_keys_of_one_client_share_its_deposit(s):
    u = Setup(s, deposit=10**11 + 6 * 10**10, cap=5 * ETH)
    signed = create_api_key(u.client_key, u.gateway, 5 * ETH, now() + 3600, 2, s.chain_id,
                            s.pay.address)
    with boa.env.prank(u.gateway):
        k2 = s.pay.register_key(signed.key.as_tuple(), signed.signature)
    first = u.record(1)  # 1.6e11 wei: the whole deposit
    second = u.record(2, key_index=1)
    assert u.settle([first, second], keys=[u.key, k2]) == 1
    assert skipped(s) == [(2, SKIP_FUNDS)]
    assert s.pay.deposits(u.client) == 0


def test_an_unbonded_gateway_cannot_settle_when_a_bond_is_required():
    s = System(layers=8, nodes=3, window=WINDOW, gateway_bond=ETH)
    u = Setup(s)
    with boa.reverts("payments: gateway not bonded"):
        u.settle([u.record(1)])
    with boa.env.prank(u.gateway):
        s.pay.bond_gateway(value=ETH)
    assert u.settle([u.record(1)]) == 1
    with boa.env.prank(u.gateway):
        s.pay.request_gateway_exit()
    with boa.reverts("payments: gateway is exiting"):
        u.settle([u.record(2)])
    mine(s.reg.unbonding_period())
    with boa.env.prank(u.gateway), boa.reverts("payments: gateway has open batches"):
        s.pay.withdraw_gateway_bond()
    s.pay.release(1, [u.pipeline.as_tuple()])
    with boa.env.prank(u.gateway):
        s.pay.withdraw_gateway_bond()
    assert s.pay.gateway_bond(u.gateway) == 0
    balance_invariant(s)


@pytest.mark.parametrize(
    "stages, reason",
    [
        (((0, 0, 2), (1, 3, 8)), "payments: pipeline not contiguous"),
        (((0, 0, 2), (1, 2, 7)), "payments: pipeline incomplete"),
        (((0, 1, 8),), "payments: pipeline not contiguous"),
        ((), "payments: empty pipeline"),
    ],
)
def test_settle_batch_rejects_bad_pipelines(s, stages, reason):
    u = Setup(s)
    st = tuple(Stage(s.operators[i] if i is not None else funded(), a, b) for i, a, b in stages)
    with boa.reverts(reason):
        u.settle([u.record(1)], pipelines=[Pipeline(s.model_id, st)])


def test_records_of_a_pipeline_with_an_unregistered_or_inactive_stage_are_skipped(s):
    # (was: "operator not registered" reverted the batch; issue 14 #3/#12: every stage must be
    # active at settlement, and only that pipeline's records are skipped)
    u = Setup(s)
    stranger = Pipeline(s.model_id, (Stage(funded(), 0, 8),))
    assert u.settle([u.record(1, pipeline_index=1), u.record(2)],
                    pipelines=[u.pipeline, stranger]) == 1
    assert skipped(s) == [(1, SKIP_STAGE)]


def test_settle_batch_rejects_unknown_and_inactive_models(s):
    u = Setup(s)
    with boa.reverts("payments: unknown model"):
        u.settle([u.record(1)], pipelines=[Pipeline(9, u.pipeline.stages)])
    with boa.env.prank(s.admin):
        s.models.set_active(s.model_id, False)
    with boa.reverts("payments: model inactive"):
        u.settle([u.record(1)])


# ---------------------------------------------------------------- release


def test_release_splits_by_layers_fee_and_verifier_pool_after_the_window(s):
    u = Setup(s)
    records = [u.record(i) for i in range(1, 11)]
    total = sum(r.charge for r in records)
    u.settle(records)
    pl = [u.pipeline.as_tuple()]
    with boa.reverts("payments: verification window open"):
        s.pay.release(1, pl)
    mine(WINDOW)
    with boa.reverts("payments: pipelines do not match batch"):
        s.pay.release(1, [Pipeline(s.model_id, (Stage(s.operators[2], 0, 8),)).as_tuple()])
    s.pay.release(1, pl)
    fee, ver = total * 500 // 10_000, total * 1_000 // 10_000
    ops = total - fee - ver
    first = ops * 2 // 8
    assert s.pay.balances(s.owners[0]) == first
    assert s.pay.balances(s.owners[1]) == ops - first
    assert s.pay.balances(s.admin) == fee and s.pay.verifier_pool() == ver
    assert s.pay.total_escrow() == 0
    with boa.reverts("payments: batch already released"):
        s.pay.release(1, pl)
    with boa.reverts("payments: unknown batch"):
        s.pay.release(2, pl)
    before = boa.env.get_balance(s.owners[0])
    with boa.env.prank(s.owners[0]):
        s.pay.withdraw()
        with boa.reverts("payments: nothing to withdraw"):
            s.pay.withdraw()
    assert boa.env.get_balance(s.owners[0]) - before == first
    balance_invariant(s)


def test_earnings_follow_the_owner_after_an_operator_rotation(s):
    u = Setup(s)
    u.settle([u.record(1)])
    with boa.env.prank(s.owners[0]):
        s.reg.rotate_operator(funded(1))
    mine(WINDOW)
    s.pay.release(1, [u.pipeline.as_tuple()])
    assert s.pay.balances(s.owners[0]) > 0


# ---------------------------------------------------------------- refunds and verifier payouts


def test_refund_returns_a_record_once_and_only_before_release(s):
    # (the record's membership in its batch is proven by the verification contract, which
    # alone may call refund: Payments takes the record's fields, no proof)
    u = Setup(s)
    records = [u.record(i, tin=i) for i in range(1, 6)]
    u.settle(records)
    leaves = leaves_of(s.chain_id, s.pay.address, u.gateway, [u.key], records)
    lf = leaves[3]
    args = (1, lf.request_id, lf.key_hash, lf.pipeline_index, lf.charge)
    with boa.env.prank(u.gateway), boa.reverts("payments: caller is not the verification role"):
        s.pay.refund(*args)
    deposit_before = s.pay.deposits(u.client)
    with boa.env.prank(s.slasher):
        s.pay.refund(*args)
        with boa.reverts("payments: already refunded"):
            s.pay.refund(*args)
        with boa.reverts("payments: unknown batch"):
            s.pay.refund(2, *args[1:])
    assert s.pay.deposits(u.client) == deposit_before + lf.charge
    assert s.pay.total_escrow() == sum(r.charge for r in records) - lf.charge
    balance_invariant(s)
    mine(WINDOW)
    s.pay.release(1, [u.pipeline.as_tuple()])
    lf0 = leaves[0]
    with boa.env.prank(s.slasher), boa.reverts("payments: batch already released"):
        s.pay.refund(1, lf0.request_id, lf0.key_hash, 0, lf0.charge)
    balance_invariant(s)


def test_verifier_pool_pays_out_only_through_the_verification_role(s):
    u = Setup(s)
    u.settle([u.record(1)])
    mine(WINDOW)
    s.pay.release(1, [u.pipeline.as_tuple()])
    pool = s.pay.verifier_pool()
    v = funded()
    with boa.env.prank(v), boa.reverts("payments: caller is not the verification role"):
        s.pay.pay_verifier(v, 1)
    with boa.env.prank(s.slasher):
        with boa.reverts("payments: verifier pool too small"):
            s.pay.pay_verifier(v, pool + 1)
        with boa.reverts("payments: zero amount"):
            s.pay.pay_verifier(v, 0)
        s.pay.pay_verifier(v, pool)
    assert s.pay.balances(v) == pool and s.pay.verifier_pool() == 0
    balance_invariant(s)


# ---------------------------------------------------------------- admin


def test_only_the_admin_sets_roles_and_params_and_they_are_validated():
    s = System(layers=8, nodes=1, window=WINDOW, slasher=False)
    with boa.env.prank(funded()):
        with boa.reverts("ownable: caller is not the owner"):
            s.pay.set_roles(s.slasher, s.admin)
        with boa.reverts("ownable: caller is not the owner"):
            s.pay.set_params(5, 0, 0, 0, 1)
    with boa.env.prank(s.admin):
        with boa.reverts("payments: fee recipient is the zero address"):
            s.pay.set_roles(s.slasher, "0x" + "00" * 20)
        with boa.reverts("payments: verification window outside 1..2**32"):
            s.pay.set_params(0, 0, 0, 0, 1)
        with boa.reverts("payments: shares above 100%"):
            s.pay.set_params(5, 6_000, 5_000, 0, 1)
        with boa.reverts("payments: minimum charge is zero"):
            s.pay.set_params(5, 100, 200, 0, 0)
        s.pay.set_params(5, 100, 200, ETH, 7)
        s.pay.set_roles(s.slasher, s.admin)
        with boa.reverts("payments: roles already set"):  # role wiring is set once
            s.pay.set_roles(funded(), s.admin)
    assert (s.pay.verification_window(), s.pay.protocol_fee_bps(), s.pay.verifier_share_bps(),
            s.pay.min_gateway_bond(), s.pay.min_charge()) == (5, 100, 200, ETH, 7)


def test_a_key_for_the_zero_client_is_rejected_before_signature_checks(s):
    from contracts.apikeys import ApiKey

    key = ApiKey("0x" + "00" * 20, funded(), ETH, now() + 60, 1)
    with boa.reverts("payments: client is the zero address"):
        s.pay.register_key(key.as_tuple(), b"\x00" * 65)
