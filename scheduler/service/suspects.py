"""Failure reports weighed by the coordinator's own evidence: the pure bookkeeping.

A gateway whose stage died mid-request reports the operator (`FailureReport`, `POST /report`).
Waiting for the heartbeat timeout would leave its requests stalled for that long, so the
coordinator checks the node at once — but on its own evidence only, never on the report's word:
anyone can send a report, and a lie must not evict a live honest worker. The evidence is

* probes: the coordinator connects to the node's registered data port and sends a signed PING
  with a fresh nonce; the node is reachable only if a PONG for that nonce, signed by the node's
  operator key, comes back within the probe timeout (`scheduler.service.reports.probe`);
* heartbeats: when the node last sent a valid signed heartbeat (`CoordinatorState.last_seen`).

A report opens a *suspicion*. A probe that answers closes it at once (refuted: nothing changes).
The node is evicted only when at least `min_failed` probes in a row failed, the latest of them
began after the node's last heartbeat, and the node has been silent for more than `silence_s` —
i.e. it is neither reachable nor talking. A live worker therefore survives any report: its PONG
refutes it, and even where the coordinator cannot reach its data port (a partition, a busy
machine) its heartbeats keep it. A suspicion left undecided for `max_age_s` is dropped (the
heartbeat timeout, which evicts on silence alone, takes over). At most one probe per node runs at
a time and probes of one node are `every_s` apart, so reports cannot make the coordinator flood
anyone. Pure: times are passed in; the IO shell (`reports.py`) probes and applies the verdicts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class SuspectTiming:
    silence_s: float = 6.0  # heartbeat silence needed, on top of failed probes, to evict
    min_failed: int = 2  # failed probes in a row needed to evict
    every_s: float = 0.5  # least time between the starts of two probes of one node
    max_age_s: float = 60.0  # an undecided suspicion is dropped after this


class Verdict(enum.Enum):
    REFUTED = "refuted"  # reachable: the suspicion is closed, nothing changes
    PENDING = "pending"  # not decided yet: probe again later
    EVICT = "evict"  # unreachable and silent: evict now
    DROPPED = "dropped"  # undecided for too long: left to the heartbeat timeout


@dataclass
class Suspicion:
    opened_s: float
    reports: int = 1
    failed: int = 0  # probes in a row that got no valid PONG
    last_failed_start_s: float | None = None  # when the latest failed probe began
    probing_since_s: float | None = None  # a probe is in flight since then
    last_start_s: float | None = None
    detail: str = ""


class Suspects:
    """Open suspicions, one per reported node."""

    def __init__(self, timing: SuspectTiming | None = None) -> None:
        self.timing = timing or SuspectTiming()
        self.open: dict[str, Suspicion] = {}

    def report(self, op: str, now: float) -> Suspicion:
        """A report names `op`: open (or join) its suspicion."""
        s = self.open.get(op)
        if s is None:
            s = self.open[op] = Suspicion(opened_s=now)
        else:
            s.reports += 1
        return s

    def due(self, now: float) -> list[str]:
        """Suspects to probe now: none in flight, the last probe at least `every_s` ago."""
        return [op for op, s in sorted(self.open.items())
                if s.probing_since_s is None
                and (s.last_start_s is None or now - s.last_start_s >= self.timing.every_s)]

    def started(self, op: str, now: float) -> None:
        s = self.open[op]
        s.probing_since_s = s.last_start_s = now

    def probed(self, op: str, reachable: bool, detail: str, last_seen_s: float | None,
               now: float) -> Verdict:
        """Record the probe of `op` that began at `probing_since_s` and decide. `last_seen_s`:
        when `op`'s last valid heartbeat arrived (None: never)."""
        s = self.open.get(op)
        if s is None:
            return Verdict.DROPPED
        start = s.probing_since_s if s.probing_since_s is not None else now
        s.probing_since_s, s.detail = None, detail
        if reachable:
            del self.open[op]
            return Verdict.REFUTED
        s.failed += 1
        s.last_failed_start_s = start
        return self.decide(op, last_seen_s, now)

    def decide(self, op: str, last_seen_s: float | None, now: float) -> Verdict:
        """Evict, keep waiting, or drop `op`'s suspicion on the evidence so far."""
        s = self.open.get(op)
        if s is None:
            return Verdict.DROPPED
        silent_since = last_seen_s if last_seen_s is not None else s.opened_s
        if (s.failed >= self.timing.min_failed and s.last_failed_start_s is not None
                and s.last_failed_start_s > silent_since
                and now - silent_since > self.timing.silence_s):
            del self.open[op]
            return Verdict.EVICT
        if now - s.opened_s > self.timing.max_age_s and s.probing_since_s is None:
            del self.open[op]
            return Verdict.DROPPED
        return Verdict.PENDING

    def forget(self, op: str) -> None:
        """`op` left by other means (timeout, registry, LEAVE): nothing to decide any more."""
        self.open.pop(op, None)

    def silence_left(self, op: str, last_seen_s: float | None, now: float) -> float:
        """Seconds of silence `op` still needs before a failed probe can evict it."""
        s = self.open.get(op)
        since = last_seen_s if last_seen_s is not None else (s.opened_s if s else now)
        return max(0.0, self.timing.silence_s - (now - since))
