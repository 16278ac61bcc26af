"""The cost model at the batch a replica will run: regression cases from issue 18's "Why", measured
step times, the batch cap and prefill/decode interference in the simulator, estimates that hold."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from scheduler.allocate import allocate
from scheduler.costs import build_cluster, estimate, layer_time
from scheduler.errors import InvalidInput
from scheduler.model import NodeSpec, Plan, Replica, Snapshot, Stage
from scheduler.schema import check_plan, parse_snapshot
from scheduler.sim.catalogue import GPUS, MODELS
from scheduler.sim.cluster import gen_cluster
from scheduler.sim.score import run_simulation, simulate
from scheduler.sim.workload import Workload
from tests.support.scheduler import links_for

MIX = {"prompt_tokens": 256, "output_tokens": 64, "context_tokens": 320}
ISSUE_LOAD = Workload(requests=400, rate_per_s=1e9, prompt_mean=256, output_mean=64, seed=1)


def _snap(nodes: int, mix: str, seed: int, model: str = "llama3-70b",
          regions: tuple[str, ...] = ("us-east", "eu-west")) -> Snapshot:
    return parse_snapshot(gen_cluster(nodes, mix, list(regions), seed=seed, params=MIX),
                          MODELS[model])


def _gpu(snap: Snapshot, node: str) -> str:
    return snap.node(node).gpu


def _saturating(plan: Plan, seed: int = 0, times: float = 2.5) -> Workload:
    """Every request at once, `times` what the plan holds concurrently: the cluster runs full."""
    n = max(300, int(times * plan.estimate["concurrency"]))
    return Workload(requests=n, rate_per_s=1e9, prompt_mean=256, output_mean=64, seed=seed)


# -- issue 18, case 1: a lone M2-Ultra rated at batch 1 ------------------------------------------

def test_a_prompt_on_an_m2_ultra_is_priced_by_its_flops() -> None:
    """A 256-token prefill of the 70B model at 27 TFLOPS takes ~1.3 s (not one decode step)."""
    snap = _snap(8, "mixed", seed=3)
    c = build_cluster(snap)
    m2 = next(i for i, nid in enumerate(c.ids) if _gpu(snap, nid) == "M2-Ultra")
    prefill = 80 * float(c.pre[m2])
    assert prefill == pytest.approx(256 * 80 * MODELS["llama3-70b"].layer_flops / 27e12, rel=1e-6)
    assert 1.2 < prefill < 1.4
    alone = estimate(c, [m2], [80])
    assert alone.batch == 64
    assert alone.tpot_s > 1.0  # a full batch, with its share of prompts, is compute-bound
    assert alone.throughput < 70  # the old batch-1 model rated this replica at 371 tok/s


def test_the_m2_ultra_cluster_keeps_no_straggler_replica_and_finishes_sooner() -> None:
    snap = _snap(8, "mixed", seed=3)
    ours = allocate(snap)
    assert not any(len(r.stages) == 1 and _gpu(snap, r.stages[0].node) == "M2-Ultra"
                   for r in ours.replicas)
    # The straggler plan (what the batch-1 model chose): the M2-Ultra alone as a replica, the
    # rest planned without it.
    m2 = next(n.id for n in snap.nodes if n.gpu == "M2-Ultra")
    others = allocate(snap.with_nodes([replace(n, available=n.id != m2) for n in snap.nodes]))
    straggler = replace(others, replicas=(*others.replicas, Replica((Stage(m2, 0, 80),))))
    assert check_plan(straggler, snap) == []
    for policy in ("router", "rr"):
        good = simulate(snap, ours, ISSUE_LOAD, policy)
        bad = simulate(snap, straggler, ISSUE_LOAD, policy)
        assert good.makespan_s < bad.makespan_s, policy


# -- issue 18, case 2: estimates far from what the simulator measures ----------------------------

@pytest.mark.parametrize("nodes, mix, seed, model", [
    (8, "mixed", 3, "llama3-70b"),  # the M2-Ultra cluster
    (24, "datacenter", 5, "llama3-70b"),  # H200s: the batch cap, not memory, bounds a replica
    (16, "consumer", 1, "llama3-70b"),  # 6–7 stage consumer chains
    (16, "datacenter", 2, "llama3-8b"),  # one GPU per replica: prompts share the decode steps
    (8, "apple", 8, "llama3-70b"),
])
def test_the_planners_estimate_is_within_25_percent_of_the_simulated_rate(nodes, mix, seed,
                                                                          model) -> None:
    snap = _snap(nodes, mix, seed, model)
    plan = allocate(snap)
    res = simulate(snap, plan, _saturating(plan), "router")
    assert res.saturated_tok_s is not None, "the run never saturated the cluster"
    est = plan.estimate["throughput_tok_s"]
    assert abs(res.saturated_tok_s - est) / res.saturated_tok_s <= 0.25, (est, res)


def test_a_64_node_datacenter_estimate_holds_in_the_simulator() -> None:
    """The issue's 64-node datacenter cluster over three regions: estimated 37.4k tok/s, measured
    7.8k before; now the estimate is the saturated rate the simulator measures, within 25 %."""
    snap = _snap(64, "datacenter", seed=1, regions=("us-east", "eu-west", "ap-northeast"))
    plan = allocate(snap)
    res = simulate(snap, plan, _saturating(plan, times=1.5), "router")
    assert res.saturated_tok_s is not None
    est = plan.estimate["throughput_tok_s"]
    assert abs(res.saturated_tok_s - est) / res.saturated_tok_s <= 0.25, (est, res)


def test_h200s_pair_with_smaller_gpus_when_the_batch_cap_binds() -> None:
    """Once a replica hits max_batch, a second H200's memory buys nothing: pairing each H200 with
    an H100/A100 makes more replicas than H200 pairs would."""
    doc = gen_cluster(8, "H200:1,H100:1", ["us-east", "eu-west"], seed=4, params=MIX)
    snap = parse_snapshot(doc, MODELS["llama3-70b"])
    plan = allocate(snap)
    assert len(plan.replicas) == len(snap.nodes) // 2


# -- issue 18, case 3: plans that only the load-aware router can serve ----------------------------

@pytest.mark.parametrize("nodes, mix, seed", [(32, "mixed", 2), (16, "mixed", 17)])
def test_our_plan_serves_nearly_as_well_under_round_robin(nodes, mix, seed) -> None:
    snap = _snap(nodes, mix, seed)
    plan = allocate(snap)
    load = _saturating(plan)
    routed = simulate(snap, plan, load, "router").throughput_tok_s
    rr = simulate(snap, plan, load, "rr").throughput_tok_s
    assert rr >= 0.7 * routed  # the issue's plan: 1,823 tok/s routed, 125 round robin


def test_slow_gpus_left_standby_trade_a_little_router_throughput_for_much_more_round_robin() -> None:
    """The bench's worst cluster (llama3-8b/consumer/24/seed3, plan_vs_best 0.944): four RTX
    3090s, each holding the 8B model alone, serve half what a 4090 does at a full batch. Kept as
    replicas they add a few per cent under the load-aware router but set the finish time under
    round robin; the plan leaves them standby. Neither plan is better under both routings."""
    doc = gen_cluster(24, "consumer", ["us-east", "eu-west", "ap-northeast"], seed=324, params=MIX)
    snap = parse_snapshot(doc, MODELS["llama3-8b"])
    ours = allocate(snap)
    slow = [n for n in ours.standby if _gpu(snap, n) == "RTX3090"]
    assert len(slow) == 4 and len(ours.replicas) == 20
    kept = replace(ours, replicas=(*ours.replicas, *(Replica((Stage(n, 0, 32),)) for n in slow)),
                   standby=tuple(n for n in ours.standby if n not in slow))
    assert check_plan(kept, snap) == []
    load = _saturating(ours, seed=3, times=2)
    ratio = {p: simulate(snap, ours, load, p).throughput_tok_s
             / simulate(snap, kept, load, p).throughput_tok_s for p in ("router", "rr")}
    assert 0.9 < ratio["router"] < 1.0  # the price: a few per cent under the router
    assert ratio["rr"] > 1.25  # what it buys under round robin


def test_the_worst_clusters_router_shortfall_is_within_the_offline_batchs_noise() -> None:
    """The same cluster over four workload seeds (the bench's batch size, 2 x what our plan holds):
    an offline batch ends with a tail of long requests (outputs up to 4 x the mean), so which
    plan finishes first moves by several per cent with the draw. Leaving the 3090s standby gives
    0.955-1.07 of the keep-all plan over these seeds, 0.99 on average (0.944-1.03 before the LM
    head's step was priced on the last stage). The slow GPUs as a pipeline
    of their own (tried: three 3090s split evenly, 1.35 x one of them) did no better on average
    under the router (0.969 vs 0.974 of keep-all over 12 draws) and lost 15 % under round robin,
    so the planner does not make one."""
    doc = gen_cluster(24, "consumer", ["us-east", "eu-west", "ap-northeast"], seed=324, params=MIX)
    snap = parse_snapshot(doc, MODELS["llama3-8b"])
    ours = allocate(snap)
    slow = [n for n in ours.standby if _gpu(snap, n) == "RTX3090"]
    kept = replace(ours, replicas=(*ours.replicas, *(Replica((Stage(n, 0, 32),)) for n in slow)),
                   standby=tuple(n for n in ours.standby if n not in slow))
    router, rr = [], []
    for seed in range(4):
        load = _saturating(ours, seed=seed, times=2)
        router.append(simulate(snap, ours, load, "router").throughput_tok_s
                      / simulate(snap, kept, load, "router").throughput_tok_s)
        rr.append(simulate(snap, ours, load, "rr").throughput_tok_s
                  / simulate(snap, kept, load, "rr").throughput_tok_s)
    assert max(router) - min(router) > 0.05  # the draw moves the ratio by several per cent
    assert min(router) < 0.97 and float(np.mean(router)) > 0.95  # a miss at some, not on average
    assert max(router) > 1.0  # at one draw the standby plan finishes first under both routings
    assert min(rr) > 1.2


# -- measured step times --------------------------------------------------------------------------

def _h100(node_id: str, **kw) -> NodeSpec:
    g = GPUS["H100"]
    return NodeSpec(id=node_id, region="us-east", vram_mib=g.vram_mib, tflops=g.tflops,
                    mem_bw_gbps=g.mem_bw_gbps, net_mbps=g.net_mbps, gpu="H100", **kw)


def test_measured_step_times_replace_the_roofline_at_every_batch() -> None:
    table = ((1, 0.4), (16, 0.5), (64, 1.1))
    snap = Snapshot(model=MODELS["llama3-8b"], nodes=(_h100("a", step_ms=table),),
                    links=links_for(["us-east"]))
    c = build_cluster(snap)
    assert layer_time(c, 0, 1) == pytest.approx(0.4e-3)
    assert layer_time(c, 0, 8) == pytest.approx((0.4 + (0.5 - 0.4) * 7 / 15) * 1e-3)
    assert layer_time(c, 0, 64) == pytest.approx(1.1e-3)
    assert layer_time(c, 0, 128) == pytest.approx((1.1 + 0.6 / 48 * 64) * 1e-3)  # last slope
    kv = 1000 * c.model.kv_bytes_per_token_layer / float(c.mem_bw[0])
    assert layer_time(c, 0, 64, 1000) == pytest.approx(1.1e-3 + kv)  # context read on top


def test_the_simulator_runs_at_the_measured_step_times_and_the_estimate_follows() -> None:
    fast = Snapshot(model=MODELS["llama3-8b"], nodes=(_h100("a"),), links=links_for(["us-east"]),
                    params=replace(Snapshot(model=MODELS["llama3-8b"], nodes=()).params,
                                   context_tokens=320))
    c = build_cluster(fast)
    roofline = tuple((b, 1e3 * layer_time(c, 0, b)) for b in (1, 64, 512))
    slow = fast.with_nodes([_h100("a", step_ms=tuple((b, 3 * ms) for b, ms in roofline))])
    results = {}
    for name, snap in (("roofline", fast), ("measured", slow)):
        plan = allocate(snap)
        res = simulate(snap, plan, _saturating(plan), "router")
        assert res.saturated_tok_s is not None
        est = plan.estimate["throughput_tok_s"]
        assert abs(res.saturated_tok_s - est) / res.saturated_tok_s <= 0.25, (name, est, res)
        results[name] = res.saturated_tok_s
    assert results["measured"] < 0.5 * results["roofline"]


@pytest.mark.parametrize("rows, message", [
    ([], "1 to 64"), ([[0, 1.0]], "tokens >= 1"), ([[1, 0.0]], "ms in"),
    ([[4, 1.0], [2, 2.0]], "must ascend"), ([[1.5, 1.0]], "integer"), ("fast", "expected a list"),
])
def test_bad_measured_step_tables_are_refused_naming_the_field(rows, message) -> None:
    doc = gen_cluster(1, "H100:1", ["us-east"], seed=0)
    doc["nodes"][0]["step_ms"] = rows
    with pytest.raises(InvalidInput, match=f"nodes\\[0\\].step_ms.*{message}"):
        parse_snapshot(doc, MODELS["llama3-8b"])


def test_a_measured_table_round_trips_through_the_snapshot_json() -> None:
    doc = gen_cluster(2, "H100:1", ["us-east"], seed=0)
    doc["nodes"][0]["step_ms"] = [[1, 0.2], [64, 0.3]]
    snap = parse_snapshot(doc, MODELS["llama3-8b"])
    again = parse_snapshot(snap.to_dict(), None)
    assert again.canonical_hash() == snap.canonical_hash()
    assert again.node(doc["nodes"][0]["id"]).step_ms == ((1, 0.2), (64, 0.3))


# -- the simulator: batch cap and prefill/decode interference ------------------------------------

@pytest.mark.parametrize("policy", ["router", "rr"])
def test_no_node_ever_runs_more_than_max_batch_sequences(policy) -> None:
    snap = _snap(16, "datacenter", seed=2, model="llama3-8b")
    plan = allocate(snap)
    sim = run_simulation(snap, plan, _saturating(plan), policy)
    peak = {n: 0 for n in sim.active}
    original = sim._admit

    def watch(lane: int) -> None:
        original(lane)
        for n, a in sim.active.items():
            peak[n] = max(peak[n], a)

    sim._admit = watch  # type: ignore[method-assign]
    res = sim.run()
    assert res.completed == res.requests
    assert max(peak.values()) == snap.params.max_batch


def test_long_prompts_slow_the_decoding_sequences_that_share_their_steps() -> None:
    snap = _snap(8, "datacenter", seed=2, model="llama3-8b")
    plan = allocate(snap)
    short = Workload(requests=600, rate_per_s=1e9, prompt_mean=32, output_mean=64, seed=3)
    long = replace(short, prompt_mean=1024, prompt_max=4096)
    tpot_short = simulate(snap, plan, short).tpot_p50_ms
    tpot_long = simulate(snap, plan, long).tpot_p50_ms
    assert tpot_long > 1.3 * tpot_short


def test_saturated_rate_is_only_reported_when_requests_had_to_wait() -> None:
    snap = _snap(8, "datacenter", seed=2, model="llama3-8b")
    plan = allocate(snap)
    light = Workload(requests=20, rate_per_s=1.0, seed=1)
    assert simulate(snap, plan, light).saturated_tok_s is None
    assert np.isfinite(simulate(snap, plan, _saturating(plan)).saturated_tok_s)
