"""NodeRegistry unit tests (titanoboa, in-process): every revert path and the happy paths."""

from __future__ import annotations

import boa
import pytest

from tests.support.boa import ETH, HW, deployer_for, funded, mine

UNBONDING = 20
BURN = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture
def admin():
    return funded()


@pytest.fixture
def slasher():
    return funded()


@pytest.fixture
def reg(admin, slasher):
    with boa.env.prank(admin):
        c = deployer_for("NodeRegistry").deploy(ETH, UNBONDING, 5_000, 0)
        c.set_slasher(slasher)
    return c


@pytest.fixture
def node(reg):
    """(owner, operator) of a node registered with 2 ETH."""
    owner, operator = funded(), funded()
    with boa.env.prank(owner):
        reg.register(operator, "http://gpu:9000", HW, value=2 * ETH)
    return owner, operator


def assert_balance_invariant(reg):
    assert boa.env.get_balance(reg.address) == (
        reg.total_staked() + reg.total_unbonding() + reg.total_credits()
    )


# ---------------------------------------------------------------- constructor and admin


@pytest.mark.parametrize(
    "args, reason",
    [
        ((0, UNBONDING, 5_000, 0), "registry: min stake is zero"),
        ((ETH, 0, 5_000, 0), "registry: unbonding period is zero"),
        ((ETH, UNBONDING, 10_000, 0), "registry: prover share must leave a burn"),
    ],
)
def test_constructor_rejects_bad_params(args, reason):
    with boa.reverts(reason):
        deployer_for("NodeRegistry").deploy(*args)


def test_only_the_admin_sets_the_slasher_and_params(reg, node):
    owner, operator = node
    for who in (owner, operator):
        with boa.env.prank(who), boa.reverts("ownable: caller is not the owner"):
            reg.set_slasher(who)
        with boa.env.prank(who), boa.reverts("ownable: caller is not the owner"):
            reg.set_params(1, 1, 1)


def test_admin_changes_params_and_emits_an_event(reg, admin):
    with boa.env.prank(admin):
        reg.set_params(3 * ETH, 50, 2_500)
        logs = reg.get_logs()
    # (a zero timelock delay runs the change at once, logging its execution)
    assert [type(log).__name__ for log in logs] == ["OperationExecuted", "ParamsSet"]
    assert (reg.min_stake(), reg.unbonding_period(), reg.prover_share_bps()) == (3 * ETH, 50, 2_500)


def test_admin_transfer_takes_two_steps(reg, admin):
    new = funded()
    with boa.env.prank(admin):
        reg.transfer_ownership(new)
    assert reg.owner() == admin
    with boa.env.prank(funded()), boa.reverts("ownable_2step: caller is not the new owner"):
        reg.accept_ownership()
    with boa.env.prank(new):
        reg.accept_ownership()
    assert reg.owner() == new


# ---------------------------------------------------------------- register


def test_register_stores_the_node_and_emits_full_data(reg, node):
    owner, operator = node
    n = reg.nodes(owner)
    assert n.operator == operator and n.stake == 2 * ETH and n.endpoint == "http://gpu:9000"
    assert tuple(n.hardware) == HW
    assert reg.node_of(operator) == owner and reg.is_active(operator)
    assert reg.node_count() == 1 and reg.node_at(0) == owner
    assert_balance_invariant(reg)


def test_register_reverts_below_min_stake(reg):
    with boa.env.prank(funded()), boa.reverts("registry: stake below minimum"):
        reg.register(funded(), "http://x", HW, value=ETH - 1)


def test_register_reverts_twice_for_one_owner(reg, node):
    owner, _ = node
    with boa.env.prank(owner), boa.reverts("registry: already registered"):
        reg.register(funded(), "http://x", HW, value=ETH)


def test_register_reverts_when_the_owner_is_someones_operator(reg, node):
    _, operator = node
    with boa.env.prank(operator), boa.reverts("registry: owner is an operator"):
        reg.register(funded(), "http://x", HW, value=ETH)


@pytest.mark.parametrize("case", ["zero", "self", "bound", "owner"])
def test_register_reverts_on_a_bad_operator(reg, node, case):
    owner_a, operator_a = node
    me = funded()
    operator, reason = {
        "zero": ("0x" + "00" * 20, "registry: operator is the zero address"),
        "self": (me, "registry: operator must differ from owner"),
        "bound": (operator_a, "registry: operator already bound"),
        "owner": (owner_a, "registry: operator is a node owner"),
    }[case]
    with boa.env.prank(me), boa.reverts(reason):
        reg.register(operator, "http://x", HW, value=ETH)


def test_register_reverts_on_an_empty_endpoint(reg):
    with boa.env.prank(funded()), boa.reverts("registry: empty endpoint"):
        reg.register(funded(), "", HW, value=ETH)


# ---------------------------------------------------------------- stake and unbonding


def test_add_stake_tops_up(reg, node):
    owner, _ = node
    with boa.env.prank(owner):
        reg.add_stake(value=ETH)
    assert reg.nodes(owner).stake == 3 * ETH and reg.total_staked() == 3 * ETH


def test_add_stake_reverts_for_unregistered_and_zero(reg, node):
    owner, _ = node
    with boa.env.prank(funded()), boa.reverts("registry: not registered"):
        reg.add_stake(value=ETH)
    with boa.env.prank(owner), boa.reverts("registry: zero amount"):
        reg.add_stake(value=0)


def test_request_unbond_reverts_on_zero_excess_and_unregistered(reg, node):
    owner, operator = node
    with boa.env.prank(owner), boa.reverts("registry: zero amount"):
        reg.request_unbond(0)
    with boa.env.prank(owner), boa.reverts("registry: amount exceeds stake"):
        reg.request_unbond(2 * ETH + 1)
    with boa.env.prank(operator), boa.reverts("registry: not registered"):
        reg.request_unbond(ETH)


def test_withdraw_reverts_before_unbonding_ends_and_pays_after(reg, node):
    owner, _ = node
    with boa.env.prank(owner), boa.reverts("registry: nothing unbonding"):
        reg.withdraw()
    with boa.env.prank(owner):
        reg.request_unbond(2 * ETH)
    assert not reg.is_active(reg.nodes(owner).operator)
    mine(UNBONDING - 1)
    with boa.env.prank(owner), boa.reverts("registry: still unbonding"):
        reg.withdraw()
    mine(1)
    before = boa.env.get_balance(owner)
    with boa.env.prank(owner):
        reg.withdraw()
    assert boa.env.get_balance(owner) - before == 2 * ETH
    assert reg.nodes(owner).unbonding == 0
    assert_balance_invariant(reg)


def test_operator_key_can_never_move_funds(reg, node):
    _, operator = node
    with boa.env.prank(operator):
        for call in (
            lambda: reg.request_unbond(ETH),
            reg.withdraw,
            lambda: reg.rotate_operator(funded()),
        ):
            with boa.reverts("registry: not registered"):
                call()
        with boa.reverts("registry: nothing to claim"):
            reg.claim()


# ---------------------------------------------------------------- operator, endpoint, hardware


def test_rotate_operator_moves_the_hot_key_and_old_faults_still_reach_the_owner(reg, node):
    owner, old = node
    new = funded()
    with boa.env.prank(owner):
        reg.rotate_operator(new)
    assert reg.nodes(owner).operator == new and reg.is_active(new) and not reg.is_active(old)
    assert reg.node_of(old) == "0x" + "00" * 20 and reg.owner_of_operator(old) == owner
    with boa.env.prank(owner), boa.reverts("registry: operator already bound"):
        reg.rotate_operator(old)


def test_owner_or_operator_update_endpoint_and_hardware_but_nobody_else(reg, node):
    owner, operator = node
    with boa.env.prank(operator):
        reg.set_endpoint(owner, "http://new:1")
        reg.set_hardware(owner, ("RTX 4090", 24_564, 82_600, 1_008, 10_000, "us-east"))
    assert (
        reg.nodes(owner).endpoint == "http://new:1" and reg.nodes(owner).hardware.gpu == "RTX 4090"
    )
    with boa.env.prank(funded()), boa.reverts("registry: caller is not owner or operator"):
        reg.set_endpoint(owner, "http://evil")
    with boa.env.prank(funded()), boa.reverts("registry: caller is not owner or operator"):
        reg.set_hardware(owner, HW)
    with boa.env.prank(owner), boa.reverts("registry: empty endpoint"):
        reg.set_endpoint(owner, "")


# ---------------------------------------------------------------- jail


def test_jail_blocks_scheduling_until_the_owner_unjails_after_the_term(reg, node, slasher):
    owner, operator = node
    with boa.env.prank(owner), boa.reverts("registry: not jailed"):
        reg.unjail()
    until = boa.env.evm.patch.block_number + 5
    with boa.env.prank(slasher):
        reg.jail(owner, until, "missed heartbeats")
    assert not reg.is_active(operator)
    with boa.env.prank(owner), boa.reverts("registry: jail term not over"):
        reg.unjail()
    mine(5)
    with boa.env.prank(owner):
        reg.unjail()
    assert reg.is_active(operator)


def test_jail_reverts_for_strangers_unregistered_and_past_terms(reg, node, slasher):
    owner, operator = node
    now = boa.env.evm.patch.block_number
    with boa.env.prank(operator), boa.reverts("registry: caller cannot jail"):
        reg.jail(owner, now + 5, "")
    with boa.env.prank(slasher), boa.reverts("registry: not registered"):
        reg.jail(funded(), now + 5, "")
    with boa.env.prank(slasher), boa.reverts("registry: jail ends in the past"):
        reg.jail(owner, now, "")


# ---------------------------------------------------------------- slash and claim


def test_slash_splits_between_prover_and_burn_and_prover_claims(reg, node, slasher):
    owner, _ = node
    prover = funded()
    burn_before = boa.env.get_balance(BURN)
    with boa.env.prank(slasher):
        taken = reg.slash(owner, ETH, prover, "forged hidden states")
    assert taken == ETH and reg.nodes(owner).stake == ETH
    assert reg.credits(prover) == ETH // 2
    assert boa.env.get_balance(BURN) - burn_before == ETH // 2
    assert_balance_invariant(reg)
    before = boa.env.get_balance(prover)
    with boa.env.prank(prover):
        reg.claim()
    assert boa.env.get_balance(prover) - before == ETH // 2
    assert_balance_invariant(reg)


def test_slash_never_exceeds_stake_and_reaches_unbonding_funds(reg, node, slasher):
    owner, _ = node
    with boa.env.prank(owner):
        reg.request_unbond(ETH)
    with boa.env.prank(slasher):
        taken = reg.slash(owner, 10 * ETH, funded(), "fraud")
    assert taken == 2 * ETH
    n = reg.nodes(owner)
    assert (n.stake, n.unbonding, n.slashed_total) == (0, 0, 2 * ETH)
    with boa.env.prank(slasher), boa.reverts("registry: nothing to slash"):
        reg.slash(owner, 1, funded(), "again")
    assert_balance_invariant(reg)


def test_only_the_slasher_slashes_not_even_the_admin(reg, node, admin):
    owner, operator = node
    for who in (admin, owner, operator):
        with boa.env.prank(who), boa.reverts("registry: caller is not the slasher"):
            reg.slash(owner, ETH, who, "")


def test_slash_reverts_on_zero_amount_zero_prover_and_unregistered(reg, node, slasher):
    owner, _ = node
    with boa.env.prank(slasher):
        with boa.reverts("registry: zero amount"):
            reg.slash(owner, 0, funded(), "")
        with boa.reverts("registry: prover is the zero address"):
            reg.slash(owner, 1, "0x" + "00" * 20, "")
        with boa.reverts("registry: not registered"):
            reg.slash(funded(), 1, funded(), "")


def test_self_slashing_never_pays(reg, node, slasher):
    owner, _ = node
    with boa.env.prank(slasher):
        reg.slash(owner, 2 * ETH, owner, "self-reported")
    # the owner lost 2 ETH of stake and can claim back at most the prover share
    assert reg.credits(owner) < 2 * ETH
