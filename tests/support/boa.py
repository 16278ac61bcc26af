"""Titanoboa helpers shared by the in-process contract tests (no chain process needed)."""

from __future__ import annotations

from functools import cache, cached_property
from pathlib import Path
from typing import Any

import boa

from tests.support.chain import ETH

VY = Path(__file__).resolve().parents[2] / "contracts" / "vy"


def _one_deployment_source_map_per_contract() -> None:
    """titanoboa 0.2.8 re-assembles a contract's creation code on every deploy, only to get the
    source map of its constructor (a `cached_property` of each deployed instance): ~40% of a deploy,
    and the fuzzers deploy a System per example. The map depends on the compiled contract alone
    (`CompilerData`, shared by every deploy from one deployer), as boa's runtime map already
    does, and boa only reads it (revert reasons): keep one per `CompilerData`."""
    from boa.contracts.vyper.vyper_contract import VyperContract

    built = VyperContract.__dict__.get("_deployment_source_map")
    if not isinstance(built, cached_property):  # another boa version: leave it as it is
        return
    maps: dict[int, tuple[Any, Any]] = {}  # id(CompilerData) -> (CompilerData kept alive, map)

    def shared(self: Any) -> Any:
        data = self.compiler_data
        hit = maps.get(id(data))
        if hit is None or hit[0] is not data:
            hit = maps[id(data)] = (data, built.func(self))
        return hit[1]

    VyperContract._deployment_source_map = property(shared)  # type: ignore[assignment]


_one_deployment_source_map_per_contract()

HW = ("NVIDIA H100", 81_559, 989_000, 3_350, 100_000, "eu-west")


@cache
def deployer_for(name: str) -> Any:
    """A reusable deployer (compiled once per session) for contracts/vy/<name>.vy."""
    return boa.load_partial(str(VY / f"{name}.vy"))


def funded(eth: int = 1_000) -> str:
    """A fresh address holding `eth` coins."""
    addr = boa.env.generate_address()
    boa.env.set_balance(addr, eth * ETH)
    return addr


def mine(blocks: int) -> None:
    boa.env.time_travel(blocks=blocks)


def keyed(eth: int = 1_000) -> tuple[str, str]:
    """(address, private key) of a fresh funded account (for EIP-712 signatures)."""
    from eth_account import Account

    acct = Account.create()
    boa.env.set_balance(acct.address, eth * ETH)
    return acct.address, "0x" + bytes(acct.key).hex()


class System:
    """The contracts deployed and wired in boa, with one model and registered nodes.

    `slasher=True` hands the verification role to an EOA (`self.slasher`, tests that drive it by
    hand); `False` leaves it unwired for the caller (the Verification game). Operators have keys
    (`operator_keys`) so they can sign stage commitments. Payments takes no gateway bond unless
    `gateway_bond` says so (`bond_gateway` in the tests that need one)."""

    def __init__(
        self, layers: int = 8, nodes: int = 3, window: int = 10, *, hidden: int = 256,
        slasher: bool = True, unbonding: int | None = None, gateway_bond: int = 0,
        timelock: int = 0,
    ) -> None:
        self.admin, self.slasher = funded(), funded()
        with boa.env.prank(self.admin):
            self.reg = deployer_for("NodeRegistry").deploy(
                ETH, unbonding or 2 * window + 5, 5_000, timelock
            )
            self.models = deployer_for("ModelRegistry").deploy(timelock)
            self.sched = deployer_for("Scheduler").deploy(self.reg, self.models, self.admin)
            self.pay = deployer_for("Payments").deploy(
                self.reg, self.models, window, 500, 1_000, self.admin, gateway_bond, 1, timelock
            )
            if slasher:
                self.reg.set_slasher(self.slasher)
                self.pay.set_roles(self.slasher, self.admin)
            self.model_id = self.models.register_model(
                "tiny", layers, hidden, b"\x01" * 32, b"\x02" * 32, 10**9, 3 * 10**9
            )
        self.layers = layers
        self.owners: list[str] = []
        self.operators: list[str] = []
        self.operator_keys: dict[str, str] = {}
        for _ in range(nodes):
            self.add_node()
        self.chain_id = int(self.pay.eip712Domain()[3])

    def add_node(self, stake: int = ETH) -> tuple[str, str]:
        """Register one more node (owner, operator) staking `stake`."""
        owner = funded()
        operator, key = keyed(1)
        with boa.env.prank(owner):
            self.reg.register(operator, "http://n", HW, value=stake)
        self.owners.append(owner)
        self.operators.append(operator)
        self.operator_keys[operator] = key
        return owner, operator
