"""Exact reference for phase 1 on small clusters (~16 nodes of a few kinds), to measure the gap.

It maximises the summed replica throughput under the same cost model as `allocate`
(`scheduler.costs`: each replica at the batch it will run) with every replica's unloaded token round
trip within the latency bound. (The heuristic also weighs round robin, `choose.choose`; this
reference maximises the load-aware sum, so it is the bound on that sum.) Exactness comes from two nested exact searches:

* per replica (a node subset with a chosen first and last node; the middle ordered by the same
  region rule as the heuristic): the cycle is linear in the layers per stage, so for each batch
  target (KV reserved for that many sequences) filling the cheapest nodes first is the least
  cycle; every target from 1 to `max_batch` is tried (`split.best_split(full=True)`), which is
  exact where the ring, not one stage's prompts, bounds the cycle;
* across replicas, a dynamic program over node multisets. Nodes equal in every cost quantity
  (region, memory, caps, speeds, network; never one named in a `links.pairs` override) form a
  *type*, and a set of nodes is a count vector over types: `f(S) = max(f(S − i), max_{T ∋ i,
  T ≤ S} v(T) + f(S − T))` with `i` one node of the lowest type in `S` (left out = standby).
  Within a region the middle keeps each type's nodes together (types ranked by their lowest id;
  with all nodes distinct this is the heuristic's id order). The work grows with the number of
  count vectors, `∏(count_t + 1)`, which is capped at `MAX_STATES`: 16 nodes of 6–7 kinds solve
  in 10–25 s on one core, 16 all-distinct nodes (65,536 states) are refused.
"""

from __future__ import annotations

from itertools import product

import numpy as np

from scheduler.allocate import diagnose, to_plan, usable, with_ends
from scheduler.costs import MID, Cluster, build_cluster, estimate
from scheduler.errors import CannotPlace, InvalidInput
from scheduler.model import Plan, Snapshot
from scheduler.split import best_split

SOLVER = "veriplex-exact-dp-v2"
MAX_STATES = 4096  # count vectors ∏(count_t + 1): 12 distinct nodes (~50 s) or 16 of a few kinds


def _best_split(c: Cluster, order: list[int]) -> tuple[float, list[int]] | None:
    """Best `(throughput, layers per stage)` for a fixed pipeline order, or None if infeasible
    (every batch target, `split.best_split(full=True)`)."""
    res = best_split(c, order, full=True)
    if res is None or not usable(c, res[1]):
        return None
    return res[1].throughput, res[0]


def _types(c: Cluster) -> tuple[list[list[int]], np.ndarray]:
    """Groups of interchangeable nodes (ranked by lowest id, members by id) and each node's rank."""
    named = {x for pair in c.snapshot.links.pairs for x in pair}
    groups: dict[tuple, list[int]] = {}
    for i in range(len(c)):  # the cluster is sorted by id
        key = ("own", i) if c.ids[i] in named else (
            int(c.region[i]), int(c.usable[i]), int(c.budget[i]), tuple(int(x) for x in c.cap[i]),
            float(c.mem_tau[i]), float(c.mem_bw[i]), float(c.flops[i]), float(c.net[i]),
            float(c.tau[i]))
        groups.setdefault(key, []).append(i)
    types = list(groups.values())
    rank = np.empty(len(c), dtype=np.int64)
    for t, members in enumerate(types):
        rank[members] = t
    return types, rank


def _best_replica(c: Cluster, orders: list[list[int]]) -> tuple[float, list[int], list[int]] | None:
    best = None
    for order in orders:
        res = _best_split(c, order)
        if res is not None and (best is None or res[0] > best[0] + 1e-15):
            best = (res[0], order, res[1])
    return best


def count_states(c: Cluster) -> int:
    """Count vectors the typed DP visits: `∏(count_t + 1)` over the node types."""
    return int(np.prod([len(t) + 1 for t in _types(c)[0]], dtype=object))


def solve_exact(c: Cluster) -> tuple[list, list[int]]:
    """Optimal replicas over count vectors of node types; real nodes by lowest id per type."""
    types, rank = _types(c)
    L = c.model.layers
    cnt = np.array([len(t) for t in types], dtype=np.int64)
    w = np.cumprod(np.concatenate([[1], cnt[:-1] + 1])).astype(np.int64) if len(cnt) else cnt
    n_states = int(np.prod(cnt + 1)) if len(cnt) else 1
    vec = np.zeros((n_states, len(cnt)), dtype=np.int64)
    for j in range(len(cnt)):
        vec[:, j] = (np.arange(n_states) // w[j]) % (cnt[j] + 1)
    caps_mid = np.clip(c.cap[:, MID], 0, None)
    reps: dict[int, tuple[float, list[int], list[int]]] = {}
    for s in range(1, n_states):
        v = vec[s]
        members = [i for j in np.flatnonzero(v) for i in types[j][:v[j]]]
        if len(members) > 1 and int(caps_mid[members].sum()) < L:
            continue  # no order of these nodes holds the model (MID is each node's largest cap)
        if len(members) == 1:
            orders = [members]
        else:  # first and last by type (the same type twice if it has two nodes here)
            present = [int(j) for j in np.flatnonzero(v)]
            orders = []
            for a, b in product(present, present):
                if a == b and v[a] < 2:
                    continue
                first, last = types[a][0], types[b][1 if a == b else 0]
                orders.append(with_ends(c, [i for i in members if i not in (first, last)],
                                        first, last, rank))
        best = _best_replica(c, orders)
        if best is not None:
            reps[s] = best
    rep_ids = np.array(sorted(reps), dtype=np.int64)
    rep_val = np.array([reps[int(t)][0] for t in rep_ids])
    rep_vec = vec[rep_ids] if len(rep_ids) else np.zeros((0, len(cnt)), dtype=np.int64)
    f = np.zeros(n_states)
    choice = np.zeros(n_states, dtype=np.int64)
    for s in range(1, n_states):
        j0 = int(np.flatnonzero(vec[s])[0])
        f[s] = f[s - w[j0]]
        fits = (rep_vec[:, j0] >= 1) & (rep_vec <= vec[s]).all(axis=1)
        if fits.any():
            t = rep_ids[fits]
            cand = rep_val[fits] + f[s - t]
            k = int(np.argmax(cand))
            if cand[k] > f[s] + 1e-15:
                f[s], choice[s] = cand[k], t[k]
    pool = [list(t) for t in types]
    built, s = [], n_states - 1
    while s:
        t = int(choice[s])
        if t == 0:
            s -= int(w[int(np.flatnonzero(vec[s])[0])])
            continue
        _, order, k = reps[t]
        real = {}
        for j in np.flatnonzero(vec[t]):
            real.update(zip(types[j][:vec[t][j]], pool[j][:vec[t][j]], strict=True))
            pool[j] = pool[j][vec[t][j]:]
        order = [real[i] for i in order]
        built.append((order, k, estimate(c, order, k)))
        s -= t
    return built, sorted(i for p in pool for i in p)


def allocate_exact(snapshot: Snapshot) -> Plan:
    """The optimal plan under the shared cost model. Refuses more than `MAX_STATES` count vectors
    (16 distinct nodes are refused; 16 nodes of a few kinds are not)."""
    c = build_cluster(snapshot)
    states = count_states(c)
    if states > MAX_STATES:
        raise InvalidInput(
            f"exact solver: {len(c)} available nodes in {len(_types(c)[0])} interchangeable types "
            f"make {states:,} count-vector states, at most {MAX_STATES:,} supported")
    diagnose(c, snapshot)
    built, unused = solve_exact(c)
    if not built:
        raise CannotPlace("no replica meets the latency bound", [
            f"no pipeline's token round trip is within {snapshot.params.latency_bound_ms:g} ms"])
    return to_plan(c, built, unused, snapshot, SOLVER)
