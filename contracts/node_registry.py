"""Typed wrapper of the NodeRegistry contract: operators, hardware profiles, stake, slashing.

Amounts are wei (int), periods are blocks. A node is identified by its owner (cold key) address;
`operator` is its current hot key. Transactions take `sender=` (a `Signer`) or use the binding's
default signer; views return frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from web3 import Web3

from contracts.binding import Binding, TxResult
from contracts.rpc import Signer

ZERO_ADDRESS = "0x" + "00" * 20


@dataclass(frozen=True)
class Hardware:
    """A node's hardware profile as stored on chain (integers: no floats on chain)."""

    gpu: str
    vram_mib: int
    tflops_milli: int  # TFLOPS x 1000
    mem_bw_gbps: int
    net_bw_mbps: int
    region: str

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            self.gpu,
            self.vram_mib,
            self.tflops_milli,
            self.mem_bw_gbps,
            self.net_bw_mbps,
            self.region,
        )

    @classmethod
    def from_tuple(cls, t: Any) -> Hardware:
        return cls(str(t[0]), int(t[1]), int(t[2]), int(t[3]), int(t[4]), str(t[5]))


@dataclass(frozen=True)
class NodeInfo:
    """State of one node; `registered` is False (and the rest zero) for unknown owners."""

    owner: str
    registered: bool
    operator: str
    endpoint: str
    hardware: Hardware
    stake_wei: int
    unbonding_wei: int
    unbond_ready_block: int
    jailed_until: int
    registered_block: int
    slashed_total_wei: int


@dataclass(frozen=True)
class RegistryParams:
    min_stake_wei: int
    unbonding_period: int
    prover_share_bps: int
    slasher: str
    admin: str


class NodeRegistry(Binding):
    """`chain.node_registry`."""

    # -------------------------------------------------------------- views
    def node(self, owner: str) -> NodeInfo:
        t = self._view("nodes", Web3.to_checksum_address(owner))
        return NodeInfo(
            owner=Web3.to_checksum_address(owner),
            registered=int(t[7]) != 0,
            operator=str(t[0]),
            endpoint=str(t[1]),
            hardware=Hardware.from_tuple(t[2]),
            stake_wei=int(t[3]),
            unbonding_wei=int(t[4]),
            unbond_ready_block=int(t[5]),
            jailed_until=int(t[6]),
            registered_block=int(t[7]),
            slashed_total_wei=int(t[8]),
        )

    def node_of(self, operator: str) -> str | None:
        """Owner whose current operator key is `operator`, else None."""
        owner = self._view("node_of", Web3.to_checksum_address(operator))
        return None if int(owner, 16) == 0 else str(owner)

    def owner_of_operator(self, operator: str) -> str | None:
        """Owner `operator` was ever bound to (also after rotation), else None."""
        owner = self._view("owner_of_operator", Web3.to_checksum_address(operator))
        return None if int(owner, 16) == 0 else str(owner)

    def is_active(self, operator: str) -> bool:
        return bool(self._view("is_active", Web3.to_checksum_address(operator)))

    def node_count(self) -> int:
        return int(self._view("node_count"))

    def owners(self) -> list[str]:
        return [str(self._view("node_at", i)) for i in range(self.node_count())]

    def nodes(self) -> list[NodeInfo]:
        return [self.node(o) for o in self.owners()]

    def params(self) -> RegistryParams:
        return RegistryParams(
            min_stake_wei=int(self._view("min_stake")),
            unbonding_period=int(self._view("unbonding_period")),
            prover_share_bps=int(self._view("prover_share_bps")),
            slasher=str(self._view("slasher")),
            admin=str(self._view("owner")),
        )

    def credit_of(self, account: str) -> int:
        return int(self._view("credits", Web3.to_checksum_address(account)))

    def totals(self) -> dict[str, int]:
        return {
            k: int(self._view(k))
            for k in ("total_staked", "total_unbonding", "total_credits", "total_burned")
        }

    # -------------------------------------------------------------- owner (cold key)
    def register(
        self,
        operator: str,
        endpoint: str,
        hardware: Hardware,
        stake_wei: int,
        sender: Signer | None = None,
    ) -> TxResult:
        return self._send(
            "register",
            Web3.to_checksum_address(operator),
            endpoint,
            hardware.as_tuple(),
            sender=sender,
            value=stake_wei,
        )

    def add_stake(self, amount_wei: int, sender: Signer | None = None) -> TxResult:
        return self._send("add_stake", sender=sender, value=amount_wei)

    def request_unbond(self, amount_wei: int, sender: Signer | None = None) -> TxResult:
        return self._send("request_unbond", amount_wei, sender=sender)

    def withdraw(self, sender: Signer | None = None) -> TxResult:
        return self._send("withdraw", sender=sender)

    def rotate_operator(self, new_operator: str, sender: Signer | None = None) -> TxResult:
        return self._send("rotate_operator", Web3.to_checksum_address(new_operator), sender=sender)

    def unjail(self, sender: Signer | None = None) -> TxResult:
        return self._send("unjail", sender=sender)

    def claim(self, sender: Signer | None = None) -> TxResult:
        return self._send("claim", sender=sender)

    # -------------------------------------------------------------- owner or operator
    def set_endpoint(self, owner: str, endpoint: str, sender: Signer | None = None) -> TxResult:
        return self._send("set_endpoint", Web3.to_checksum_address(owner), endpoint, sender=sender)

    def set_hardware(
        self, owner: str, hardware: Hardware, sender: Signer | None = None
    ) -> TxResult:
        return self._send(
            "set_hardware", Web3.to_checksum_address(owner), hardware.as_tuple(), sender=sender
        )

    # -------------------------------------------------------------- roles
    def jail(
        self, owner: str, until_block: int, reason: str, sender: Signer | None = None
    ) -> TxResult:
        return self._send(
            "jail", Web3.to_checksum_address(owner), until_block, reason, sender=sender
        )

    def slash(
        self, owner: str, amount_wei: int, prover: str, reason: str, sender: Signer | None = None
    ) -> TxResult:
        return self._send(
            "slash",
            Web3.to_checksum_address(owner),
            amount_wei,
            Web3.to_checksum_address(prover),
            reason,
            sender=sender,
        )

    def set_slasher(self, slasher: str, sender: Signer | None = None) -> TxResult:
        return self._send("set_slasher", Web3.to_checksum_address(slasher), sender=sender)

    def set_params(
        self,
        min_stake_wei: int,
        unbonding_period: int,
        prover_share_bps: int,
        sender: Signer | None = None,
    ) -> TxResult:
        """Behind the timelock: `queue_params` the same values first unless the delay is zero."""
        return self._send(
            "set_params", min_stake_wei, unbonding_period, prover_share_bps, sender=sender
        )

    def queue_params(
        self, min_stake_wei: int, unbonding_period: int, prover_share_bps: int,
        sender: Signer | None = None,
    ) -> TxResult:
        op = bytes(self._view("params_op", min_stake_wei, unbonding_period, prover_share_bps))
        return self._send("queue", op, sender=sender)

    def stake_at(self, owner: str, block: int) -> int:
        """The node's stake at the end of `block` (its checkpoints)."""
        return int(self._view("stake_at", Web3.to_checksum_address(owner), block))

    def locks(self, owner: str) -> int:
        """Open verification tasks holding the node (it cannot withdraw while > 0)."""
        return int(self._view("locks", Web3.to_checksum_address(owner)))
