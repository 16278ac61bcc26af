"""Typed wrapper of the Scheduler contract: publishing epochs and reading assignments."""

from __future__ import annotations

from dataclasses import dataclass

from web3 import Web3

from contracts.binding import Binding, TxResult
from contracts.rpc import Signer


@dataclass(frozen=True, order=True)
class AllocationEntry:
    """(operator, model, [layer_start, layer_end)) of one epoch."""

    model_id: int
    layer_start: int
    layer_end: int
    operator: str

    def as_tuple(self) -> tuple[object, ...]:
        return (
            Web3.to_checksum_address(self.operator),
            self.model_id,
            self.layer_start,
            self.layer_end,
        )


@dataclass(frozen=True)
class Assignment:
    epoch: int
    model_id: int
    layer_start: int
    layer_end: int


class Scheduler(Binding):
    """`chain.scheduler`."""

    def epoch(self) -> int:
        return int(self._view("epoch"))

    def snapshot_hash(self, epoch: int) -> bytes:
        return bytes(self._view("snapshot_hash", epoch))

    def coordinator(self) -> str:
        return str(self._view("coordinator"))

    def current_assignment(self, operator: str) -> Assignment | None:
        ok, model, start, end = self._view("current_assignment", Web3.to_checksum_address(operator))
        return Assignment(self.epoch(), int(model), int(start), int(end)) if ok else None

    def publish_epoch(
        self, entries: list[AllocationEntry], snapshot_hash: bytes, sender: Signer | None = None
    ) -> int:
        """Publish an allocation (coordinator); entries are sorted as the contract requires.
        Returns the new epoch number."""
        ordered = sorted(entries)
        res = self._send(
            "publish_epoch", [e.as_tuple() for e in ordered], snapshot_hash, sender=sender
        )
        return int(res.event("EpochPublished").args["epoch"])

    def epoch_entries(self, epoch: int) -> list[AllocationEntry]:
        """The allocation of `epoch`, rebuilt from its events."""
        return [
            AllocationEntry(
                int(e.args["model_id"]),
                int(e.args["layer_start"]),
                int(e.args["layer_end"]),
                str(e.args["operator"]),
            )
            for e in self.events("AllocationAssigned", epoch=epoch)
        ]

    def set_coordinator(self, coordinator: str, sender: Signer | None = None) -> TxResult:
        return self._send("set_coordinator", Web3.to_checksum_address(coordinator), sender=sender)
