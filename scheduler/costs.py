"""The performance model every part of the scheduler shares (solver, exact reference, router, sim).

Per node: a weight budget (usable VRAM − KV reserve) and so a layer capacity for each pipeline
position (`first` holds the embedding, `last` the LM head; both when alone), and a per-layer decode
time `tau = max(weight bytes / memory bandwidth + launch overhead, batch × FLOPs / peak FLOPS)` —
the roofline — where a measured per-layer latency replaces the memory term once the node reports one. Links cost
`RTT/2 + bytes/bandwidth`. A replica's estimate: KV-bounded concurrency `B` (sequences its tightest
stage can hold at the mean context), token round trip `lat = Σ k_i·tau_i + ring links`, and
throughput `B / (S·max_i k_i·tau_i + ring links)` — a full pipeline of S micro-batches moves at its
slowest stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scheduler.model import MIB, ModelSpec, NodeSpec, Snapshot

FIRST, MID, LAST, ALONE = 0, 1, 2, 3


@dataclass(frozen=True)
class Cluster:
    """Column arrays over the snapshot's available nodes (sorted by id), built once per solve."""

    snapshot: Snapshot
    ids: tuple[str, ...]
    index: dict[str, int]
    regions: tuple[str, ...]  # region name per code
    region: np.ndarray  # (n,) region code
    usable: np.ndarray  # (n,) usable VRAM bytes (KV reserve included)
    budget: np.ndarray  # (n,) bytes for weights: usable − KV reserve
    cap: np.ndarray  # (n, 4) layers holdable at FIRST, MID, LAST, ALONE
    mem_tau: np.ndarray  # (n,) s per layer from weights traffic (or measured)
    mem_bw: np.ndarray  # (n,) bytes/s of device memory
    flops: np.ndarray  # (n,) FLOP/s
    net: np.ndarray  # (n,) bytes/s
    tau: np.ndarray  # (n,) s per layer at the reference batch
    rtt: np.ndarray  # (r, r) seconds between region codes
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)  # per solve

    @property
    def model(self) -> ModelSpec:
        return self.snapshot.model

    def __len__(self) -> int:
        return len(self.ids)


def build_cluster(snapshot: Snapshot, nodes: list[NodeSpec] | None = None) -> Cluster:
    """Arrays for `nodes` (default: the snapshot's available ones)."""
    if nodes is None:
        nodes = [n for n in snapshot.nodes if n.available]
    m, p = snapshot.model, snapshot.params
    regions = tuple(sorted({n.region for n in nodes}))
    rcode = {r: i for i, r in enumerate(regions)}
    usable = np.array([int(n.vram_mib * MIB * p.memory_utilization) for n in nodes], dtype=np.int64)
    budget = usable - p.kv_reserve_mib * MIB
    extras = np.array([m.extra_bytes(True, False), 0, m.extra_bytes(False, True),
                       m.extra_bytes(True, True)], dtype=np.int64)
    cap = np.maximum((budget[:, None] - extras[None, :]) // m.layer_bytes, -1) if nodes else \
        np.zeros((0, 4), dtype=np.int64)
    cap = np.minimum(cap, m.layers)
    bw = np.array([n.mem_bw_gbps * 1e9 for n in nodes], dtype=float)
    measured = np.array([(n.layer_ms or 0.0) / 1e3 for n in nodes], dtype=float)
    roofline = m.layer_bytes / np.maximum(bw, 1.0) + p.layer_overhead_us / 1e6
    mem_tau = np.where(measured > 0, measured, roofline)
    flops = np.array([n.tflops * 1e12 for n in nodes], dtype=float)
    tau = np.maximum(mem_tau, p.ref_batch * m.layer_flops / flops) if nodes else mem_tau
    rtt = np.zeros((len(regions), len(regions)))
    for a, ra in enumerate(regions):
        for b, rb in enumerate(regions):
            rtt[a, b] = snapshot.links.region_rtt_ms(ra, rb) / 1e3
    return Cluster(
        snapshot=snapshot, ids=tuple(n.id for n in nodes),
        index={n.id: i for i, n in enumerate(nodes)}, regions=regions,
        region=np.array([rcode[n.region] for n in nodes], dtype=np.int64),
        usable=usable, budget=budget, cap=cap, mem_tau=mem_tau, mem_bw=np.maximum(bw, 1.0),
        flops=flops,
        net=np.array([n.net_mbps * 1e6 / 8 for n in nodes], dtype=float), tau=tau, rtt=rtt,
    )


def position(i: int, n: int) -> int:
    """Pipeline position code of stage `i` among `n`."""
    if n == 1:
        return ALONE
    return FIRST if i == 0 else LAST if i == n - 1 else MID


def layer_time(c: Cluster, i: int, tokens: float, kv_tokens: float = 0.0) -> float:
    """Seconds for one layer on node `i` over a batch of `tokens` new tokens that attend over
    `kv_tokens` cached tokens in all (roofline: weights + KV reads vs. compute)."""
    kv_read = kv_tokens * c.model.kv_bytes_per_token_layer / float(c.mem_bw[i])
    return max(float(c.mem_tau[i]) + kv_read, tokens * c.model.layer_flops / float(c.flops[i]))


def link_time(c: Cluster, i: int, j: int, nbytes: float) -> float:
    """RTT/2 + bytes/bandwidth between nodes `i` and `j` (0 on the same node)."""
    if i == j:
        return 0.0
    links = c.snapshot.links
    a, b = c.ids[i], c.ids[j]
    pair = links.pairs.get((a, b) if a <= b else (b, a))
    if pair is not None:
        rtt_s, bw = pair[0] / 1e3, pair[1] * 1e6 / 8
    else:
        ra, rb = int(c.region[i]), int(c.region[j])
        rtt_s = float(c.rtt[ra, rb])
        bw = links.region_mbps(c.regions[ra], c.regions[rb]) * 1e6 / 8
    bw = min(bw, float(c.net[i]), float(c.net[j]))
    return rtt_s / 2 + nbytes / bw


def ring_links(c: Cluster, order: list[int]) -> float:
    """Link seconds for one token around the ring (stage to stage, then last back to first)."""
    if len(order) < 2:
        return 0.0
    a = c.model.activation_bytes
    total = sum(link_time(c, order[s], order[s + 1], a) for s in range(len(order) - 1))
    return total + link_time(c, order[-1], order[0], 8)  # the sampled token id goes back


def kv_sequences(c: Cluster, i: int, k: int, pos: int) -> float:
    """Sequences of the mean context that node `i` holding `k` layers at `pos` can keep in KV."""
    m = c.model
    extra = m.extra_bytes(pos in (FIRST, ALONE), pos in (LAST, ALONE))
    free = float(c.usable[i]) - k * m.layer_bytes - extra
    return free / (k * m.kv_bytes_per_token_layer * c.snapshot.params.context_tokens)


@dataclass(frozen=True)
class ReplicaEstimate:
    throughput: float  # output tokens/s with the pipeline full
    latency_s: float  # one token's unloaded round trip
    batch: int  # concurrent sequences (KV bound, capped at max_batch)
    bottleneck_s: float  # slowest stage's time per step at the reference batch


def estimate(c: Cluster, order: list[int], layers: list[int]) -> ReplicaEstimate:
    """Score one replica: nodes `order` (pipeline order) holding `layers[s]` layers each."""
    n = len(order)
    seqs = min(kv_sequences(c, i, k, position(s, n)) for s, (i, k) in enumerate(zip(order, layers, strict=False)))
    batch = int(min(c.snapshot.params.max_batch, np.floor(seqs)))
    times = [k * float(c.tau[i]) for i, k in zip(order, layers, strict=False)]
    links = ring_links(c, order)
    bottleneck = max(times)
    lat = sum(times) + links
    thr = batch / (n * bottleneck + links) if batch >= 1 else 0.0
    return ReplicaEstimate(throughput=thr, latency_s=lat, batch=max(batch, 0), bottleneck_s=bottleneck)
