"""Helpers of the scheduler tests (moved out of their conftest: fixtures stay there)."""

from __future__ import annotations

from hypothesis import strategies as st

from scheduler.model import Links, ModelSpec, NodeSpec, Params, Snapshot
from scheduler.sim.catalogue import GPUS, region_rtt_ms

REGIONS = ["us-east", "eu-west", "ap-northeast"]


def links_for(regions: list[str]) -> Links:
    rs = sorted(set(regions))
    return Links(rtt_ms={(a, b): region_rtt_ms(a, b) for i, a in enumerate(rs) for b in rs[i + 1:]},
                 bandwidth_mbps={(a, b): 1000.0 for i, a in enumerate(rs) for b in rs[i + 1:]},
                 intra_rtt_ms=1.0)


@st.composite
def models(draw: st.DrawFn) -> ModelSpec:
    kv = draw(st.sampled_from([1, 2, 4]))
    heads = kv * draw(st.sampled_from([1, 2, 4]))
    hidden = heads * draw(st.sampled_from([32, 64, 128]))
    return ModelSpec(name="m", layers=draw(st.integers(2, 48)), hidden=hidden, heads=heads,
                     kv_heads=kv, intermediate=hidden * draw(st.integers(2, 4)),
                     vocab=draw(st.sampled_from([1000, 32000, 128000])),
                     tied_embeddings=draw(st.booleans()), dtype_bytes=draw(st.sampled_from([1, 2, 4])))


@st.composite
def snapshots(draw: st.DrawFn, max_nodes: int = 8) -> Snapshot:
    model = draw(models())
    n = draw(st.integers(1, max_nodes))
    layer_mib = max(model.layer_bytes // (1 << 20), 1)
    total_mib = model.total_bytes / (1 << 20)
    reserve = draw(st.sampled_from([0, 16, 256]))
    nodes = []
    regions = []
    for i in range(n):
        g = GPUS[draw(st.sampled_from(sorted(GPUS)))]
        region = draw(st.sampled_from(REGIONS))
        regions.append(region)
        # Mostly a share of one replica (multi-stage pipelines); sometimes too small for a layer.
        if draw(st.integers(0, 9)) == 0:
            vram = draw(st.integers(1, 2 * layer_mib))
        else:
            vram = int((total_mib * draw(st.floats(0.08, 1.6)) + reserve) / 0.9) + 1
        layer_ms = draw(st.one_of(st.none(), st.floats(0.01, 20.0)))
        nodes.append(NodeSpec(id=f"n{i:02d}", region=region, vram_mib=vram, tflops=g.tflops,
                              mem_bw_gbps=g.mem_bw_gbps, net_mbps=g.net_mbps, operator=f"op{i}",
                              gpu=g.name, available=draw(st.integers(0, 4)) > 0 or i == 0,
                              layer_ms=layer_ms))
    params = Params(kv_reserve_mib=reserve,
                    context_tokens=draw(st.sampled_from([128, 1024])),
                    max_batch=draw(st.sampled_from([1, 8, 64])),
                    latency_bound_ms=draw(st.sampled_from([50.0, 1000.0, 1e6])))
    return Snapshot(model=model, nodes=tuple(nodes), links=links_for(regions), params=params)
