"""The scheduler's exception tree (see the package docstring for the drawing).

Every error the pure core raises derives from `SchedulerError`, so a service or the CLI can turn any
of them into a clear message with one `except`. Messages quote the offending values.
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Root of every error raised by `scheduler`."""


class InvalidInput(SchedulerError):
    """A snapshot, cluster, model, workload or allocation document is malformed or inconsistent."""


class CannotPlace(SchedulerError):
    """The nodes cannot hold even one complete replica of the model.

    `shortfall` lists, one line each, what is missing (e.g. bytes short of one replica, nodes too
    small to hold one layer), so operators know what to add.
    """

    def __init__(self, reason: str, shortfall: list[str] | None = None) -> None:
        self.reason = reason
        self.shortfall = list(shortfall or [])
        lines = [f"cannot place: {reason}"] + [f"  - {s}" for s in self.shortfall]
        super().__init__("\n".join(lines))


class InvalidPlan(SchedulerError):
    """An allocation breaks an invariant against its cluster (coverage, memory, unknown nodes)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid allocation:\n" + "\n".join(f"  - {p}" for p in self.problems))


class NoRoute(SchedulerError):
    """No chain of live shards with free KV memory covers every layer for this request."""
