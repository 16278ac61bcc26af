"""Exact reference for phase 1 on small clusters (practical up to ~10 nodes), to measure the gap.

It maximises the same objective as `allocate` under the same cost model (`scheduler.costs`): the
sum over replicas of `B / (S·M + ring links)` with every replica's unloaded token round trip within
the latency bound. Exactness comes from two nested exact searches:

* per replica (a node subset with a chosen first and last node; the middle ordered by the same
  region rule as the heuristic): enumerate the bottleneck `M` over every value `k·tau_i`, and for
  each find the largest concurrency `B` by bisection — for fixed `(M, B)` each node's layer count
  lies in a box `1 ≤ k_i ≤ min(cap_i, M/tau_i, room_i(B))`, and filling the fastest nodes first is
  the least-latency point of the box, so feasibility is monotone in `B`;
* across replicas, a dynamic program over node subsets (bitmasks): `f(S) = max(f(S − i),
  max_{T ∋ i, T ⊆ S} v(T) + f(S − T))` with `i` the lowest node of `S` (left out = standby).
"""

from __future__ import annotations

from itertools import permutations

import numpy as np

from scheduler.allocate import diagnose, to_plan, with_ends
from scheduler.costs import ALONE, FIRST, LAST, MID, Cluster, build_cluster, estimate, ring_links
from scheduler.errors import CannotPlace, InvalidInput
from scheduler.model import Plan, Snapshot

SOLVER = "veriplex-exact-dp-v1"
MAX_NODES = 12


def _best_split(c: Cluster, order: list[int]) -> tuple[float, list[int]] | None:
    """Best `(throughput, layers per stage)` for a fixed pipeline order, or None if infeasible."""
    m, p = c.model, c.snapshot.params
    L, n = m.layers, len(order)
    pos = [FIRST] + [MID] * (n - 2) + [LAST] if n > 1 else [ALONE]
    caps = np.array([c.cap[i, q] for i, q in zip(order, pos, strict=False)], dtype=np.int64)
    if n > L or caps.min() < 1 or caps.sum() < L:
        return None
    tau = c.tau[order]
    links = ring_links(c, order)
    room = np.array([float(c.usable[i]) - m.extra_bytes(q in (FIRST, ALONE), q in (LAST, ALONE))
                     for i, q in zip(order, pos, strict=False)])
    per_seq = float(m.kv_bytes_per_token_layer * p.context_tokens)
    bound = p.latency_bound_ms / 1e3
    fast = np.argsort(tau, kind="stable")  # fill order for the least-latency point of a box

    ms = np.unique(np.concatenate([np.arange(1, caps[s] + 1) * tau[s] for s in range(n)]))
    hi = np.minimum(caps[None, :], np.floor(ms[:, None] / tau[None, :] + 1e-9).astype(np.int64))
    ok = (hi.min(axis=1) >= 1) & (hi.sum(axis=1) >= L)
    ms, hi = ms[ok], hi[ok]
    if len(ms) == 0:
        return None

    def feasible(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each M candidate with concurrency b[j]: feasible?, least-latency layer counts."""
        kv_cap = np.floor(room[None, :] / (m.layer_bytes + b[:, None] * per_seq)).astype(np.int64)
        box = np.minimum(hi, kv_cap)
        good = (box.min(axis=1) >= 1) & (box.sum(axis=1) >= L)
        extra = np.clip(box - 1, 0, None)[:, fast]
        before = np.cumsum(extra, axis=1) - extra
        give = np.clip(np.minimum(extra, (L - n) - before), 0, None)
        k = np.empty_like(give)
        k[:, fast] = give + 1
        lat = (k * tau[None, :]).sum(axis=1) + links
        return good & (lat <= bound + 1e-12), k

    lo = np.zeros(len(ms), dtype=np.int64)  # largest feasible B so far (0 = none)
    hi_b = np.full(len(ms), p.max_batch, dtype=np.int64)
    while True:
        active = lo < hi_b
        if not active.any():
            break
        mid = np.where(active, (lo + hi_b + 1) // 2, lo)
        good, _ = feasible(np.maximum(mid, 1))
        lo = np.where(active & good, mid, lo)
        hi_b = np.where(active & ~good, mid - 1, hi_b)
    value = np.where(lo >= 1, lo / (n * ms + links), 0.0)
    j = int(np.argmax(value))
    if value[j] <= 0:
        return None
    _, k = feasible(np.array([lo[j]]).repeat(len(ms)))
    return float(value[j]), [int(x) for x in k[j]]


def _orders(c: Cluster, members: list[int]) -> list[list[int]]:
    """Every choice of first and last node, the middle ordered by the heuristic's region rule."""
    if len(members) == 1:
        return [members]
    return [with_ends(c, [i for i in members if i not in (first, last)], first, last)
            for first, last in permutations(sorted(members, key=lambda i: c.ids[i]), 2)]


def solve_exact(c: Cluster) -> tuple[list, list[int]]:
    n = len(c)
    L = c.model.layers
    value = np.zeros(1 << n)
    best_rep: dict[int, tuple[list[int], list[int]]] = {}
    caps_mid = np.clip(c.cap[:, MID], 0, None)
    for mask in range(1, 1 << n):
        members = [i for i in range(n) if mask >> i & 1]
        if len(members) > 1 and int(caps_mid[members].sum()) < L:
            continue  # no order of these nodes holds the model (MID is each node's largest cap)
        for order in _orders(c, members):
            res = _best_split(c, order)
            if res is not None and res[0] > value[mask] + 1e-15:
                value[mask] = res[0]
                best_rep[mask] = (order, res[1])
    f = np.zeros(1 << n)
    choice = [0] * (1 << n)
    for s in range(1, 1 << n):
        low = s & -s
        f[s], choice[s] = f[s ^ low], 0
        rest = s ^ low
        sub = rest
        while True:
            t = sub | low
            if t in best_rep and value[t] + f[s ^ t] > f[s] + 1e-15:
                f[s], choice[s] = value[t] + f[s ^ t], t
            if sub == 0:
                break
            sub = (sub - 1) & rest
    built, used, s = [], set(), (1 << n) - 1
    while s:
        t = choice[s]
        if t == 0:
            s ^= s & -s
            continue
        order, k = best_rep[t]
        built.append((order, k, estimate(c, order, k)))
        used.update(order)
        s ^= t
    return built, [i for i in range(n) if i not in used]


def allocate_exact(snapshot: Snapshot) -> Plan:
    """The optimal plan under the shared cost model. Refuses more than `MAX_NODES` nodes."""
    c = build_cluster(snapshot)
    if len(c) > MAX_NODES:
        raise InvalidInput(f"exact solver: {len(c)} available nodes, at most {MAX_NODES} supported")
    diagnose(c, snapshot)
    built, unused = solve_exact(c)
    if not built:
        raise CannotPlace("no replica meets the latency bound", [
            f"no pipeline's token round trip is within {snapshot.params.latency_bound_ms:g} ms"])
    return to_plan(c, built, unused, snapshot, SOLVER)
