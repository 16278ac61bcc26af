"""Which published stages the coordinator may route: those whose node has confirmed them.

A new epoch names ranges that nodes still have to load; a request routed to a range before its
node serves it is refused (NOT_ASSIGNED). So a stage `(node, [a, b))` of a published epoch is
routable only when `node` is live and its latest heartbeat reports serving exactly `[a, b)` for
an epoch at or after `since[node]` — the first epoch of the unbroken run that gave the node this
range (a node that kept its range across epochs stays confirmed; one whose range changed is
confirmed by its first heartbeat after loading it). `routable_plans` gives the plans to try, in
order: the current epoch's confirmed stages, then those plus the previous epoch's stages that
their nodes still confirm (the old assignment, served while the new one loads). Pure: the
coordinator's state passes in what its heartbeats said.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from scheduler.model import Plan, Replica, Snapshot

Serving = Mapping[str, tuple[int, int, int]]  # node → (epoch, layer start, layer end) reported


class Epoch(Protocol):
    epoch: int
    plan: Plan
    snapshot: Snapshot
    since: dict[str, int]


def confirms(pub: Epoch, serving: Serving, live: set[str], node: str, start: int,
             end: int) -> bool:
    """`node` is live and reports serving `[start, end)` for an assignment of `pub`'s run."""
    got = serving.get(node)
    return (node in live and got is not None and (got[1], got[2]) == (start, end)
            and got[0] >= pub.since.get(node, pub.epoch))


def _confirmed(pub: Epoch, serving: Serving, live: set[str], skip: set[str],
               known: set[str]) -> list[Replica]:
    out = []
    for rep in pub.plan.replicas:
        stages = tuple(s for s in rep.stages if s.node not in skip and s.node in known
                       and confirms(pub, serving, live, s.node, s.start, s.end))
        if stages:
            out.append(Replica(stages=stages))
    return out


def routable_plans(current: Epoch, previous: Epoch | None, serving: Serving,
                   live: set[str]) -> list[Plan]:
    """Plans over confirmed stages to route on, best first (see the module docstring); every
    node they name is in `current.snapshot`."""
    known = {n.id for n in current.snapshot.nodes}
    now = _confirmed(current, serving, live, set(), known)
    plans = [replace(current.plan, replicas=tuple(now))]
    if previous is not None:
        have = {s.node for r in now for s in r.stages}
        old = _confirmed(previous, serving, live, have, known)
        if old:
            plans.append(replace(current.plan, replicas=tuple(now + old)))
    return plans


def shard_key(plan: Plan) -> tuple[tuple[str, int, int], ...]:
    """The shards a routing plan offers, as a cache key."""
    return tuple(sorted((s.node, s.start, s.end) for s in plan.stages()))
