"""The LM head's step on the last stage (`costs.head_time`): priced by the planner and run by the
simulator, and weighed by the layer split (a heavy head leaves the last stage fewer layers)."""

from __future__ import annotations

import pytest

from scheduler.allocate import allocate
from scheduler.costs import (
    build_cluster,
    estimate,
    head_scale,
    head_times,
    layer_time,
    ring_links,
    unit_cost,
)
from scheduler.model import ModelSpec, NodeSpec, Params, Plan, Replica, Snapshot, Stage
from scheduler.sim.catalogue import MODELS
from scheduler.sim.score import simulate
from scheduler.sim.workload import Workload
from scheduler.split import best_split

MIX = Params(prompt_tokens=256, output_tokens=64, context_tokens=320)


def _equal(count: int, model: ModelSpec, vram_mib: int = 16384, **kw: float) -> Snapshot:
    """`count` identical GPUs in one region (30 TFLOPS, 400 GB/s unless told)."""
    spec = {"tflops": 30.0, "mem_bw_gbps": 400.0, "net_mbps": 10_000.0, **kw}
    nodes = tuple(NodeSpec(id=f"n{i}", region="us-east", vram_mib=vram_mib, **spec)
                  for i in range(count))
    return Snapshot(model=model, nodes=nodes, params=MIX)


def test_the_head_step_is_a_weight_read_at_few_rows_and_compute_at_many() -> None:
    m = MODELS["llama3-8b"]
    c = build_cluster(_equal(1, m))
    read = m.head_bytes / 400e9 + MIX.layer_overhead_us / 1e6  # 1.05 GB over 400 GB/s
    assert head_times(c, [0], 1)[0] == pytest.approx(read, rel=1e-12)
    rows = 4096  # far past the ridge: 2 × vocab × hidden FLOPs a row
    assert head_times(c, [0], rows)[0] == pytest.approx(rows * 2 * m.vocab * m.hidden / 30e12)
    assert head_scale(m) == pytest.approx(2.41, abs=0.01)  # an 8B head weighs 2.4 layers
    assert head_scale(MODELS["smollm2-135m"]) == pytest.approx(8.0, abs=0.01)


def test_a_measured_node_scales_its_layer_step_to_the_head() -> None:
    """`step_ms` calibrates the head too (the head is one matmul of the layers' kind): the
    measured curve times head ÷ layer weights; a batch-1 `layer_ms` calibrates its weight read."""
    m = MODELS["llama3-8b"]
    table = ((1, 0.5), (64, 0.8), (512, 4.0))
    snap = _equal(2, m)
    nodes = (NodeSpec(id="n0", region="us-east", vram_mib=16384, tflops=30, mem_bw_gbps=400,
                      net_mbps=10_000, step_ms=table),
             NodeSpec(id="n1", region="us-east", vram_mib=16384, tflops=30, mem_bw_gbps=400,
                      net_mbps=10_000, layer_ms=0.7))
    c = build_cluster(Snapshot(model=m, nodes=nodes, params=snap.params))
    scale = head_scale(m)
    assert head_times(c, [0], 64)[0] == pytest.approx(scale * 0.8e-3)
    assert head_times(c, [0], 32)[0] == pytest.approx(scale * layer_time(c, 0, 32))
    assert head_times(c, [1], 1)[0] == pytest.approx(scale * 0.7e-3)


def test_the_estimate_counts_the_head_once_on_the_last_stage() -> None:
    """A 2-stage replica's cycle: every layer's share (`unit_cost`), the head's decode step and
    its prompts' rows on the last stage, the ring's links."""
    m = MODELS["llama3-8b"]
    snap = _equal(2, m)
    c = build_cluster(snap)
    est = estimate(c, [0, 1], [17, 15])
    assert est.batch == 64
    one = float(head_times(c, [1], 1)[0])
    prompts = est.batch / MIX.output_tokens
    head = float(head_times(c, [1], est.batch)[0]) + 2 ** -0.5 * prompts * one
    layers = (17 * unit_cost(c, [0], 64.0, 2) + 15 * unit_cost(c, [1], 64.0, 2))[0]
    assert est.tpot_s == pytest.approx(layers + head + ring_links(c, [0, 1]), rel=1e-12)
    # the head's 1.05 GB read per decode step is 2.4 layers' weights; beside every layer's KV
    # reads and prompt steps it is ~4 % of the cycle
    assert 0.03 < head / est.tpot_s < 2.41 / 32
    assert est.latency_s > 17 * c.lat1[0] + 15 * c.lat1[1] + one * 0.999


def test_equal_nodes_give_the_last_stage_fewer_layers_when_the_head_is_heavy() -> None:
    """Four identical 16 GB GPUs serving Llama-3-8B (a 1 GB head, 2.4 layers' worth) form two
    2-stage replicas; with the head unpriced they split 16/16, now the last stage holds fewer
    layers than an even split (and the first, which holds only the embedding lookup, more)."""
    m = MODELS["llama3-8b"]
    plan = allocate(_equal(4, m))
    assert len(plan.replicas) == 2
    for rep in plan.replicas:
        layers = [s.layers for s in rep.stages]
        assert len(layers) == 2 and sum(layers) == m.layers
        assert layers[-1] < m.layers / 2 < layers[0]


def test_a_tied_heavy_head_takes_layers_off_the_last_of_three_equal_stages() -> None:
    """SmolLM2's tied head weighs 8 of its 30 layers: three equal stages split it so the last
    one holds the fewest (before: 28/1/1, the layers piled on whichever stage came first)."""
    m = MODELS["smollm2-135m"]
    c = build_cluster(_equal(3, m, vram_mib=8192))
    got = best_split(c, [0, 1, 2])
    assert got is not None
    layers = got[0]
    assert sum(layers) == m.layers
    assert layers[-1] < min(layers[:-1]) and layers[-1] < m.layers / 3


def test_the_simulator_runs_the_head_after_the_last_layer() -> None:
    """One request of a fixed prompt and one output token on a one-node replica: its prefill
    takes every layer's step and then the head over one row (the prompt's last)."""
    m = MODELS["llama3-8b"]
    snap = _equal(1, m, vram_mib=40960)
    plan = Plan(model=m, replicas=(Replica((Stage("n0", 0, m.layers),)),), standby=())
    load = Workload(requests=1, rate_per_s=1.0, prompt_mean=200, output_mean=1, sigma=0.0)
    res = simulate(snap, plan, load, "router")
    c = build_cluster(snap)
    expect = m.layers * layer_time(c, 0, 200, 200) + float(head_times(c, [0], 1)[0])
    assert res.completed == 1
    assert res.makespan_s == pytest.approx(expect, rel=1e-9)
