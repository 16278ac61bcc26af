"""The best layer split of a pipeline, bottleneck included (phase 1's inner search).

`costs.best_split` fills the cheapest stages first: exact for the cycle's linear part (the sum of
every stage's share of a ring cycle), but a replica's cycle is also bounded below by its busiest
stage (`costs.stage_busy`: the decode step plus every prompt's own step). Where prompts dominate —
compute-poor GPUs (an RTX 3090's prefill costs 2.3× a 4090's) in a pipeline whose nodes could each
hold most of the model — the cheapest-first split piles the layers on one node, whose busy time
then sets the cycle: three RTX 3090s serving Llama-3-8B split 30/1/1 are rated 997 tok/s, split
11/11/10 they serve 1,311 (the simulator measures 1,301).

`best_split` here also tries splits whose busiest stage stays under a threshold `T` (each stage
holds at most `T / busy-per-layer` layers, the rest filled cheapest first as before), for a ladder
of thresholds from the balanced bound up to the unconstrained split's bottleneck, and keeps the
split with the most throughput (of equal ones, the least busy bottleneck). The last stage's bound
counts its LM head (`costs.head_cost`), so where the head is heavy the last stage holds fewer
layers. Pure and deterministic; memoized per solve like `costs.best_split`.
"""

from __future__ import annotations

import numpy as np

from scheduler.costs import (
    Cluster,
    ReplicaEstimate,
    _batch_of,
    decode_context,
    fill,
    head_cost,
    head_time,
    layer_times,
    pick,
    positions,
    ring_links,
    seq_bytes_per_layer,
    stage_room,
)
from scheduler.costs import best_split as cheapest_first

THRESHOLDS = 8  # bottleneck thresholds tried per batch target (geometric, balanced → unconstrained)


def best_split(c: Cluster, order: list[int], full: bool = False
               ) -> tuple[list[int], ReplicaEstimate] | None:
    """The split of `order` with the most throughput within the latency bound: the better of the
    cheapest-first split (`costs.best_split`) and the bottleneck-bounded ones. None when the order
    cannot hold the model at all."""
    base = cheapest_first(c, order, full)
    if base is None or len(order) < 2:
        return base
    key = ("split-bounded", tuple(c.kind[order].tolist()), full)
    if key not in c.memo:
        c.memo[key] = _bounded(c, order, base[1].batch)
    got = c.memo[key]
    if got is None or not _better(c, got[1], base[1]):
        return base
    return got


def _better(c: Cluster, a: ReplicaEstimate, b: ReplicaEstimate) -> bool:
    bound = c.snapshot.params.latency_bound_ms / 1e3 + 1e-12
    ok_a = a.batch >= 1 and a.latency_s <= bound
    ok_b = b.batch >= 1 and b.latency_s <= bound
    if ok_a != ok_b:
        return ok_a
    if not ok_a:
        return a.latency_s < b.latency_s
    if abs(a.throughput - b.throughput) <= 1e-9 * b.throughput:  # a tie: the calmer bottleneck
        return a.bottleneck_s < b.bottleneck_s * (1 - 1e-9)
    return a.throughput > b.throughput


def _bounded(c: Cluster, order: list[int], batch: int) -> tuple[list[int], ReplicaEstimate] | None:
    """The best split whose busiest stage stays under one of `THRESHOLDS` bounds, sized for the
    batch the cheapest-first split runs and a few smaller ones (fewer layers on the big node can
    leave less KV room on the others)."""
    m, p = c.model, c.snapshot.params
    L, n = m.layers, len(order)
    idx = np.array(order)
    caps0 = c.cap[order, positions(n)]
    targets = np.unique(np.maximum(np.round(np.array([1.0, 0.75, 0.5]) * max(batch, 1)), 1))
    room = stage_room(c, order)
    kv_caps = np.floor(room[None, :] / (m.layer_bytes + targets[:, None]
                                        * seq_bytes_per_layer(c))).astype(np.int64)
    caps = np.minimum(caps0[None, :], kv_caps)  # (t, n)
    prompts = targets[:, None] / p.output_tokens
    dec = layer_times(c, idx, targets[:, None], targets[:, None] * decode_context(c))
    phi = n ** -0.5 * c.pre[idx]
    cost = dec + prompts * phi  # (t, n): a layer's share of the cycle (`costs.unit_cost`)
    busy = dec + prompts * c.pre[idx]  # (t, n): a layer's busy time (`costs.stage_busy`)
    fixed = np.zeros_like(busy)  # (t, n): a stage's busy time besides its layers: the LM head
    fixed[:, -1] = head_cost(c, order[-1], targets, n)[1]
    good, k0 = fill(c, order, caps, cost)
    top = (k0 * busy + fixed).max(axis=1)  # the unconstrained split's bottleneck
    # Every stage equally busy (continuous): Σ (T − fixed_s) / busy_s = L.
    low = (L + (fixed / busy).sum(axis=1)) / (1.0 / busy).sum(axis=1)
    steps = np.linspace(0.0, 1.0, THRESHOLDS)[None, :]
    T = low[:, None] * (np.maximum(top / low, 1.0)[:, None] ** steps)  # (t, h)
    lim = np.floor((T[:, :, None] - fixed[:, None, :]) / busy[:, None, :] + 1e-9
                   ).astype(np.int64)  # (t, h, n)
    lim = np.clip(np.minimum(lim, caps[:, None, :]), 1, None)
    rows_caps = lim.reshape(-1, n)
    rows_cost = np.repeat(cost, THRESHOLDS, axis=0)
    ok, k = fill(c, order, rows_caps, rows_cost)
    ok &= np.repeat(good, THRESHOLDS)
    if not ok.any():
        return None
    k = k[ok]
    b = _batch_of(c, order, k.astype(float))
    bb = np.maximum(b, 1)[:, None]
    links = ring_links(c, order)
    d = layer_times(c, idx, bb, bb * decode_context(c))
    pr = bb / p.output_tokens
    head_cyc, head_busy = head_cost(c, order[-1], bb[:, 0], n)
    stage = k * (d + pr * c.pre[idx])
    stage[:, -1] += head_busy
    cyc = np.maximum((k * (d + pr * phi)).sum(axis=1) + head_cyc + links, stage.max(axis=1))
    head1 = head_time(c, order[-1], 1)
    lat = (k * c.lat1[idx]).sum(axis=1) + head1 + links
    thr = np.where(b >= 1, b / cyc, 0.0)
    usable = (b >= 1) & (lat <= p.latency_bound_ms / 1e3 + 1e-12)
    j = pick(np.where(usable, thr, -lat), stage.max(axis=1))
    layers = [int(x) for x in k[j]]
    return layers, ReplicaEstimate(
        throughput=float(thr[j]), latency_s=float(lat[j]), batch=int(b[j]),
        bottleneck_s=float(stage[j].max()), tpot_s=float(cyc[j]),
        ttft_s=float((k[j] * c.pre[idx]).sum()) + head1 + links)
