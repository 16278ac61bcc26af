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
miss them least to form new replicas with the spares; a last pass tries other first/last stages.
Each replica's split (`costs.best_split`) reserves KV for a batch target and gives layers to the
cheapest nodes first; a slow member is dropped when the replica is faster without it.
(5) No stragglers: the plan and its variants without its slowest replicas (their nodes offered
back or left standby) are scored under both routings — summed throughput for a load-aware router,
replicas × the slowest for round robin — and the one whose worse routing comes closest to its
target share of the best (`choose`) is kept. No randomness, and every tie is broken by node id,
so the same snapshot always gives the same plan.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

from scheduler.costs import (
    ALONE,
    FIRST,
    LAST,
    MID,
    Cluster,
    ReplicaEstimate,
    best_split,
    build_cluster,
    estimate,
)
from scheduler.errors import CannotPlace
from scheduler.model import MIB, Plan, Replica, Snapshot, Stage

SOLVER = "veriplex-batchfill-v2"

Built = tuple[list[int], list[int], ReplicaEstimate]  # (node order, layers per stage, estimate)


def stage_order(c: Cluster, members: list[int]) -> list[int]:
    """Pipeline order: the two nodes with the most spare memory take the embedding (first) and the
    LM head (last); the middle runs region by region, starting from the first node's region and
    ending in the last's, so the ring crosses each region boundary as few times as possible."""
    if len(members) <= 1:
        return list(members)
    by_room = sorted(members, key=lambda i: (-int(c.budget[i]), c.ids[i]))
    first, last = by_room[0], by_room[1]
    rf, rl = int(c.region[first]), int(c.region[last])
    middle = sorted(by_room[2:], key=lambda i: (int(c.region[i]) != rf, int(c.region[i]) == rl,
                                                int(c.region[i]), c.ids[i]))
    return [first, *middle, last]


def split(c: Cluster, order: list[int]) -> tuple[list[int], ReplicaEstimate] | None:
    """The best layer split of `order` at the batch it will run (`costs.best_split`)."""
    return best_split(c, order)


def _rank(c: Cluster, est: ReplicaEstimate) -> tuple[bool, float]:
    """Usable (a sequence fits, within the latency bound) first, then throughput."""
    return usable(c, est), est.throughput


def usable(c: Cluster, est: ReplicaEstimate) -> bool:
    """Serves at least one sequence within the latency bound."""
    return est.batch >= 1 and est.latency_s * 1e3 <= c.snapshot.params.latency_bound_ms


def build_replica(c: Cluster, members: list[int]) -> tuple[Built | None, list[int]]:
    """Water-fill `members`, dropping the slowest node while that raises throughput.

    Returns the replica (or None) and the members it did not use.
    """
    key = ("replica", frozenset(members))
    if key in c.memo:  # candidate groupings often repeat a group
        best, rest = c.memo[key]
        return best, list(rest)
    members = sorted(members, key=lambda i: (float(c.tau[i]), c.ids[i]))
    best: Built | None = None
    for n in range(len(members), 0, -1):
        order = stage_order(c, members[:n])
        res = split(c, order)
        if res is None:
            break  # fewer members hold even less
        k, est = res
        if best is not None and _rank(c, est) <= _rank(c, best[2]):
            break
        best = (order, k, est)
    used = set(best[0]) if best is not None else set()
    rest = [i for i in members if i not in used]
    c.memo[key] = (best, tuple(rest))
    return best, rest


def replica_bytes(c: Cluster, batch: int) -> float:
    """Memory one replica needs: all weights plus KV for `batch` sequences of the mean context."""
    m = c.model
    kv = batch * m.kv_bytes_per_token_layer * c.snapshot.params.context_tokens * m.layers
    return float(m.total_bytes + kv)


def _sequential(c: Cluster, nodes: list[int], key: Callable[[int], tuple],
                need: float) -> list[list[int]]:
    """Consecutive groups (in `key` order), each closed once its usable memory reaches `need`."""
    L = c.model.layers
    groups, cur, held, mem = [], [], 0, 0.0
    for i in sorted(nodes, key=key):
        cur.append(i)
        held += int(c.cap[i, MID])
        mem += float(c.usable[i])
        if held >= L + _extra_layers(c) and mem >= need:
            groups.append(cur)
            cur, held, mem = [], 0, 0.0
    if cur:
        groups.append(cur)
    return groups


def _balanced(c: Cluster, nodes: list[int], m: int) -> list[list[int]]:
    """`m` bins of near-equal capacity (largest node first into the emptiest bin)."""
    bins: list[list[int]] = [[] for _ in range(m)]
    heap = [(0, b) for b in range(m)]
    for i in sorted(nodes, key=lambda i: (-int(c.cap[i, MID]), float(c.tau[i]), c.ids[i])):
        held, b = heapq.heappop(heap)
        bins[b].append(i)
        heapq.heappush(heap, (held + int(c.cap[i, MID]), b))
    return bins


def _extra_layers(c: Cluster) -> int:
    m = c.model
    return -(-m.extra_bytes(True, True) // m.layer_bytes) if m.layer_bytes else 0


def _build_all(c: Cluster, groups: list[list[int]]) -> tuple[list[Built], list[int]]:
    built, rest = [], []
    for g in groups:
        rep, unused = build_replica(c, g)
        if rep is not None and usable(c, rep[2]):
            built.append(rep)
            rest.extend(unused)
        else:
            rest.extend(g)
    return built, rest


def _score(built: list[Built]) -> float:
    return sum(b[2].throughput for b in built)


def group_region(c: Cluster, nodes: list[int]) -> tuple[list[Built], list[int]]:
    """Best grouping of one region's nodes into replicas; returns replicas and unused nodes.

    Candidates: consecutive by speed and by capacity, and capacity-balanced bins, each sized for
    a few target concurrencies (KV for one sequence, a quarter, half or all of `max_batch`).
    """
    if not nodes:
        return [], []
    L = c.model.layers
    total_layers = sum(int(c.cap[i, MID]) for i in nodes)
    total_mem = sum(float(c.usable[i]) for i in nodes)
    mb = c.snapshot.params.max_batch
    by_speed = lambda i: (float(c.tau[i]), -int(c.cap[i, MID]), c.ids[i])  # noqa: E731
    by_cap = lambda i: (-int(c.cap[i, MID]), float(c.tau[i]), c.ids[i])  # noqa: E731
    candidates, seen_m = [], set()
    for target in sorted({1, max(mb // 4, 1), max(mb // 2, 1), mb}):
        need = replica_bytes(c, target)
        candidates.append(_sequential(c, nodes, by_speed, need))
        candidates.append(_sequential(c, nodes, by_cap, need))
        top = min(total_layers // (L + _extra_layers(c)), int(total_mem // need))
        for m in (top, top - 1):  # one bin fewer when the last bins come up short of the model
            if m >= 1 and m not in seen_m:
                seen_m.add(m)
                candidates.append(_balanced(c, nodes, m))
    best: tuple[list[Built], list[int]] | None = None
    for groups in candidates:
        built, rest = _build_all(c, groups)
        if best is None or _score(built) > _score(best[0]) + 1e-12:
            best = (built, rest)
    assert best is not None
    return best


def augment(c: Cluster, built: list[Built], spare: list[int],
            max_tries: int = 8) -> tuple[list[Built], list[int]]:
    """Add each spare node (fastest first) to the replica it helps most — same region first, the
    most KV-starved replicas first, `max_tries` candidates per node — if it helps at all."""
    built = list(built)
    unused: list[int] = []
    for i in sorted(spare, key=lambda i: (float(c.tau[i]), c.ids[i])):
        if int(c.cap[i, MID]) < 1:
            unused.append(i)
            continue
        ranked = sorted(range(len(built)), key=lambda r: (
            int(c.region[built[r][0][0]]) != int(c.region[i]), built[r][2].batch,
            built[r][2].throughput, c.ids[built[r][0][0]]))[:max_tries]
        best_gain, best_r, best_rep = 0.0, -1, None
        for r in ranked:
            rep, _ = build_replica(c, list(built[r][0]) + [i])
            if rep is not None and i in rep[0] and usable(c, rep[2]):
                gain = rep[2].throughput - built[r][2].throughput
                if gain > best_gain + 1e-12:
                    best_gain, best_r, best_rep = gain, r, rep
        if best_rep is None:
            unused.append(i)
            continue
        dropped = [j for j in built[best_r][0] if j not in best_rep[0]]
        built[best_r] = best_rep
        unused.extend(dropped)
    return built, unused


def polish(c: Cluster, built: list[Built], top: int = 3) -> list[Built]:
    """Final pass per replica: try each ordered pair of its `top` roomiest nodes as first (holds
    the embedding) and last (the LM head) stage, keeping the best split."""
    out = []
    for order, k, est in built:
        best = (order, k, est)
        if len(order) >= 2:
            room = sorted(order, key=lambda i: (-int(c.budget[i]), c.ids[i]))[:top]
            for first in room:
                for last in room:
                    if first == last or (first, last) == (order[0], order[-1]):
                        continue
                    cand = stage_order(c, [i for i in order if i not in (first, last)])
                    cand = with_ends(c, cand, first, last)
                    res = split(c, cand)
                    if res is not None and _rank(c, res[1]) > _rank(c, best[2]):
                        best = (cand, res[0], res[1])
        out.append(best)
    return out


def with_ends(c: Cluster, middle: list[int], first: int, last: int,
              rank: np.ndarray | None = None) -> list[int]:
    """`first`, the middle ordered by the region rule of `stage_order`, then `last`. Ties inside a
    region go by `rank` first when given (the exact solver's node types), then by id."""
    rf, rl = int(c.region[first]), int(c.region[last])
    mid = sorted(middle, key=lambda i: (int(c.region[i]) != rf, int(c.region[i]) == rl,
                                        int(c.region[i]), 0 if rank is None else int(rank[i]),
                                        c.ids[i]))
    return [first, *mid, last]


def release_slowest(c: Cluster, built: list[Built], spare: list[int],
                    max_released: int = 32) -> tuple[list[Built], list[int]]:
    """Second chance for spare nodes: release the slowest member of the replicas that lose least
    without it, and try to form new replicas from spares plus released nodes (region by region,
    slowest with slowest). The best prefix of releases is kept if it raises total throughput."""
    if not spare:
        return built, spare
    losses = []
    for r, (order, _, est) in enumerate(built):
        if len(order) < 2:
            continue
        slow = max(order, key=lambda i: (float(c.tau[i]), c.ids[i]))
        rep, _ = build_replica(c, [i for i in order if i != slow])
        if rep is not None and usable(c, rep[2]):
            losses.append((est.throughput - rep[2].throughput, c.ids[slow], r, slow, rep))
    losses.sort(key=lambda x: (x[0], x[1]))
    losses = losses[:max_released]
    key = lambda i: (int(c.region[i]), float(c.tau[i]), c.ids[i])  # noqa: E731
    best_gain, best_n, best_new = 0.0, 0, None
    lost = 0.0
    for n in range(0, len(losses) + 1):
        if n:
            lost += losses[n - 1][0]
        pool = list(spare) + [x[3] for x in losses[:n]]
        mb = c.snapshot.params.max_batch
        for target in sorted({1, max(mb // 4, 1), mb}):
            new, _ = _build_all(c, _sequential(c, pool, key, replica_bytes(c, target)))
            gain = _score(new) - lost
            if gain > best_gain + 1e-9:
                best_gain, best_n, best_new = gain, n, new
    if best_new is None:
        return built, spare
    out = list(built)
    for _, _, r, _, rep in losses[:best_n]:
        out[r] = rep
    out.extend(best_new)
    used = {i for b in out for i in b[0]}
    return out, [i for i in range(len(c)) if i not in used]


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
    if int(c.cap[:, ALONE].max()) < m.layers and held < m.layers + _extra_layers(c):
        pool = float(np.clip(c.budget, 0, None).sum())
        raise CannotPlace("the model is larger than the pool", [
            f"one replica needs {need / MIB:,.0f} MiB ({m.layers} layers × "
            f"{m.layer_bytes / MIB:,.1f} MiB + embedding/LM head); the {len(c)} available nodes "
            f"hold {held} whole layers ({pool / MIB:,.0f} MiB of weight budget)",
            f"short by about {max(need - held * m.layer_bytes, m.layer_bytes) / MIB:,.0f} MiB"])


# The share of the best plan each routing should keep. Round robin's is looser (0.75): a slower
# replica still adds to what the load-aware router serves, and dropping it for round robin's sake
# beyond this cost more than it saved over the bench's generated clusters (0.9 and 0.6 were worse).
ROUTER_TARGET, RR_TARGET = 0.95, 0.75


def rates(built: list[Built]) -> tuple[float, float]:
    """(load-aware, round-robin) throughput of a plan: the summed replica throughput, and the
    replicas × the slowest one (round robin gives every replica the same share of requests, so
    the slowest sets the finish time)."""
    if not built:
        return 0.0, 0.0
    xs = [b[2].throughput for b in built]
    return sum(xs), len(xs) * min(xs)


def plan_value(built: list[Built]) -> float:
    """The summed throughput, for ranking plans that are equally robust."""
    return rates(built)[0]


def candidates(c: Cluster, built: list[Built], rest: list[int]
               ) -> list[tuple[list[Built], list[int]]]:
    """The plan and its straggler-free variants: without its slowest replicas (their nodes
    standby), each listed only if its round robin beats every longer one's."""
    ranked = sorted(built, key=lambda b: (-b[2].throughput, c.ids[b[0][0]]))
    out = [(built, rest)]
    best_q = rates(built)[1]
    for n in range(len(ranked) - 1, 0, -1):
        q = ranked[n - 1][2].throughput * n
        if q <= best_q * (1 + 1e-9):
            continue
        best_q = q
        out.append((ranked[:n], sorted({i for b in ranked[n:] for i in b[0]} | set(rest))))
    return out


POOLED_MAX = 512  # nodes up to which the pooled grouping is tried besides region-first
REGROW_MAX = 32  # freed nodes offered back to the kept replicas (fastest first)


def regrow(c: Cluster, kept: list[Built], freed: list[int]) -> tuple[list[Built], list[int]]:
    """Offer the nodes a straggler-free variant left standby to its replicas (`augment`: a slow
    node paired with fast ones where it adds KV room or layers), the `REGROW_MAX` fastest."""
    able = sorted((i for i in freed if int(c.cap[i, MID]) >= 1),
                  key=lambda i: (float(c.tau[i]), c.ids[i]))
    grown, unused = augment(c, kept, able[:REGROW_MAX])
    return grown, sorted(set(unused) | set(freed) - {i for b in grown for i in b[0]})


def choose(options: list[tuple[list[Built], list[int]]]) -> tuple[list[Built], list[int]]:
    """The option whose worse routing comes closest to its target share of the best option
    under that routing (no straggler replicas unless the load-aware gain pays for them)."""
    both = [rates(b) for b, _ in options]
    top_s = max(s for s, _ in both) or 1.0
    top_q = max(q for _, q in both) or 1.0
    score = [(min(s / top_s / ROUTER_TARGET, q / top_q / RR_TARGET), s) for s, q in both]
    j = max(range(len(options)), key=lambda j: (score[j][0] - 1e-9 * j, score[j][1]))
    return options[j]


def _grouped(c: Cluster, pool: list[int], by_region: bool) -> tuple[list[Built], list[int]]:
    """Replicas from `pool`: region by region then the leftovers across regions, or all at once."""
    built: list[Built] = []
    rest: list[int] = []
    leftovers: list[int] = []
    if by_region:
        for r in range(len(c.regions)):
            reps, unused = group_region(c, [i for i in pool if int(c.region[i]) == r])
            built.extend(reps)
            leftovers.extend(unused)
    else:
        leftovers = list(pool)
    if leftovers:
        # Across regions, in region order, so each pooled replica spans as few regions as possible.
        if by_region:
            groups = _sequential(c, leftovers, lambda i: (int(c.region[i]), float(c.tau[i]),
                                                          c.ids[i]), replica_bytes(c, 1))
            reps, unused = _build_all(c, groups)
        else:
            reps, unused = group_region(c, leftovers)
        built.extend(reps)
        rest.extend(unused)
    return built, rest


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
        grouped, rest = _grouped(c, pool, by_region)
        built, rest = augment(c, alone + grouped, sorted(set(rest)))
        spare = [i for i in sorted(set(rest)) if int(c.cap[i, MID]) >= 1]
        built, rest = release_slowest(c, built, spare)
        built = polish(c, built)
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


__all__ = ["allocate", "plan_score", "SOLVER", "FIRST", "LAST"]
