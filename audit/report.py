"""An audit's findings: one `Check` per step with its `Status`, gathered in an `AuditReport`, and the
settled record the audit found on chain (`SettledRecord`). Shared by `check` and `outcome`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from contracts.batch import Leaf


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    PENDING = "pending"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "summary": self.summary,
                "details": self.details}


@dataclass
class AuditReport:
    request_id: str
    chain_id: int
    receipt_kind: str
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(c.status is Status.FAIL for c in self.checks)

    def add(self, name: str, status: Status, summary: str, **details: Any) -> Check:
        c = Check(name, status, summary, details)
        self.checks.append(c)
        return c

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "chain_id": self.chain_id,
                "receipt": self.receipt_kind, "ok": self.ok,
                "checks": [c.to_json() for c in self.checks], **self.facts}


@dataclass(frozen=True)
class SettledRecord:
    """The record as Payments settled it (its `RequestSettled` event)."""

    batch_id: int
    leaf: Leaf
    block_number: int
    tx_hash: str


def hx(b: bytes) -> str:
    return "0x" + bytes(b).hex()
