"""Phase 1: `allocate(snapshot) -> Plan`, the fast deterministic model-allocation heuristic.

Every replica is priced at the batch it will run (`scheduler.costs`: KV room and `max_batch` set
the batch, the request mix sets the prefill work, the roofline or measured step times the step).
Steps (DESIGN §4): (1) nodes that hold the whole model alone become one-stage replicas; (2) inside
each region — and, up to `POOLED_MAX` nodes, also over all regions at once, which finds a big GPU's
partner in another region — the rest are grouped into pipelines by a few candidate rules:
consecutive by speed (similar GPUs together), consecutive by capacity (fewest stages),
capacity-balanced bins (one big and one small node per bin when that is what fits) — each sized for
a few KV targets, and the rule whose replicas score the most aggregate throughput wins; (3) what no
region could use is pooled across regions in region order; (4) spare nodes are offered to the
replica they help most, then a second chance releases the slowest members of the replicas that
miss them least to form new replicas with the spares; on small clusters pairs of replicas swap
nodes where neither routing loses (`exchange`); a last pass tries other first/last stages.
Each replica's split (`split.best_split`) reserves KV for a batch target and gives layers to the
cheapest nodes first, or bounds its busiest stage where prompts make one stage the bottleneck; a
slow member is dropped when the replica is faster without it.
(5) No stragglers: the plan and its variants without its slowest replicas (their nodes offered
back or left standby) are scored under both routings — summed throughput for a load-aware router,
replicas × the slowest for round robin — and the one whose worse routing comes closest to its
target share of the best (`choose`) is kept. No randomness, and every tie is broken by node id,
so the same snapshot always gives the same plan.
"""

from __future__ import annotations

import numpy as np

from scheduler.choose import candidates, choose, regrow
from scheduler.costs import ALONE, FIRST, LAST, MID, Cluster, build_cluster, estimate
from scheduler.errors import CannotPlace
from scheduler.group import (
    Built,
    augment,
    build_replica,
    exchange,
    extra_layers,
    grouped,
    polish,
    release_slowest,
    usable,
    with_ends,
)
from scheduler.model import MIB, Plan, Replica, Snapshot, Stage

SOLVER = "veriplex-batchfill-v2"


def diagnose(c: Cluster, snapshot: Snapshot) -> None:
    """Raise `CannotPlace` with the shortfall when no replica can exist at all."""
    m = snapshot.model
    need = m.total_bytes
    if len(c) == 0:
        total = len(snapshot.nodes)
        raise CannotPlace("the cluster has no available nodes",
                          [f"{total} node(s) listed, 0 available; one replica needs "
                           f"{need / MIB:,.0f} MiB of weights"])
    if int(c.cap[:, MID].max()) < 1 and int(c.cap[:, ALONE].max()) < m.layers:
        big = int(np.argmax(c.budget))
        raise CannotPlace("no node can hold one layer", [
            f"one layer needs {m.layer_bytes / MIB:,.1f} MiB; the largest weight budget is "
            f"{max(int(c.budget[big]), 0) / MIB:,.1f} MiB (node {c.ids[big]}: VRAM × "
            f"{snapshot.params.memory_utilization} − KV reserve {snapshot.params.kv_reserve_mib} MiB)"])
    held = int(np.clip(c.cap[:, MID], 0, None).sum())
    if int(c.cap[:, ALONE].max()) < m.layers and held < m.layers + extra_layers(c):
        pool = float(np.clip(c.budget, 0, None).sum())
        raise CannotPlace("the model is larger than the pool", [
            f"one replica needs {need / MIB:,.0f} MiB ({m.layers} layers × "
            f"{m.layer_bytes / MIB:,.1f} MiB + embedding/LM head); the {len(c)} available nodes "
            f"hold {held} whole layers ({pool / MIB:,.0f} MiB of weight budget)",
            f"short by about {max(need - held * m.layer_bytes, m.layer_bytes) / MIB:,.0f} MiB"])


POOLED_MAX = 512  # nodes up to which the pooled grouping is tried besides region-first


def solve(c: Cluster) -> tuple[list[Built], list[int]]:
    """The heuristic over a built cluster: replicas and unused nodes (both deterministic)."""
    L = c.model.layers
    alone: list[Built] = []
    pool = []
    for i in range(len(c)):
        rep = build_replica(c, [i])[0] if int(c.cap[i, ALONE]) >= L else None
        if rep is not None and usable(c, rep[2]):
            alone.append(rep)
        else:  # too small alone, or no KV room / too slow alone: pipeline it with others
            pool.append(i)
    weak = [i for i in pool if int(c.cap[i, MID]) < 1]
    pool = [i for i in pool if int(c.cap[i, MID]) >= 1]
    options: list[tuple[list[Built], list[int]]] = []
    # Pooling every region at once finds cross-region pairings (a big GPU in one region with a
    # small one in another) that region-first grouping misses; in large clusters every region
    # has partners enough, and the pooled pass would cost as much again.
    pooled = len(c.regions) > 1 and len(pool) <= POOLED_MAX
    for by_region in (True, False) if pooled else (True,):
        formed, rest = grouped(c, pool, by_region)
        built, rest = augment(c, alone + formed, sorted(set(rest)))
        spare = [i for i in sorted(set(rest)) if int(c.cap[i, MID]) >= 1]
        built, rest = release_slowest(c, built, spare)
        built = polish(c, exchange(c, built))
        ok = [usable(c, b[2]) for b in built]
        kept = [b for b, good in zip(built, ok, strict=False) if good]
        rest.extend(i for b, good in zip(built, ok, strict=False) if not good for i in b[0])
        options.extend(candidates(c, kept, rest))
    kept, rest = choose(options)
    if rest and len(kept) < max(len(b) for b, _ in options):  # stragglers were left out
        kept, rest = choose([(kept, rest), regrow(c, kept, rest)])
    return kept, sorted(set(rest) | set(weak))


def to_plan(c: Cluster, built: list[Built], unused: list[int], snapshot: Snapshot,
            solver: str) -> Plan:
    """Canonical plan: replicas sorted by their first node's id; estimates summed."""
    replicas = []
    for order, k, _ in built:
        bounds = np.concatenate([[0], np.cumsum(k)])
        replicas.append(Replica(stages=tuple(
            Stage(node=c.ids[i], start=int(bounds[s]), end=int(bounds[s + 1]))
            for s, i in enumerate(order))))
    keyed = sorted(zip(replicas, built, strict=False), key=lambda rb: rb[0].stages[0].node)
    used = {s.node for r in replicas for s in r.stages}
    standby = sorted(set(c.ids) - used)
    ests = [b[2] for _, b in keyed]
    est = {
        "throughput_tok_s": float(sum(e.throughput for e in ests)),
        "throughput_rr_tok_s": float(len(ests) * min((e.throughput for e in ests), default=0.0)),
        "concurrency": float(sum(e.batch for e in ests)),
        "tpot_ms": _weighted_median([e.tpot_s * 1e3 for e in ests],
                                    [e.throughput for e in ests]),
        # The mean request's: requests reach replicas in proportion to their throughput. Unlike
        # the median, it does not jump between replicas when their shares sit near one half.
        "mean_tpot_ms": float(np.average([e.tpot_s for e in ests],
                                         weights=[e.throughput for e in ests]) * 1e3)
        if ests and sum(e.throughput for e in ests) > 0 else 0.0,
        "max_tpot_ms": float(max((e.tpot_s for e in ests), default=0.0) * 1e3),
        "max_ttft_ms": float(max((e.ttft_s for e in ests), default=0.0) * 1e3),
        "replicas": float(len(ests)),
        "max_latency_ms": float(max((e.latency_s for e in ests), default=0.0) * 1e3),
        "mean_stages": float(np.mean([len(r.stages) for r in replicas])) if replicas else 0.0,
        "cross_region_hops": float(sum(
            int(c.region[o[s]] != c.region[o[(s + 1) % len(o)]])
            for o, _, _ in built if len(o) > 1 for s in range(len(o)))),
    }
    return Plan(model=snapshot.model, replicas=tuple(r for r, _ in keyed), standby=tuple(standby),
                snapshot_hash=snapshot.canonical_hash(), solver=solver, estimate=est)


def _weighted_median(values: list[float], weights: list[float]) -> float:
    """The value below which half the weight lies (requests go to replicas by throughput)."""
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(w for _, w in pairs)
    acc = 0.0
    for v, w in pairs:
        acc += w
        if acc >= total / 2:
            return float(v)
    return float(pairs[-1][0]) if pairs else 0.0


def allocate(snapshot: Snapshot) -> Plan:
    """Phase 1. Raises `CannotPlace` (with the shortfall) when not even one replica fits."""
    c = build_cluster(snapshot)
    diagnose(c, snapshot)
    built, unused = solve(c)
    if not built:
        bound = snapshot.params.latency_bound_ms
        raise CannotPlace("no replica meets the latency bound", [
            f"every candidate pipeline's unloaded token round trip exceeds {bound:g} ms "
            f"(params.latency_bound_ms), or leaves no KV room for one sequence of "
            f"{snapshot.params.context_tokens} tokens"])
    return to_plan(c, built, unused, snapshot, SOLVER)


def plan_score(snapshot: Snapshot, plan: Plan) -> float:
    """Estimated aggregate throughput (tokens/s) of any plan under the shared cost model."""
    c = build_cluster(snapshot)
    total = 0.0
    for rep in plan.replicas:
        order = [c.index[s.node] for s in rep.stages]
        total += estimate(c, order, [s.layers for s in rep.stages]).throughput
    return total


# `Built`, `augment`, `build_replica`, `usable` and `with_ends` are re-exported for dynamics,
# replace and the exact solver, which build on the same replica forming.
__all__ = ["allocate", "diagnose", "plan_score", "to_plan", "SOLVER", "FIRST", "LAST", "Built",
           "augment", "build_replica", "usable", "with_ends"]
