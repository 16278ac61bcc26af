"""Frozen data types of the scheduler's pure core: model, nodes, links, snapshot and plan.

A `Snapshot` is everything phase 1 reads (nodes with their hardware and measurements, region links,
the model's shape, solver parameters); it has a canonical JSON form and a hash
(`Snapshot.canonical_hash`) that the coordinator publishes with each epoch so anyone can re-run the
solver. A `Plan` is what phase 1 returns: replicas, each an ordered tuple of `Stage(node, start,
end)` covering `[0, layers)`, plus standby nodes. `Plan.epoch_assignments()` gives the
`(operator, model_id, start, end)` rows the on-chain Scheduler contract takes. JSON parsing lives in
`scheduler.schema`; the documents are described in `scheduler/SCHEMAS.md`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

MIB = 1 << 20


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's shape; bytes and FLOPs per layer are derived from it."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied_embeddings: bool = False
    dtype_bytes: int = 2
    model_id: int = 0

    @cached_property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @cached_property
    def layer_params(self) -> int:
        kv = self.kv_heads * self.head_dim
        attn = 2 * self.hidden * self.hidden + 2 * self.hidden * kv  # q, o; k, v
        mlp = 3 * self.hidden * self.intermediate  # gate, up, down
        return attn + mlp + 2 * self.hidden  # two RMSNorm weights

    @cached_property
    def layer_bytes(self) -> int:
        return self.layer_params * self.dtype_bytes

    @cached_property
    def layer_flops(self) -> float:
        """FLOPs per token per layer (2 per weight; attention over the context is left out)."""
        return 2.0 * self.layer_params

    @cached_property
    def embed_bytes(self) -> int:
        return self.vocab * self.hidden * self.dtype_bytes

    @cached_property
    def head_bytes(self) -> int:
        """LM head plus final norm, held by the last stage (a copy of the embedding when tied)."""
        return self.vocab * self.hidden * self.dtype_bytes + self.hidden * self.dtype_bytes

    @cached_property
    def head_flops(self) -> float:
        """FLOPs per logits row of the LM head (2 per weight of the vocab × hidden matrix)."""
        return 2.0 * self.vocab * self.hidden

    @cached_property
    def kv_bytes_per_token_layer(self) -> int:
        return 2 * self.kv_heads * self.head_dim * self.dtype_bytes

    @cached_property
    def activation_bytes(self) -> int:
        """Bytes of one token's hidden state passed between stages."""
        return self.hidden * self.dtype_bytes

    def extra_bytes(self, first: bool, last: bool) -> int:
        """Non-layer weights a stage holds: embedding if first, LM head + norm if last.

        With tied embeddings a single stage that is both first and last holds the matrix once.
        """
        extra = 0
        if first:
            extra += self.embed_bytes
        if last:
            extra += self.head_bytes
            if first and self.tied_embeddings:
                extra -= self.embed_bytes
        return extra

    @cached_property
    def total_bytes(self) -> int:
        return self.layers * self.layer_bytes + self.extra_bytes(True, True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "model_id": self.model_id, "layers": self.layers,
            "hidden": self.hidden, "heads": self.heads, "kv_heads": self.kv_heads,
            "intermediate": self.intermediate, "vocab": self.vocab,
            "tied_embeddings": self.tied_embeddings, "dtype_bytes": self.dtype_bytes,
        }


@dataclass(frozen=True)
class NodeSpec:
    """One GPU box as the solver sees it (hardware profile plus what heartbeats measured)."""

    id: str
    region: str
    vram_mib: int
    tflops: float  # dense bf16 TFLOPS
    mem_bw_gbps: float  # GB/s of device memory bandwidth
    net_mbps: float  # Mbit/s of network bandwidth
    operator: str = ""
    gpu: str = ""
    available: bool = True
    layer_ms: float | None = None  # measured decode time per layer (batch 1), replaces the roofline
    # Measured per-layer step times: `(tokens in the step, ms per layer)` rows, tokens ascending
    # (decode rows or prompt tokens alike). When present they replace the roofline at every batch.
    step_ms: tuple[tuple[int, float], ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id, "region": self.region, "vram_mib": self.vram_mib,
            "tflops": self.tflops, "mem_bw_gbps": self.mem_bw_gbps, "net_mbps": self.net_mbps,
            "operator": self.operator, "gpu": self.gpu, "available": self.available,
        }
        if self.layer_ms is not None:
            d["layer_ms"] = self.layer_ms
        if self.step_ms is not None:
            d["step_ms"] = [[b, ms] for b, ms in self.step_ms]
        return d


@dataclass(frozen=True)
class Links:
    """Round-trip times (ms) and bandwidths (Mbit/s) between regions, plus measured node pairs.

    `rtt_ms[(a, b)]` is symmetric; a missing intra-region entry defaults to `intra_rtt_ms`. Pair
    measurements (`pairs[(node_a, node_b)] = (rtt_ms, mbps)`, keys sorted) override the regions'.
    """

    rtt_ms: dict[tuple[str, str], float] = field(default_factory=dict)
    bandwidth_mbps: dict[tuple[str, str], float] = field(default_factory=dict)
    pairs: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    intra_rtt_ms: float = 0.5

    def region_rtt_ms(self, a: str, b: str) -> float:
        key = (a, b) if a <= b else (b, a)
        if key in self.rtt_ms:
            return self.rtt_ms[key]
        if a == b:
            return self.intra_rtt_ms
        raise KeyError(f"no RTT between regions {a!r} and {b!r}")

    def region_mbps(self, a: str, b: str) -> float:
        key = (a, b) if a <= b else (b, a)
        return self.bandwidth_mbps.get(key, float("inf"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "intra_rtt_ms": self.intra_rtt_ms,
            "rtt_ms": [[a, b, v] for (a, b), v in sorted(self.rtt_ms.items())],
            "bandwidth_mbps": [[a, b, v] for (a, b), v in sorted(self.bandwidth_mbps.items())],
            "pairs": [[a, b, r, m] for (a, b), (r, m) in sorted(self.pairs.items())],
        }


@dataclass(frozen=True)
class Params:
    """Solver and performance-model parameters; part of the snapshot (and of its hash)."""

    kv_reserve_mib: int = 512  # per node, kept free of weights for KV caches
    memory_utilization: float = 0.9  # share of VRAM usable (the rest: runtime, fragmentation)
    context_tokens: int = 1024  # KV tokens a sequence reserves (prompt + output), for concurrency
    max_batch: int = 64  # sequences a node (so a replica) runs concurrently at most
    prompt_tokens: int = 256  # mean prompt of the request mix: prefill work per request
    output_tokens: int = 64  # mean output of the request mix: decode steps per request
    latency_bound_ms: float = 1000.0  # bound on one output token's time at the planned batch
    layer_overhead_us: float = 20.0  # fixed per-layer cost (kernel launches) added to the roofline

    def to_dict(self) -> dict[str, Any]:
        return {
            "kv_reserve_mib": self.kv_reserve_mib, "memory_utilization": self.memory_utilization,
            "context_tokens": self.context_tokens, "max_batch": self.max_batch,
            "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
            "latency_bound_ms": self.latency_bound_ms, "layer_overhead_us": self.layer_overhead_us,
        }


@dataclass(frozen=True)
class Snapshot:
    """Everything phase 1 reads. Nodes are kept sorted by id, so the order of input never matters."""

    model: ModelSpec
    nodes: tuple[NodeSpec, ...]
    links: Links = field(default_factory=Links)
    params: Params = field(default_factory=Params)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(sorted(self.nodes, key=lambda n: n.id)))

    def node(self, node_id: str) -> NodeSpec:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "model": self.model.to_dict(),
            "nodes": [n.to_dict() for n in self.nodes],
            "links": self.links.to_dict(),
            "params": self.params.to_dict(),
        }

    def canonical_json(self) -> bytes:
        """Sorted keys, no whitespace, floats by Python's shortest repr: byte-identical everywhere."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                          allow_nan=False).encode()

    def canonical_hash(self) -> str:
        """`0x` + sha256 of the canonical JSON; published with each epoch."""
        return "0x" + hashlib.sha256(self.canonical_json()).hexdigest()

    def with_nodes(self, nodes: tuple[NodeSpec, ...] | list[NodeSpec]) -> Snapshot:
        return Snapshot(model=self.model, nodes=tuple(nodes), links=self.links, params=self.params)


@dataclass(frozen=True)
class Stage:
    """Node `node` runs layers `[start, end)` of its replica."""

    node: str
    start: int
    end: int

    @property
    def layers(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Replica:
    """An ordered pipeline of stages covering `[0, layers)`."""

    stages: tuple[Stage, ...]

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(s.node for s in self.stages)


@dataclass(frozen=True)
class Plan:
    """Phase 1's output. `estimate` holds the solver's own figures (throughput, latency)."""

    model: ModelSpec
    replicas: tuple[Replica, ...]
    standby: tuple[str, ...] = ()
    snapshot_hash: str = ""
    solver: str = ""
    estimate: dict[str, float] = field(default_factory=dict, compare=False, hash=False)

    def stages(self) -> list[Stage]:
        return [s for r in self.replicas for s in r.stages]

    def epoch_assignments(self, snapshot: Snapshot) -> list[tuple[str, int, int, int]]:
        """`(operator, model_id, layer start, layer end)` rows for the on-chain epoch, sorted."""
        ops = {n.id: (n.operator or n.id) for n in snapshot.nodes}
        return sorted((ops[s.node], self.model.model_id, s.start, s.end) for s in self.stages())

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "solver": self.solver,
            "snapshot_hash": self.snapshot_hash,
            "model": self.model.to_dict(),
            "replicas": [
                {"stages": [{"node": s.node, "start": s.start, "end": s.end} for s in r.stages]}
                for r in self.replicas
            ],
            "standby": list(self.standby),
            "estimate": dict(sorted(self.estimate.items())),
        }
