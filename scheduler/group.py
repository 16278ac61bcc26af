"""Forming replicas for phase 1 (`scheduler.allocate`): which nodes run one model replica together.

`build_replica` water-fills a group of nodes (`costs.best_split`: layers to the cheapest nodes
first, KV reserved for the batch the replica will run) and drops its slowest member while the
replica is faster without it. `group_region` groups a region's nodes by a few candidate rules —
consecutive by speed (similar GPUs together), consecutive by capacity (fewest stages),
capacity-balanced bins (one big and one small node per bin when that is what fits) — each sized
for a few KV targets, and keeps the rule whose replicas score the most aggregate throughput;
`grouped` does it region by region (then the leftovers across regions) or over all regions at
once. `augment` offers spare nodes to the replica they help most, `release_slowest` frees the
slowest members of the replicas that miss them least to form new replicas with the spares, and
`polish` tries other first/last stages. Pure and deterministic: every tie is broken by node id.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

from scheduler.costs import MID, Cluster, ReplicaEstimate
from scheduler.split import best_split

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
    """The best layer split of `order` at the batch it will run (`split.best_split`)."""
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
        if held >= L + extra_layers(c) and mem >= need:
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


def extra_layers(c: Cluster) -> int:
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
        top = min(total_layers // (L + extra_layers(c)), int(total_mem // need))
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


POLISH_KINDS = 6  # replicas of at most this many node kinds try every kind as first/last stage


def polish(c: Cluster, built: list[Built], top: int = 3) -> list[Built]:
    """Final pass per replica: try each ordered pair of its `top` roomiest nodes — and, in a
    replica of few node kinds, of one node per kind — as first (holds the embedding) and last (the
    LM head) stage, keeping the best split."""
    out = []
    for order, k, est in built:
        best = (order, k, est)
        if len(order) >= 2:
            room = sorted(order, key=lambda i: (-int(c.budget[i]), c.ids[i]))[:top]
            kinds = {int(c.kind[i]): i for i in sorted(order, key=lambda i: c.ids[i], reverse=True)}
            if len(kinds) <= POLISH_KINDS:  # also one node of every kind (a small GPU may end it)
                room = sorted(set(room) | set(kinds.values()), key=lambda i: c.ids[i])
            tried = set()
            for first in room:
                for last in room:
                    if first == last or (first, last) == (order[0], order[-1]):
                        continue
                    pair = (int(c.kind[first]), int(c.kind[last]))
                    if pair in tried:
                        continue
                    tried.add(pair)
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


def grouped(c: Cluster, pool: list[int], by_region: bool) -> tuple[list[Built], list[int]]:
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


EXCHANGE_MAX = 64  # clusters up to this many serving nodes get the pairwise exchange pass


def exchange(c: Cluster, built: list[Built], rounds: int = 2) -> list[Built]:
    """Local search over pairs of replicas: swap one node of each (node kinds differ) and keep the
    swap when neither routing loses — the summed throughput and the slowest replica both at least
    as high, one of them higher. Region-crossing groupings made early (a small node pooled into
    the wrong region's replica) are undone this way. Only up to `EXCHANGE_MAX` serving nodes."""
    if sum(len(b[0]) for b in built) > EXCHANGE_MAX or len(built) < 2:
        return built
    built = list(built)
    for _ in range(rounds):
        changed = False
        for x in range(len(built)):
            for y in range(x + 1, len(built)):
                got = _best_swap(c, built[x], built[y])
                if got is not None:
                    built[x], built[y] = got
                    changed = True
        if not changed:
            break
    return built


def _best_swap(c: Cluster, a: Built, b: Built) -> tuple[Built, Built] | None:
    """The best node swap between replicas `a` and `b` that loses under neither routing."""
    ta, tb = a[2].throughput, b[2].throughput
    base_sum, base_min = ta + tb, min(ta, tb)
    best, best_gain = None, 1e-9 * base_sum
    seen = set()
    for i in a[0]:
        for j in b[0]:
            key = (int(c.kind[i]), int(c.kind[j]))
            if key[0] == key[1] or key in seen:
                continue
            seen.add(key)
            na, ra = build_replica(c, [x for x in a[0] if x != i] + [j])
            nb, rb = build_replica(c, [x for x in b[0] if x != j] + [i])
            if na is None or nb is None or ra or rb or not (usable(c, na[2]) and usable(c, nb[2])):
                continue
            s = na[2].throughput + nb[2].throughput
            m = min(na[2].throughput, nb[2].throughput)
            if s - base_sum > best_gain and m >= base_min * (1 - 1e-12) or \
                    s >= base_sum * (1 - 1e-12) and m > base_min * (1 + 1e-9) and best is None:
                best, best_gain = (na, nb), s - base_sum
    return best
