"""The simulator: reproducible, scores any valid allocation, and ranks our plan above greedy + RR."""

from __future__ import annotations

import pytest

from scheduler.allocate import allocate
from scheduler.errors import InvalidInput, InvalidPlan
from scheduler.model import Plan, Replica, Stage
from scheduler.schema import parse_plan
from scheduler.sim.baselines import greedy_plan
from scheduler.sim.cluster import gen_cluster
from scheduler.sim.score import simulate
from scheduler.sim.workload import Workload

LOAD = Workload(requests=150, rate_per_s=40.0, prompt_mean=128, output_mean=32, seed=5)


def test_the_same_inputs_give_the_same_simulated_figures(mixed_70b) -> None:
    plan = allocate(mixed_70b)
    assert simulate(mixed_70b, plan, LOAD) == simulate(mixed_70b, plan, LOAD)


def test_every_request_completes_and_figures_are_consistent(mixed_70b) -> None:
    res = simulate(mixed_70b, allocate(mixed_70b), LOAD)
    assert res.completed == LOAD.requests and res.rejected == 0
    assert res.throughput_tok_s == pytest.approx(res.output_tokens / res.makespan_s)
    assert res.sustained_tok_s > 0
    assert 0 < res.ttft_p50_ms <= res.latency_p50_ms <= res.latency_p99_ms
    assert res.tpot_p50_ms > 0


def test_our_plan_and_router_outserve_greedy_placement_with_round_robin(mixed_70b) -> None:
    ours = simulate(mixed_70b, allocate(mixed_70b), LOAD, "router")
    base = simulate(mixed_70b, greedy_plan(mixed_70b), LOAD, "rr")
    assert ours.throughput_tok_s > base.throughput_tok_s
    assert ours.latency_p99_ms < base.latency_p99_ms


def test_an_allocation_from_json_is_scored_like_the_in_memory_one(mixed_70b) -> None:
    plan = allocate(mixed_70b)
    again = parse_plan(plan.to_dict())
    assert simulate(mixed_70b, again, LOAD, "noload") == simulate(mixed_70b, plan, LOAD, "noload")


def test_an_allocation_that_breaks_coverage_or_memory_is_refused(mixed_70b) -> None:
    m = mixed_70b.model
    node = mixed_70b.nodes[0].id
    gap = Plan(model=m, replicas=(Replica((Stage(node, 0, 10),)),))
    with pytest.raises(InvalidPlan, match="ends at layer 10"):
        simulate(mixed_70b, gap, LOAD)
    whole = Plan(model=m, replicas=(Replica((Stage(node, 0, m.layers),)),))
    with pytest.raises(InvalidPlan, match="exceed its budget"):
        simulate(mixed_70b, whole, LOAD)


def test_a_request_larger_than_any_kv_budget_is_rejected_not_hung(mixed_70b) -> None:
    huge = Workload(requests=3, rate_per_s=1.0, prompt_mean=10**6, prompt_max=10**6, sigma=0.0)
    res = simulate(mixed_70b, allocate(mixed_70b), huge)
    assert res.rejected == 3 and res.completed == 0


def test_generated_clusters_are_reproducible_per_seed() -> None:
    a = gen_cluster(30, "mixed", ["us-east", "eu-west"], seed=11)
    assert a == gen_cluster(30, "mixed", ["us-east", "eu-west"], seed=11)
    assert a != gen_cluster(30, "mixed", ["us-east", "eu-west"], seed=12)
    assert {n["region"] for n in a["nodes"]} == {"us-east", "eu-west"}


@pytest.mark.parametrize("bad, message", [
    ({"requests": 0}, "requests"), ({"rate_per_s": -1}, "rate_per_s"), ({"bogus": 1}, "unknown"),
    ({"requests": 10**8}, "requests: must be an integer in"), ({"seed": -1}, "seed"),
    ({"seed": 1e30}, "seed"), ({"rate_per_s": 10**400}, "rate_per_s: expected a finite number"),
    ({"rate_per_s": float("nan")}, "rate_per_s"), ({"sigma": "wide"}, "sigma"),
    ({"prompt_max": 10**12}, "prompt_max"),
])
def test_bad_workloads_are_refused_with_the_field_named(bad, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        Workload.from_dict(bad)


def test_unknown_gpus_and_regions_are_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown GPU"):
        gen_cluster(3, "B200:1")
    with pytest.raises(InvalidInput, match="unknown region"):
        gen_cluster(3, "mixed", ["mars"])
    with pytest.raises(InvalidInput, match="--nodes must be in"):
        gen_cluster(-1)
    with pytest.raises(InvalidInput, match="--nodes must be in"):
        gen_cluster(10**9)


@pytest.mark.parametrize("mix", ["H100:nan", "H100:inf", "H100:-1", "H100:x", "H100:0"])
def test_mix_weights_that_are_not_finite_and_positive_are_refused(mix: str) -> None:
    with pytest.raises(InvalidInput, match="--mix"):
        gen_cluster(3, mix)


@pytest.mark.parametrize("policy", ["router", "noload", "rr"])
def test_kv_admission_never_overfills_a_node_and_frees_everything(mixed_70b, policy) -> None:
    from scheduler.sim.score import run_simulation

    heavy = Workload(requests=200, rate_per_s=1e4, prompt_mean=2048, prompt_max=4096,
                     output_mean=32, seed=9)
    plan = allocate(mixed_70b) if policy != "rr" else greedy_plan(mixed_70b)
    sim = run_simulation(mixed_70b, plan, heavy, policy)
    res = sim.run()
    assert res.completed == heavy.requests
    assert all(sim.kv_peak[n] <= sim.kv_capacity[n] for n in sim.kv_capacity)
    assert max(sim.kv_peak[n] / sim.kv_capacity[n] for n in sim.kv_capacity) > 0.9  # KV was the limit
    assert all(v == 0 for v in sim.kv_used.values()) and all(v == 0 for v in sim.active.values())
