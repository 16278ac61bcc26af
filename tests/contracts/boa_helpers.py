"""Titanoboa helpers shared by the in-process contract tests (no chain process needed)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import boa

from tests.support.chain import ETH

VY = Path(__file__).resolve().parents[2] / "contracts" / "vy"
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
    """The four contracts deployed and wired in boa, with one model and registered nodes."""

    def __init__(self, layers: int = 8, nodes: int = 3, window: int = 10) -> None:
        self.admin, self.slasher = funded(), funded()
        with boa.env.prank(self.admin):
            self.reg = deployer_for("NodeRegistry").deploy(ETH, 2 * window + 5, 5_000)
            self.models = deployer_for("ModelRegistry").deploy()
            self.sched = deployer_for("Scheduler").deploy(self.reg, self.models, self.admin)
            self.pay = deployer_for("Payments").deploy(
                self.reg, self.models, window, 500, 1_000, self.admin
            )
            self.reg.set_slasher(self.slasher)
            self.pay.set_roles(self.slasher, self.admin)
            self.model_id = self.models.register_model(
                "tiny", layers, 256, b"\x01" * 32, b"\x02" * 32, 10**9, 3 * 10**9
            )
        self.layers = layers
        self.owners: list[str] = []
        self.operators: list[str] = []
        for _ in range(nodes):
            owner, operator = funded(), funded(1)
            with boa.env.prank(owner):
                self.reg.register(operator, "http://n", HW, value=ETH)
            self.owners.append(owner)
            self.operators.append(operator)
        self.chain_id = int(self.pay.eip712Domain()[3])
