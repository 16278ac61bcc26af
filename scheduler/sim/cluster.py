"""`gen_cluster`: seeded synthetic cluster documents (see SCHEMAS.md) drawn from the catalogue."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from scheduler.errors import InvalidInput
from scheduler.sim.catalogue import (
    GPUS,
    INTER_REGION_MBPS,
    INTRA_RTT_MS,
    REGIONS,
    parse_mix,
    region_rtt_ms,
)

MAX_NODES = 1_000_000  # a generated cluster's size; the solver bench goes to 10,000


def gen_cluster(nodes: int, mix: str | dict[str, float] = "mixed",
                regions: list[str] | None = None, seed: int = 0,
                params: dict[str, Any] | None = None) -> dict[str, Any]:
    """A cluster document of `nodes` GPUs drawn by `mix` weights, spread over `regions`."""
    if not 0 <= nodes <= MAX_NODES:
        raise InvalidInput(f"--nodes must be in [0, {MAX_NODES:,}], got {nodes}")
    weights = parse_mix(mix) if isinstance(mix, str) else dict(mix)
    regions = list(regions or ["us-east"])
    for r in regions:
        if r not in REGIONS:
            raise InvalidInput(f"unknown region {r!r}; known: {', '.join(REGIONS)}")
    rng = np.random.default_rng(seed)
    names = sorted(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    p /= p.sum()
    picks = rng.choice(len(names), size=nodes, p=p)
    where = rng.integers(0, len(regions), size=nodes)
    width = max(5, len(str(nodes)))
    node_docs = []
    for i in range(nodes):
        g = GPUS[names[int(picks[i])]]
        op = hashlib.sha256(f"veriplex-sim:{seed}:{i}".encode()).hexdigest()[:40]
        node_docs.append({
            "id": f"n{i:0{width}d}", "operator": "0x" + op, "gpu": g.name,
            "region": regions[int(where[i])], "vram_mib": g.vram_mib, "tflops": g.tflops,
            "mem_bw_gbps": g.mem_bw_gbps, "net_mbps": g.net_mbps, "available": True,
        })
    used = sorted(set(regions))
    rtt = [[a, b, region_rtt_ms(a, b)] for i, a in enumerate(used) for b in used[i + 1:]]
    bw = [[a, b, INTER_REGION_MBPS] for i, a in enumerate(used) for b in used[i + 1:]]
    doc: dict[str, Any] = {
        "version": 1,
        "links": {"intra_rtt_ms": INTRA_RTT_MS, "rtt_ms": rtt, "bandwidth_mbps": bw, "pairs": []},
        "nodes": node_docs,
    }
    if params:
        doc["params"] = dict(params)
    return doc
