"""Membership changes without global reshuffles (DESIGN §4, Dynamics). Pure functions over plans.

* `apply_heartbeats`: measured per-layer latency replaces the roofline; nodes silent for longer
  than the timeout become unavailable (`missed`).
* `join`: a new node is placed where it adds the most throughput — alone if it holds the model,
  into the one replica it helps most (that replica alone is re-water-filled), or together with
  standby nodes as a new replica; every other replica is left exactly as it was.
* `leave`: the node's replica is repaired from its remaining members plus standby nodes (nearest
  region and fastest first); if it cannot be, it is dissolved into standby. `reroute` then gives
  every in-flight request that touched the node a new route.
* `rebalance`: a global re-allocation is returned only when the current plan leaves more than a
  threshold of the fresh solver's estimated throughput on the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from scheduler.allocate import (
    SOLVER,
    Built,
    allocate,
    augment,
    build_replica,
    plan_score,
    to_plan,
    usable,
)
from scheduler.costs import ALONE, Cluster, build_cluster, estimate
from scheduler.errors import CannotPlace, InvalidInput, NoRoute
from scheduler.model import NodeSpec, Plan, Snapshot
from scheduler.route import NodeLoad, Route, Router


@dataclass(frozen=True)
class Heartbeat:
    node: str
    at_s: float  # sender's timestamp as seen by the coordinator
    load: NodeLoad = NodeLoad()
    layer_ms: float | None = None  # measured decode time per layer


def missed(last_seen: Mapping[str, float], now_s: float, timeout_s: float) -> list[str]:
    """Nodes whose last heartbeat is older than `timeout_s` at `now_s` (sorted)."""
    return sorted(n for n, t in last_seen.items() if now_s - t > timeout_s)


def apply_heartbeats(snapshot: Snapshot, beats: list[Heartbeat], now_s: float,
                     timeout_s: float) -> Snapshot:
    """A new snapshot: measured latencies folded in; silent nodes marked unavailable."""
    last: dict[str, float] = {}
    measured: dict[str, float] = {}
    for hb in sorted(beats, key=lambda h: (h.at_s, h.node)):
        last[hb.node] = hb.at_s
        if hb.layer_ms is not None:
            measured[hb.node] = hb.layer_ms
    gone = set(missed(last, now_s, timeout_s)) | {n.id for n in snapshot.nodes if n.id not in last}
    nodes = [replace(n, available=n.available and n.id not in gone,
                     layer_ms=measured.get(n.id, n.layer_ms)) for n in snapshot.nodes]
    return snapshot.with_nodes(nodes)


def _built(c: Cluster, plan: Plan) -> list[Built]:
    out = []
    for rep in plan.replicas:
        if any(s.node not in c.index for s in rep.stages):
            raise InvalidInput(f"plan replica {rep.nodes} names a node that is not available")
        order = [c.index[s.node] for s in rep.stages]
        k = [s.layers for s in rep.stages]
        out.append((order, k, estimate(c, order, k)))
    return out


def _standby(c: Cluster, built: list[Built]) -> list[int]:
    used = {i for b in built for i in b[0]}
    return [i for i in range(len(c)) if i not in used]


def join(snapshot: Snapshot, plan: Plan, node: NodeSpec) -> Plan:
    """Place `node` (new to `snapshot`) without touching more than one replica."""
    if any(n.id == node.id for n in snapshot.nodes):
        raise InvalidInput(f"node {node.id!r} is already in the snapshot")
    snap = snapshot.with_nodes(list(snapshot.nodes) + [node])
    c = build_cluster(snap)
    built = _built(c, plan)
    new = c.index.get(node.id)
    if new is None:  # joined but unavailable: standby
        return to_plan(c, built, [], snap, plan.solver or SOLVER)
    options: list[tuple[float, list[Built]]] = []
    if int(c.cap[new, ALONE]) >= c.model.layers:
        rep, _ = build_replica(c, [new])
        if rep is not None and usable(c, rep[2]):
            options.append((rep[2].throughput, built + [rep]))
    grown, unused = augment(c, built, [new])
    if new not in unused:
        options.append((sum(b[2].throughput for b in grown)
                        - sum(b[2].throughput for b in built), grown))
    spare = sorted(_standby(c, built), key=lambda i: (int(c.region[i]) != int(c.region[new]),
                                                      float(c.tau[i]), c.ids[i]))
    pool = [new]
    for i in spare:
        if i == new:
            continue
        pool.append(i)
        rep, _ = build_replica(c, pool)
        if rep is not None and usable(c, rep[2]):
            if new in rep[0]:
                options.append((rep[2].throughput, built + [rep]))
            break
    if not options:
        return to_plan(c, built, [], snap, plan.solver or SOLVER)
    _, best = max(options, key=lambda o: o[0])
    return to_plan(c, best, [], snap, plan.solver or SOLVER)


def leave(snapshot: Snapshot, plan: Plan, node_id: str) -> Plan:
    """Evict `node_id`: repair its replica locally, or dissolve it into standby."""
    if all(n.id != node_id for n in snapshot.nodes):
        raise InvalidInput(f"node {node_id!r} is not in the snapshot")
    snap = snapshot.with_nodes([replace(n, available=False) if n.id == node_id else n
                                for n in snapshot.nodes])
    c = build_cluster(snap)
    keep = [r for r in plan.replicas if node_id not in r.nodes]
    hit = [r for r in plan.replicas if node_id in r.nodes]
    built = _built(c, replace(plan, replicas=tuple(keep)))
    for rep in hit:
        members = [c.index[n] for n in rep.nodes if n != node_id]
        region = int(c.region[members[0]]) if members else 0
        spare = sorted((i for i in _standby(c, built) if i not in members),
                       key=lambda i: (int(c.region[i]) != region, float(c.tau[i]), c.ids[i]))
        got, _ = build_replica(c, members) if members else (None, [])
        for i in spare:
            if got is not None and usable(c, got[2]):
                break
            members.append(i)
            got, _ = build_replica(c, members)
        if got is not None and not usable(c, got[2]):
            got = None
        if got is not None:
            built.append(got)
    if not built:
        raise CannotPlace(f"after node {node_id} left, no replica can be formed",
                          [f"{len(c)} nodes remain available"])
    return to_plan(c, built, [], snap, plan.solver or SOLVER)


def reroute(snapshot: Snapshot, plan: Plan, in_flight: Mapping[str, Route],
            evicted: set[str], loads: Mapping[str, NodeLoad] | None = None,
            tokens: Mapping[str, tuple[int, int]] | None = None) -> dict[str, Route | None]:
    """New routes for requests whose route used an evicted node (None: none admissible now).

    `tokens[req]` is `(tokens so far, tokens still to generate)`; the new hops rebuild their KV
    by replaying the sequence so far as a prefill (DESIGN §3)."""
    router = Router(snapshot, plan)
    out: dict[str, Route | None] = {}
    for req in sorted(in_flight):
        route = in_flight[req]
        if not evicted & {h.node for h in route.hops}:
            continue
        try:
            done, left = (tokens or {}).get(req, (1, 1))
            out[req] = router.route(loads, done, left, exclude=evicted)
        except NoRoute:
            out[req] = None
    return out


def imbalance(snapshot: Snapshot, plan: Plan, fresh: Plan | None = None) -> float:
    """Share of the fresh solver's estimated throughput the current plan leaves unused (0..1)."""
    fresh = fresh or allocate(snapshot)
    best = plan_score(snapshot, fresh)
    if best <= 0:
        return 0.0
    try:
        current = plan_score(snapshot, plan)
    except KeyError:  # the plan names nodes that are gone
        current = 0.0
    return max(0.0, 1.0 - current / best)


def rebalance(snapshot: Snapshot, plan: Plan, threshold: float = 0.2) -> tuple[Plan, bool]:
    """`(fresh plan, True)` when imbalance exceeds `threshold`, else `(plan, False)`."""
    if not 0 <= threshold < 1:
        raise InvalidInput(f"threshold must be in [0, 1), got {threshold}")
    fresh = allocate(snapshot)
    if imbalance(snapshot, plan, fresh) > threshold:
        return fresh, True
    return plan, False
