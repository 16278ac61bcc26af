"""Healing an eviction without moving anyone (DESIGN §4, Dynamics). Pure functions over plans.

`fill_gap(snapshot, plan, node_id)` re-places only the layers of an evicted node: its stage's
range `[a, b)` goes to one standby node (or, when none can hold it alone, to a few standby nodes
splitting it), and every other stage of every replica — the survivors of the hit replica included
— keeps exactly its node and its range, so no surviving worker reloads a shard and no request in
flight on a survivor fails. It returns None when no standby set yields a usable replica (a
sequence fits and the latency bound holds); the caller then falls back to `dynamics.leave` or to
phase 1. Candidates are the snapshot's available nodes that no replica uses; the best patch is
the one with the most estimated throughput (ties broken by node id), a single node preferred to
several. No IO, no clock, no randomness.
"""

from __future__ import annotations

from dataclasses import replace

from scheduler.allocate import SOLVER, Built, to_plan, usable
from scheduler.costs import Cluster, build_cluster, estimate, position
from scheduler.errors import InvalidInput
from scheduler.model import Plan, Replica, Snapshot

MAX_SPARES = 3  # standby nodes one evicted stage may be split across


def _kept(c: Cluster, rep: Replica) -> Built:
    order = [c.index[s.node] for s in rep.stages]
    k = [s.layers for s in rep.stages]
    return order, k, estimate(c, order, k)


def _split(c: Cluster, group: list[int], first_pos: int, n: int, gap: int) -> list[int] | None:
    """Layers of a `gap`-layer range for `group` (pipeline positions `first_pos`.. of `n`):
    one each, the rest to the cheapest per-layer nodes first, up to what each can hold."""
    caps = [int(c.cap[i, position(first_pos + g, n)]) for g, i in enumerate(group)]
    if min(caps) < 1 or sum(caps) < gap or len(group) > gap:
        return None
    k = [1] * len(group)
    left = gap - len(group)
    for g in sorted(range(len(group)), key=lambda g: (float(c.tau[group[g]]), c.ids[group[g]])):
        give = min(left, caps[g] - 1)
        k[g] += give
        left -= give
    return k if left == 0 else None


def _patch(c: Cluster, order: list[int], k: list[int], s: int, spares: list[int],
           max_spares: int) -> Built | None:
    """Replace stage `s` of (`order`, `k`) by spares; the best usable patch or None."""
    gap = k[s]
    best: tuple[tuple[float, ...], Built] | None = None
    n = len(order)
    for j in spares:  # one node holding the whole range: the survivors' neighbours unchanged
        if int(c.cap[j, position(s, n)]) < gap:
            continue
        o = order[:s] + [j] + order[s + 1:]
        est = estimate(c, o, k)
        if usable(c, est) and (best is None or est.throughput > best[0][0]):
            best = ((est.throughput,), (o, list(k), est))
    if best is not None:
        return best[1]
    # Several nodes share the range: neighbours' region first, then the most layers each holds.
    near = {int(c.region[order[x]]) for x in (s - 1, s + 1) if 0 <= x < n}
    ranked = sorted(spares, key=lambda j: (int(c.region[j]) not in near,
                                           -int(c.cap[j, position(1, 3)]), float(c.tau[j]),
                                           c.ids[j]))
    for size in range(2, max_spares + 1):
        group = ranked[:size]
        if len(group) < size:
            break
        m = n + size - 1
        layers = _split(c, group, s, m, gap)
        if layers is None:
            continue
        o = order[:s] + group + order[s + 1:]
        kk = k[:s] + layers + k[s + 1:]
        est = estimate(c, o, kk)
        if usable(c, est):
            return o, kk, est
    return None


def fill_gap(snapshot: Snapshot, plan: Plan, node_id: str,
             max_spares: int = MAX_SPARES) -> Plan | None:
    """`plan` with `node_id`'s stage re-placed on standby nodes of `snapshot`, every other stage
    unchanged; None when no usable patch exists (or `node_id` serves nothing in `plan`).

    Every node of `plan` but `node_id` must be available in `snapshot` (`InvalidInput`
    otherwise); `node_id` itself may be absent or unavailable — it is never a candidate."""
    snap = snapshot.with_nodes([replace(n, available=False) if n.id == node_id else n
                                for n in snapshot.nodes])
    c = build_cluster(snap)
    for st in plan.stages():
        if st.node != node_id and st.node not in c.index:
            raise InvalidInput(f"plan stage {st.node} [{st.start}, {st.end}) is not available "
                               f"in the snapshot")
    hit = [r for r in plan.replicas if node_id in r.nodes]
    if not hit:
        return None
    used = {c.index[s.node] for s in plan.stages() if s.node != node_id}
    spares = [i for i in range(len(c)) if i not in used]
    built: list[Built] = [_kept(c, r) for r in plan.replicas if node_id not in r.nodes]
    for rep in hit:
        s = rep.nodes.index(node_id)
        order = [c.index[x.node] if x.node != node_id else -1 for x in rep.stages]
        k = [x.layers for x in rep.stages]
        got = _patch(c, order, k, s, spares, max_spares)
        if got is None:
            return None
        spares = [i for i in spares if i not in got[0]]
        built.append(got)
    return to_plan(c, built, [], snap, plan.solver or SOLVER)


__all__ = ["fill_gap", "MAX_SPARES"]
