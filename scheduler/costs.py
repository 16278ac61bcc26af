"""The performance model every part of the scheduler shares (solver, exact reference, router, sim).

**Step time.** One layer on node `i` running a step of `t` new tokens (decode rows and prompt tokens
alike) that attend over `kv` cached tokens takes `layer_time(t, kv)`: the measured per-layer step
time at `t` tokens when the node reports `step_ms` (piecewise linear between the measured batch
sizes, extended by the last segment's slope), else the roofline `max(weight bytes / memory
bandwidth + launch overhead, t × FLOPs / peak FLOPS)`; a lone batch-1 measurement (`layer_ms`)
replaces the memory term. Reading the KV of the context costs `kv × KV bytes / bandwidth` on top.
Links cost `RTT/2 + bytes/bandwidth`.

**The LM head.** The last stage also runs the final norm and the `vocab × hidden` head over every
row that needs logits: each decode row, and only the last row of each prompt. Its step over `r`
rows is `head_time(r)`: the roofline `max(head bytes / bandwidth + launch overhead, r × head FLOPs /
peak FLOPS)`, or, on a node with measurements, its measured layer step scaled by head ÷ layer
weights (the head is one matmul of the same kind: a measured batch-1 `layer_ms` calibrates its
weight read, measured `step_ms` its whole curve). A Llama-3-8B head weighs 2.4 layers, a 70B's
1.2, SmolLM2's tied one 8 of its 30 layers: a decode step reads it once on the last stage.

**A replica at the batch it will run.** Its concurrency `B` is what its tightest stage's KV room
holds at `context_tokens` per sequence, capped at `max_batch` — the batch it runs once the load
saturates it. Its sequences move round the ring as one batch (each stage runs everything queued,
so micro-batches merge), and every cycle each sequence gains one token; the request mix
(`prompt_tokens`, `output_tokens`) brings `B / output_tokens` new prompts per cycle whose prefill
runs through every stage (compute-bound: priced by its FLOPs). So with `k_s` layers on stage `s`:

    cycle(B) = Σ_s k_s · (layer_time_s(B, B · context) + B / output_tokens · layer_time_s(prompt))
               + head_time_last(B) + B / output_tokens · head_time_last(1) + ring links
    throughput = B / cycle(B),  time per output token = cycle(B)

The latency bound limits one token's unloaded round trip (batch 1, every stage plus the ring).

The cost is linear in the layers per stage, so for a fixed order and batch the best split puts
layers on the cheapest nodes first (`fill`), and the best split over every batch target is exact
(`best_split`): layers traded for KV room when more sequences pay for it, capped by `max_batch`.
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
    mem_tau: np.ndarray  # (n,) s per layer from weights traffic (or measured at batch 1)
    mem_bw: np.ndarray  # (n,) bytes/s of device memory
    flops: np.ndarray  # (n,) FLOP/s
    net: np.ndarray  # (n,) bytes/s
    steps: tuple[tuple[np.ndarray, np.ndarray] | None, ...]  # measured (tokens, s per layer)
    measured: np.ndarray  # (n,) bool: the node has `steps`
    lat1: np.ndarray  # (n,) s per layer for one sequence's decode step at the mean context
    kind: np.ndarray  # (n,) nodes alike in every cost quantity share a kind (splits are memoized by it)
    pre: np.ndarray  # (n,) s per layer for one mean prompt's prefill
    tau: np.ndarray  # (n,) s per layer per cycle at a full batch (decode + amortized prefill)
    rtt: np.ndarray  # (r, r) seconds between region codes
    head_mem: np.ndarray  # (n,) s for the LM head's weight read (memory-bound head step)
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)  # per solve

    @property
    def model(self) -> ModelSpec:
        return self.snapshot.model

    def __len__(self) -> int:
        return len(self.ids)


def _measured(n: NodeSpec) -> tuple[np.ndarray, np.ndarray] | None:
    if not n.step_ms:
        return None
    t = np.array([float(b) for b, _ in n.step_ms])
    s = np.array([ms / 1e3 for _, ms in n.step_ms])
    return t, s


def _interp(table: tuple[np.ndarray, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """Piecewise-linear step time at `tokens`; flat below the first row, the last segment's
    slope (or proportional with one row) beyond the last."""
    t, s = table
    out = np.interp(tokens, t, s)
    if len(t) >= 2:
        slope = max((s[-1] - s[-2]) / (t[-1] - t[-2]), 0.0)
    else:
        slope = s[-1] / t[-1]
    return np.where(tokens > t[-1], s[-1] + (tokens - t[-1]) * slope, out)


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
    head_roofline = m.head_bytes / np.maximum(bw, 1.0) + p.layer_overhead_us / 1e6
    head_mem = np.where(measured > 0, measured * head_scale(m), head_roofline)
    flops = np.array([n.tflops * 1e12 for n in nodes], dtype=float)
    rtt = np.zeros((len(regions), len(regions)))
    for a, ra in enumerate(regions):
        for b, rb in enumerate(regions):
            rtt[a, b] = snapshot.links.region_rtt_ms(ra, rb) / 1e3
    c = Cluster(
        snapshot=snapshot, ids=tuple(n.id for n in nodes),
        index={n.id: i for i, n in enumerate(nodes)}, regions=regions,
        region=np.array([rcode[n.region] for n in nodes], dtype=np.int64),
        usable=usable, budget=budget, cap=cap, mem_tau=mem_tau, mem_bw=np.maximum(bw, 1.0),
        flops=flops, net=np.array([n.net_mbps * 1e6 / 8 for n in nodes], dtype=float),
        steps=tuple(_measured(n) for n in nodes),
        measured=np.array([bool(n.step_ms) for n in nodes], dtype=bool), pre=np.zeros(len(nodes)),
        lat1=np.zeros(len(nodes)), kind=np.zeros(len(nodes), dtype=np.int64),
        tau=np.zeros(len(nodes)), rtt=rtt, head_mem=head_mem,
    )
    everyone = np.arange(len(nodes))
    c.pre[:] = layer_times(c, everyone, float(p.prompt_tokens), 0.0)
    c.lat1[:] = layer_times(c, everyone, 1.0, decode_context(c))
    named = {x for pair in snapshot.links.pairs for x in pair}
    kinds: dict[tuple[Any, ...], int] = {}
    for i, n in enumerate(nodes):
        key: tuple[Any, ...] = ("own", i) if n.id in named or n.step_ms else (
            n.region, n.vram_mib, n.tflops, n.mem_bw_gbps, n.net_mbps, n.layer_ms)
        c.kind[i] = kinds.setdefault(key, len(kinds))
    c.tau[:] = unit_cost(c, everyone, float(p.max_batch), 2)
    return c


def layer_times(c: Cluster, idx: np.ndarray, tokens: float | np.ndarray,
                kv_tokens: float | np.ndarray = 0.0) -> np.ndarray:
    """Seconds per layer on nodes `idx` for a step of `tokens` new tokens attending over
    `kv_tokens` cached tokens in all (broadcasts: `idx` of shape (n,) with `tokens` (r, 1))."""
    m = c.model
    idx = np.atleast_1d(idx)
    t = np.asarray(tokens, dtype=float)
    kv_read = np.asarray(kv_tokens, dtype=float) * m.kv_bytes_per_token_layer / c.mem_bw[idx]
    base = np.maximum(c.mem_tau[idx], t * m.layer_flops / c.flops[idx])
    if c.measured[idx].any():
        t = np.broadcast_to(t, base.shape)
        tables = [(col, c.steps[int(i)]) for col, i in enumerate(idx)
                  if c.steps[int(i)] is not None]
        base = base.copy()
        for col, table in tables:
            assert table is not None
            base[..., col] = _interp(table, t[..., col])
    return base + kv_read


def head_scale(m: ModelSpec) -> float:
    """The LM head's weights (with the final norm) in layers' worth: what scales a measured layer
    step to the head's."""
    return m.head_bytes / m.layer_bytes


def head_times(c: Cluster, idx: np.ndarray, rows: float | np.ndarray) -> np.ndarray:
    """Seconds for the final norm + LM head on nodes `idx` over `rows` logits rows (broadcasts
    like `layer_times`): the roofline, or the node's measured layer step scaled to the head."""
    m = c.model
    idx = np.atleast_1d(idx)
    r = np.asarray(rows, dtype=float)
    base = np.maximum(c.head_mem[idx], r * m.head_flops / c.flops[idx])
    if c.measured[idx].any():
        r = np.broadcast_to(r, base.shape)
        base = base.copy()
        for col, i in enumerate(idx):
            table = c.steps[int(i)]
            if table is not None:
                base[..., col] = head_scale(m) * _interp(table, r[..., col])
    return base


def head_time(c: Cluster, i: int, rows: int) -> float:
    """`head_times` for one node and row count (memoized: the simulator's hot path)."""
    key = ("head", i, rows)
    got = c.memo.get(key)
    if got is None:
        got = c.memo[key] = float(head_times(c, np.array([i]), float(rows))[0])
    return got


def head_cost(c: Cluster, last: int, batch: float | np.ndarray, stages: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """The LM head's seconds per cycle on the last stage `last` of a replica of `stages` at
    `batch` sequences: (its share of the cycle, its busy time). A decode step computes one row
    per sequence; each of the `batch / output_tokens` prompts per cycle computes one row (its
    last). Alone, the prompts share the decode step; in a pipeline each prompt's step runs apart
    and the batch waits on `1/√stages` of it, as for the layers (`unit_cost`)."""
    p = c.snapshot.params
    b = np.asarray(batch, dtype=float)
    prompts = b / p.output_tokens
    idx = np.array([last])
    if stages == 1:
        step = head_times(c, idx, (b + prompts)[..., None])[..., 0]
        return step, step
    dec = head_times(c, idx, b[..., None])[..., 0]
    one = float(head_times(c, idx, 1.0)[0])
    return dec + stages ** -0.5 * prompts * one, dec + prompts * one


def _scalars(c: Cluster) -> tuple[list[float], list[float], list[float]]:
    """Per-node memory time, FLOP/s and bandwidth as Python floats (the simulator's hot path)."""
    got = c.memo.get("scalars")
    if got is None:
        got = (c.mem_tau.tolist(), c.flops.tolist(), c.mem_bw.tolist())
        c.memo["scalars"] = got
    return got


def layer_time(c: Cluster, i: int, tokens: float, kv_tokens: float = 0.0) -> float:
    """Seconds for one layer on node `i` over a step of `tokens` new tokens that attend over
    `kv_tokens` cached tokens in all (the scalar form of `layer_times`)."""
    mem, flops, bw = _scalars(c)
    m = c.model
    table = c.steps[i]
    if table is None:
        base = max(mem[i], tokens * m.layer_flops / flops[i])
    else:
        base = float(_interp(table, np.array([float(tokens)]))[0])
    return base + kv_tokens * m.kv_bytes_per_token_layer / bw[i]


def decode_context(c: Cluster) -> float:
    """Mean tokens a decoding sequence attends over: its prompt and half its output."""
    p = c.snapshot.params
    return p.prompt_tokens + p.output_tokens / 2


def unit_cost(c: Cluster, idx: np.ndarray, batch: float | np.ndarray,
              stages: int = 2) -> np.ndarray:
    """Seconds one layer on nodes `idx` adds to a replica's cycle at `batch` sequences.

    `batch / output_tokens` prompts join per cycle. Alone (`stages` 1) a prompt lands in the
    same step as the decode rows (it arrives with them), so a step with `x` prompts runs `batch +
    x × prompt_tokens` tokens; `x` is Poisson, and the expected step is priced (the roofline's
    max makes a lumpy step dearer than the mean one). In a pipeline a prompt reaches each stage apart from the decode batch
    and runs as its own step, often while the batch is at another stage: the batch waits on
    `1/√stages` of it (fitted to the simulator over generated clusters, where the bench's
    `estimate_error_p90` checks it; the more stages, the more the prompt hides in their idle
    time). What does not overlap is bounded by `stage_busy`."""
    p = c.snapshot.params
    b = np.asarray(batch, dtype=float)
    prompts = b / p.output_tokens
    if stages == 1:  # the step's prompt count is Poisson: price the expected step, not the mean's
        kv = b * decode_context(c)
        lam = np.maximum(prompts, 1e-12)
        top = int(np.ceil(float(np.max(lam)) + 4 * np.sqrt(float(np.max(lam))) + 3))
        pmf = np.exp(-lam)
        total = pmf * layer_times(c, idx, b, kv)
        for x in range(1, top + 1):
            pmf = pmf * lam / x
            total = total + pmf * layer_times(c, idx, b + x * p.prompt_tokens, kv)
        return total + (1 - np.minimum(_poisson_cdf(lam, top), 1.0)) * layer_times(
            c, idx, b + (top + 1) * p.prompt_tokens, kv)
    dec = layer_times(c, idx, b, b * decode_context(c))
    return dec + stages ** -0.5 * prompts * c.pre[idx]


def _poisson_cdf(lam: np.ndarray, top: int) -> np.ndarray:
    pmf = np.exp(-lam)
    cdf = pmf
    for x in range(1, top + 1):
        pmf = pmf * lam / x
        cdf = cdf + pmf
    return cdf


def stage_busy(c: Cluster, idx: np.ndarray, batch: float | np.ndarray) -> np.ndarray:
    """Seconds per layer a stage is busy per cycle: the decode step and every prompt's step."""
    p = c.snapshot.params
    b = np.asarray(batch, dtype=float)
    return layer_times(c, idx, b, b * decode_context(c)) + b / p.output_tokens * c.pre[idx]


def position(i: int, n: int) -> int:
    """Pipeline position code of stage `i` among `n`."""
    if n == 1:
        return ALONE
    return FIRST if i == 0 else LAST if i == n - 1 else MID


def positions(n: int) -> list[int]:
    return [position(s, n) for s in range(n)]


def link_time(c: Cluster, i: int, j: int, nbytes: float) -> float:
    """RTT/2 + bytes/bandwidth between nodes `i` and `j` (0 on the same node)."""
    if i == j:
        return 0.0
    key = ("link", i, j)
    got = c.memo.get(key)
    if got is None:
        links = c.snapshot.links
        a, b = c.ids[i], c.ids[j]
        pair = links.pairs.get((a, b) if a <= b else (b, a))
        if pair is not None:
            rtt_s, bw = pair[0] / 1e3, pair[1] * 1e6 / 8
        else:
            ra, rb = int(c.region[i]), int(c.region[j])
            rtt_s = float(c.rtt[ra, rb])
            bw = links.region_mbps(c.regions[ra], c.regions[rb]) * 1e6 / 8
        got = (rtt_s / 2, min(bw, float(c.net[i]), float(c.net[j])))
        c.memo[key] = got
    return got[0] + nbytes / got[1]


def ring_links(c: Cluster, order: list[int]) -> float:
    """Link seconds for one token around the ring (stage to stage, then last back to first)."""
    if len(order) < 2:
        return 0.0
    key = ("ring", tuple(order))
    if key in c.memo:
        return c.memo[key]
    a = c.model.activation_bytes
    total = sum(link_time(c, order[s], order[s + 1], a) for s in range(len(order) - 1))
    total += link_time(c, order[-1], order[0], 8)  # the sampled token id goes back
    c.memo[key] = total
    return total


def stage_room(c: Cluster, order: list[int]) -> np.ndarray:
    """Bytes each stage of `order` has for layers and KV (usable VRAM − embedding/LM head)."""
    m, n = c.model, len(order)
    room = c.usable[order].astype(float)
    if n == 1:
        return room - m.extra_bytes(True, True)
    room[0] -= m.extra_bytes(True, False)
    room[-1] -= m.extra_bytes(False, True)
    return room


def seq_bytes_per_layer(c: Cluster) -> float:
    """KV bytes one sequence of `context_tokens` holds per layer."""
    return float(c.model.kv_bytes_per_token_layer * c.snapshot.params.context_tokens)


def kv_sequences(c: Cluster, i: int, k: int, pos: int) -> float:
    """Sequences of `context_tokens` that node `i` holding `k` layers at `pos` can keep in KV."""
    m = c.model
    extra = m.extra_bytes(pos in (FIRST, ALONE), pos in (LAST, ALONE))
    free = float(c.usable[i]) - k * m.layer_bytes - extra
    return free / (k * seq_bytes_per_layer(c))


@dataclass(frozen=True)
class ReplicaEstimate:
    throughput: float  # output tokens/s with the replica saturated at `batch`
    latency_s: float  # one output token's unloaded round trip (what the latency bound limits)
    batch: int  # concurrent sequences (KV bound, capped at max_batch)
    bottleneck_s: float  # the busiest stage's share of a cycle (seconds)
    tpot_s: float = 0.0  # time per output token at `batch`: one cycle of the ring
    ttft_s: float = 0.0  # an unloaded prompt's time to first token


def _batch_of(c: Cluster, order: list[int], layers: np.ndarray) -> np.ndarray:
    """Sequences each row of `layers` (r, n) lets the replica run: KV-bound, capped."""
    m = c.model
    free = stage_room(c, order)[None, :] - layers * m.layer_bytes
    seqs = np.floor(np.min(free / (np.maximum(layers, 1) * seq_bytes_per_layer(c)), axis=1))
    return np.minimum(np.maximum(seqs, 0), c.snapshot.params.max_batch)


def estimate(c: Cluster, order: list[int], layers: list[int]) -> ReplicaEstimate:
    """Score one replica: nodes `order` (pipeline order) holding `layers[s]` layers each."""
    idx = np.array(order)
    k = np.array(layers, dtype=float)
    batch = int(_batch_of(c, order, k[None, :])[0])
    b = max(batch, 1)
    n = len(order)
    per_stage = k * unit_cost(c, idx, float(b), n)
    links = ring_links(c, order)
    head_cyc, head_busy = (float(x) for x in head_cost(c, order[-1], float(b), n))
    busy = k * stage_busy(c, idx, float(b)) if n > 1 else per_stage.copy()
    busy[-1] += head_busy
    cycle = max(float(per_stage.sum()) + head_cyc + links, float(busy.max()))
    head1 = head_time(c, order[-1], 1)
    unloaded = float((k * c.lat1[idx]).sum()) + head1 + links
    ttft = float((k * c.pre[idx]).sum()) + head1 + links
    thr = batch / cycle if batch >= 1 else 0.0
    return ReplicaEstimate(throughput=thr, latency_s=unloaded, batch=batch,
                           bottleneck_s=float(busy.max()), tpot_s=cycle, ttft_s=ttft)


def batch_targets(max_batch: int, full: bool = False) -> np.ndarray:
    """Batch sizes a split is sized for: every one up to 256 when `full`, else a ladder."""
    if full or max_batch <= 16:
        return np.arange(1, min(max_batch, 4096) + 1, dtype=float) if max_batch <= 4096 else \
            np.unique(np.round(np.geomspace(1, max_batch, 512)))
    ladder = np.unique(np.round(np.geomspace(1, max_batch, 14)))
    return np.unique(np.concatenate([ladder, [max_batch, max_batch - 1, max_batch // 2]]))


def fill(c: Cluster, order: list[int], caps: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray,
                                                                                   np.ndarray]:
    """Least-cost split per row: every stage 1 layer, the rest to the cheapest stages first up to
    `caps` (r, n). Returns (feasible (r,), layers (r, n))."""
    L, n = c.model.layers, len(order)
    good = (caps.min(axis=1) >= 1) & (caps.sum(axis=1) >= L)
    rank = np.argsort(cost, axis=1, kind="stable")
    rows = np.arange(len(caps))[:, None]
    extra = np.maximum(caps - 1, 0)[rows, rank]
    before = np.cumsum(extra, axis=1) - extra
    give = np.maximum(np.minimum(extra, (L - n) - before), 0)
    k = np.empty_like(give)
    k[rows, rank] = give + 1
    return good, k


def best_split(c: Cluster, order: list[int], full: bool = False
               ) -> tuple[list[int], ReplicaEstimate] | None:
    """The split of `order` with the most throughput whose unloaded token round trip is within the bound,
    over batch targets (each target reserves KV for that many sequences, then fills the cheapest
    nodes first); else the fastest one. None when the order cannot hold the model at all."""
    key = ("split", tuple(c.kind[order].tolist()), full)
    if key in c.memo:
        return c.memo[key]
    m, p = c.model, c.snapshot.params
    L, n = m.layers, len(order)
    idx = np.array(order)
    caps0 = c.cap[order, positions(n)]
    if n > L or caps0.min() < 1 or caps0.sum() < L:
        c.memo[key] = None
        return None
    if n == 1:  # one node holds every layer: nothing to split
        out = ([L], estimate(c, order, [L]))
        c.memo[key] = out
        return out
    tkey = ("targets", full)
    if tkey not in c.memo:
        c.memo[tkey] = batch_targets(p.max_batch, full)
    targets = c.memo[tkey]
    room = stage_room(c, order)
    kv_caps = np.floor(room[None, :] / (m.layer_bytes + targets[:, None]
                                        * seq_bytes_per_layer(c))).astype(np.int64)
    caps = np.minimum(caps0[None, :], kv_caps)
    prompts = targets[:, None] / p.output_tokens
    phi = n ** -0.5 * c.pre[idx]
    cost = layer_times(c, idx, targets[:, None], targets[:, None] * decode_context(c)) \
        + prompts * phi  # (r, n): `unit_cost` for a pipeline
    good, k = fill(c, order, caps, cost)
    if not good.any():  # not even one sequence fits: the fastest split, unusable
        good, k = fill(c, order, caps0[None, :], cost[:1])
        targets = targets[:1]
    k, targets = k[good], targets[good]
    batch = _batch_of(c, order, k.astype(float))
    b = np.maximum(batch, 1)[:, None]
    links = ring_links(c, order)
    dec = layer_times(c, idx, b, b * decode_context(c))
    prompts = b / p.output_tokens
    head_cyc, head_busy = head_cost(c, order[-1], b[:, 0], n)
    busy = k * (dec + prompts * c.pre[idx])  # stage_busy, the head on the last stage
    busy[:, -1] += head_busy
    cyc = np.maximum((k * (dec + prompts * phi)).sum(axis=1) + head_cyc + links,  # unit_cost
                     busy.max(axis=1))
    head1 = head_time(c, order[-1], 1)
    lat = (k * c.lat1[idx]).sum(axis=1) + head1 + links
    thr = np.where(batch >= 1, batch / cyc, 0.0)
    ok = (batch >= 1) & (lat <= p.latency_bound_ms / 1e3 + 1e-12)
    j = pick(np.where(ok, thr, -lat), busy.max(axis=1))
    layers = [int(x) for x in k[j]]
    out = (layers, ReplicaEstimate(
        throughput=float(thr[j]), latency_s=float(lat[j]), batch=int(batch[j]),
        bottleneck_s=float(busy[j].max()), tpot_s=float(cyc[j]),
        ttft_s=float((k[j] * c.pre[idx]).sum()) + head1 + links))
    c.memo[key] = out
    return out


def pick(score: np.ndarray, bottleneck: np.ndarray) -> int:
    """The row of the highest `score` (usable first, then throughput; else the least latency);
    among rows within 1e-9 of it, the one whose busiest stage is least busy (a tie in the cycle
    is not one in the pipeline: the busiest stage is what the others wait on once sequences
    spread over the stages)."""
    top = float(score.max())
    near = np.flatnonzero(score >= top - 1e-9 * abs(top))
    return int(near[np.argmin(bottleneck[near])])
