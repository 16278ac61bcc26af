"""Scheduler benchmark: solve time, gap to the exact solver, simulated serving against baselines.

Prints one `name: value` line per figure, then a one-line summary (DESIGN §9):

  solve_s_{10,100,1000,10000}  phase-1 CPU time on one core (pinned, single-threaded; immune to
                               noisy neighbours), Llama-3-70B-like model, mixed GPUs over three
                               regions (best of 3 runs below 10,000); solve_wall_s_* the wall time
  solve_s_10000_smollm2        the same at 10,000 nodes for SmolLM2-135M (every GPU holds it alone)
  exact_gap, exact_gap_max     mean / worst 1 − heuristic ÷ exact estimated throughput over small
                               random mixed clusters (6–9 nodes, 70B-like: multi-stage pipelines)
  exact_gap_16, _16_max        the same over 14–16-node clusters of three GPU kinds (H100, A100-80,
                               L40S) in two regions; exact_s_16 the slowest exact solve (seconds)
  throughput_vs_rr             simulated output tokens/s, our plan + load-aware router ÷ greedy
                               placement + round-robin, offline batch (all requests at once),
                               geometric mean over 24-GPU mixed clusters in two regions serving the
                               70B-like model; `_smollm2`: 8 GPUs serving SmolLM2-135M
  throughput_vs_rr_sustained   the same, open loop at 1.2× what ours serves offline (Poisson,
                               600/2,000 requests): tokens produced during the arrival window
  throughput_vs_noload         ours ÷ our plan with the load-blind router
  plan_gain_under_rr           our plan ÷ greedy placement, both served round-robin (placement alone)
  routing_gain_over_rr         our router ÷ round-robin, both on our plan (routing alone)
  p99_ms_{ours,rr,noload}      p99 end-to-end latency at a moderate load (half of what greedy + RR
                               sustains), and the ratios p99_rr_over_ours, p99_noload_over_ours;
  p99_noload_over_ours_busy    the same ratio at half of what ours sustains (where load matters)

  Over generated clusters (sizes 8–64, mixes mixed/datacenter/consumer/apple, 2–3 regions,
  5 seeds, Llama-3-70B and -8B alternating; the plans are made for the request mix they serve:
  prompts 256, outputs 64 tokens), each plan serves an offline batch (2× what our plan holds at
  once) under the load-aware router and under strict round robin, on the SAME three workload
  draws (`--draws`; draw 0 is the one the figures used before), and its throughput is the mean
  over them. An offline batch ends in a tail of long requests (outputs log-normal, up to 4× the
  mean) whose draw moves one plan's makespan by up to ~20 % (more on small clusters); on one
  draw "the best of every other plan" picks whichever alternative that draw's tail favoured (a
  winner's-curse bias against ours), and the mean over common draws shrinks that noise without
  changing the target. An alternative below 0.8 of ours on draw 0 under both routings is scored
  on draw 0 alone (`screened_plans`: it cannot be the best, and skipping its other draws keeps
  the run near its old length):
  plan_vs_best_min, _median     our mean throughput ÷ the best mean of every other plan we produce
                               (greedy, ours on summed throughput only, the exact solver on
                               8-node clusters), router; `_rr` the same under round robin
  plan_vs_best_min_1draw, _rr_1draw, _median_1draw   the same on draw 0 alone (the old figure)
  estimate_error_p90, _max     |simulated saturated rate − our planner's estimate| ÷ simulated
                               (`saturated_tok_s`: from the first completion to the last waited
                               admission; one sample per cluster, on draw 0); tpot_error_p90 the
                               same for the median time per token
                               (the plan's `tpot_ms` against the run's `tpot_p50_ms`), and
                               tpot_mean_error_p90 for the mean (`mean_tpot_ms`, `tpot_mean_ms`)
  worst_cluster, _rr           where plan_vs_best is lowest
  simulations, robust_cpu_s, robust_wall_s   simulations run for the generated clusters, their
                               CPU seconds (summed over the worker processes) and wall time
  dominated_clusters           clusters where another plan we produce beats ours by > 1 % under
                               both routings at once (target 0: ours is on the frontier of the two;
                               a plan_vs_best below 1 on one routing is then a trade for the other)

Run: `.venv/bin/python bench/scheduler.py [--quick] [--verbose] [--only SECTIONS]
[--seeds 0,1] [--sizes 8,24] [--mixes consumer] [--draws N] [--jobs N] [--cache FILE]` (--verbose: one line
per generated cluster on stderr, with its seconds; --only: a comma list of solve, exact, serve,
robust; --seeds, --sizes, --mixes: a subset of the generated clusters; --draws N: each plan's
throughput averaged over N common workload draws (default 3; 1 gives the old one-draw scoring);
--jobs N: the generated clusters scored by N processes, one core each, largest clusters first
(default 2: the figures are the same as with 1, each cluster's simulations being deterministic
and independent; the solve, exact and serve sections stay on one core);
--cache: keep
simulation results in FILE,
keyed by the simulator's source, the snapshot, the plan, the workload and the policy — the
simulation is deterministic, so a hit is the same result; for development, the published figures
come from a run without it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.allocate import allocate, plan_score  # noqa: E402
from scheduler.costs import build_cluster  # noqa: E402
from scheduler.errors import CannotPlace  # noqa: E402
from scheduler.exact import MAX_STATES, allocate_exact, count_states  # noqa: E402
from scheduler.model import Plan, Snapshot  # noqa: E402
from scheduler.schema import parse_snapshot  # noqa: E402
from scheduler.sim.baselines import greedy_plan  # noqa: E402
from scheduler.sim.catalogue import MODELS  # noqa: E402
from scheduler.sim.cluster import gen_cluster  # noqa: E402
from scheduler.sim.engine import SimResult  # noqa: E402
from scheduler.sim.score import simulate as run_sim  # noqa: E402
from scheduler.sim.workload import Workload  # noqa: E402

REGIONS = ["us-east", "eu-west", "ap-northeast"]


SIM_SOURCES = ("costs.py", "errors.py", "model.py", "route.py", "schema.py", "sim/engine.py",
               "sim/policies.py", "sim/score.py", "sim/workload.py")


class SimCache:
    """Simulation results by (simulator source, snapshot, plan, workload, policy), in a JSON file."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.data: dict[str, dict] = {}
        if self.path is not None and self.path.exists():
            self.data = json.loads(self.path.read_text())
        root = Path(__file__).resolve().parents[1] / "scheduler"
        code = hashlib.sha256()
        for f in SIM_SOURCES:  # what a simulation runs (not the allocator: plans are keys)
            code.update((root / f).read_bytes())
        self.code = code.hexdigest()

    def simulate(self, s: Snapshot, plan: Plan, w: Workload, policy: str) -> SimResult:
        if self.path is None:
            return run_sim(s, plan, w, policy)
        key = hashlib.sha256(json.dumps([
            self.code, s.canonical_hash(), [[[x.node, x.start, x.end] for x in r.stages]
                                            for r in plan.replicas],
            w.__dict__, policy], sort_keys=True).encode()).hexdigest()
        if key not in self.data:
            self.data[key] = run_sim(s, plan, w, policy).__dict__
        return SimResult(**self.data[key])

    def save(self) -> None:
        if self.path is not None:
            self.path.write_text(json.dumps(self.data))


SIMS = SimCache(None)
CORES: list[int] = []  # the cores this process may use, before it pins itself to one


def simulate(s: Snapshot, plan: Plan, w: Workload, policy: str) -> SimResult:
    return SIMS.simulate(s, plan, w, policy)


def emit(name: str, value: float | int | str) -> None:
    if isinstance(value, float):
        value = f"{value:.4g}"
    print(f"{name}: {value}", flush=True)


def snap(nodes: int, model: str, seed: int, regions: list[str] | None = None,
         mix: str = "mixed") -> Snapshot:
    return parse_snapshot(gen_cluster(nodes, mix, regions or REGIONS, seed=seed), MODELS[model])


def solve_time(nodes: int, model: str, repeats: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of the best of `repeats` solves. The process is pinned to one
    core and the solver is single-threaded, so CPU time is the one-core solve time even when
    other processes share the machine; wall time equals it on an idle machine."""
    s = snap(nodes, model, seed=nodes)
    cpu = wall = math.inf
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        allocate(s)
        cpu = min(cpu, time.process_time() - c)
        wall = min(wall, time.perf_counter() - t)
    return cpu, wall


def exact_gaps(instances: int, max_nodes: int) -> list[float]:
    gaps = []
    seed = 0
    while len(gaps) < instances:
        seed += 1
        n = 6 + seed % (max_nodes - 5)
        s = snap(n, "llama3-70b", seed=1000 + seed, regions=REGIONS[: 1 + seed % 2])
        try:
            fast = plan_score(s, allocate(s))
        except CannotPlace:
            continue
        best = plan_score(s, allocate_exact(s))
        gaps.append(max(0.0, 1.0 - fast / best))
    return gaps


def exact_gaps_large(instances: int) -> tuple[list[float], float]:
    """Gaps on 14–16-node clusters of a few GPU kinds, and the slowest exact solve in seconds."""
    gaps, slowest, seed = [], 0.0, 0
    while len(gaps) < instances:
        seed += 1
        n = 14 + seed % 3
        s = snap(n, "llama3-70b", seed=2000 + seed, regions=REGIONS[:2],
                 mix="H100:1,A100-80:1,L40S:1")
        if count_states(build_cluster(s)) > MAX_STATES:
            continue
        try:
            fast = plan_score(s, allocate(s))
        except CannotPlace:
            continue
        t = time.perf_counter()
        best = plan_score(s, allocate_exact(s))
        slowest = max(slowest, time.perf_counter() - t)
        gaps.append(max(0.0, 1.0 - fast / best))
    return gaps, slowest


def serve(s: Snapshot, requests: int, output_mean: int, open_requests: int) -> dict[str, float]:
    ours, base = allocate(s), greedy_plan(s)
    # Offline batch: every request arrives at once; tokens ÷ time to serve them all.
    heavy = Workload(requests=requests, rate_per_s=1e6, prompt_mean=256, output_mean=output_mean,
                     seed=1)
    thr = {
        "ours": simulate(s, ours, heavy, "router").throughput_tok_s,
        "noload": simulate(s, ours, heavy, "noload").throughput_tok_s,
        "rr": simulate(s, base, heavy, "rr").throughput_tok_s,
        "ours_plan_rr": simulate(s, ours, heavy, "rr").throughput_tok_s,
    }
    rate = 0.5 * thr["rr"] / output_mean
    light = Workload(requests=requests, rate_per_s=rate, prompt_mean=256, output_mean=output_mean,
                     seed=2)
    # Open loop above our capacity, long enough for a steady state: sustained tokens/s.
    over = Workload(requests=open_requests, rate_per_s=1.2 * thr["ours"] / output_mean,
                    prompt_mean=256, output_mean=output_mean, seed=4)
    sus_ours = simulate(s, ours, over, "router").sustained_tok_s
    sus_rr = simulate(s, base, over, "rr").sustained_tok_s
    busy = Workload(requests=requests, rate_per_s=0.5 * thr["ours"] / output_mean,
                    prompt_mean=256, output_mean=output_mean, seed=3)
    return {
        "p99_busy_ours": simulate(s, ours, busy, "router").latency_p99_ms,
        "p99_busy_noload": simulate(s, ours, busy, "noload").latency_p99_ms,
        "sus_ours": sus_ours, "sus_rr": sus_rr,
        "thr_ours": thr["ours"], "thr_noload": thr["noload"], "thr_rr": thr["rr"],
        "thr_ours_plan_rr": thr["ours_plan_rr"],
        "p99_ours": simulate(s, ours, light, "router").latency_p99_ms,
        "p99_noload": simulate(s, ours, light, "noload").latency_p99_ms,
        "p99_rr": simulate(s, base, light, "rr").latency_p99_ms,
    }


MIXES = ["mixed", "datacenter", "consumer", "apple"]
SIZES = [8, 16, 24, 40, 64]
PROMPT, OUTPUT = 256, 64  # the request mix every plan is planned for and served with
# An alternative plan below SCREEN × ours on draw 0 under both routings is not drawn again: it
# cannot be the best other plan (over the bench's clusters such plans averaged at most 0.79 of
# ours over three draws, while a draw moves a ratio by ~10 %); this saves a quarter of the
# simulations (most greedy plans).
SCREEN = 0.8


def variants(s: Snapshot) -> dict[str, Plan]:
    """Every plan we can produce for `s`: ours, greedy, ours without the straggler rule (summed
    throughput only), ours within regions only, and the exact solver where it finishes."""
    import scheduler.choose as alloc

    out: dict[str, Plan] = {"ours": allocate(s)}
    try:
        out["greedy"] = greedy_plan(s)
    except CannotPlace:
        pass
    target = alloc.RR_TARGET
    try:
        alloc.RR_TARGET = 1e-9  # round robin never binds: the most summed throughput
        out["sum_only"] = allocate(s)
    finally:
        alloc.RR_TARGET = target
    c = build_cluster(s)
    if count_states(c) <= 256:  # 8-node clusters: seconds at most
        out["exact"] = allocate_exact(s)
    return out


def score_cluster(seed: int, mix: str, n: int, draws: int) -> dict | None:
    """One generated cluster: every plan we produce served the same `draws` offline batches
    under the router and round robin; None when not even one replica fits."""
    t_cluster, cpu = time.perf_counter(), time.process_time()
    j = SIZES.index(n)  # the model and regions follow the size's place in SIZES
    model = "llama3-70b" if (seed + j) % 2 == 0 else "llama3-8b"
    regions = REGIONS[: 2 + (seed + j) % 2]
    params = {"prompt_tokens": PROMPT, "output_tokens": OUTPUT, "context_tokens": PROMPT + OUTPUT}
    doc = gen_cluster(n, mix, regions, seed=100 * seed + n, params=params)
    s = parse_snapshot(doc, MODELS[model])
    try:
        plans = variants(s)
    except CannotPlace:
        return None
    ours = plans["ours"]
    conc = int(ours.estimate["concurrency"])
    # Every plan serves the same `draws` workloads (draw 0 is the one-draw figure's) and is
    # scored by its mean: the tail of long requests moves an offline batch's makespan by several
    # per cent from draw to draw, and a best-of over alternatives scored on one draw favours
    # whichever that draw's tail happened to suit.
    requests = max(200, 2 * conc)
    loads = [Workload(requests=requests, rate_per_s=1e9, prompt_mean=PROMPT,
                      output_mean=OUTPUT, seed=seed if d == 0 else 1000 * d + seed)
             for d in range(draws)]
    thr: dict[str, float] = {}
    thr_rr: dict[str, float] = {}
    one: dict[str, float] = {}  # draw 0 alone: the one-draw figure, for comparison
    one_rr: dict[str, float] = {}
    seen: dict[tuple, str] = {}
    out: dict = {"screened": 0, "sims": 0}
    for name, plan in plans.items():
        key = tuple(sorted(plan.replicas, key=lambda r: r.stages[0].node))
        if key in seen:  # the same plan from another solver: the same figures
            thr[name], thr_rr[name] = thr[seen[key]], thr_rr[seen[key]]
            one[name], one_rr[name] = one[seen[key]], one_rr[seen[key]]
            continue
        seen[key] = name
        got, got_rr = [], []
        for d, w in enumerate(loads):
            res = simulate(s, plan, w, "router")
            res_rr = simulate(s, plan, w, "rr")
            out["sims"] += 2
            got.append(res.throughput_tok_s)
            got_rr.append(res_rr.throughput_tok_s)
            if d > 0:
                continue
            one[name], one_rr[name] = got[0], got_rr[0]
            if name != "ours":
                if one[name] < SCREEN * one["ours"] and one_rr[name] < SCREEN * one_rr["ours"]:
                    out["screened"] += 1
                    break  # far behind under both routings: draw 0 alone
                continue
            if res.saturated_tok_s is None:
                continue
            # The planner's estimates: one sample per cluster, on draw 0.
            sat = res.saturated_tok_s
            out["error"] = abs(sat - ours.estimate["throughput_tok_s"]) / sat
            out["tpot_error"] = abs(res.tpot_p50_ms - ours.estimate["tpot_ms"]) / res.tpot_p50_ms
            out["tpot_mean_error"] = (abs(res.tpot_mean_ms - ours.estimate["mean_tpot_ms"])
                                      / res.tpot_mean_ms)
        thr[name], thr_rr[name] = float(np.mean(got)), float(np.mean(got_rr))
    out["tag"] = f"{model}/{mix}/{n}/seed{seed}"
    out["r"] = min(thr["ours"] / max(v for k, v in thr.items() if k != "ours"), 1e9)
    out["r_rr"] = min(thr_rr["ours"] / max(v for k, v in thr_rr.items() if k != "ours"), 1e9)
    out["r1"] = one["ours"] / max(v for k, v in one.items() if k != "ours")
    out["r1_rr"] = one_rr["ours"] / max(v for k, v in one_rr.items() if k != "ours")
    out["dominated"] = any(thr[k] > 1.01 * thr["ours"] and thr_rr[k] > 1.01 * thr_rr["ours"]
                           for k in thr if k != "ours")
    out["best"] = max(thr, key=lambda k: thr[k])
    out["best_rr"] = max(thr_rr, key=lambda k: thr_rr[k])
    out["plans"], out["requests"] = len(plans), requests
    out["wall_s"] = time.perf_counter() - t_cluster
    out["cpu_s"] = time.process_time() - cpu
    return out


def _score(args: tuple[int, int, str, int, int, int]) -> tuple[int, dict | None]:
    g, core = args[0], args[-1]
    if core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})  # each worker on a core of its own
    return g, score_cluster(*args[1:-1])


def _line(res: dict) -> None:
    """One cluster's verbose line (stderr), printed as soon as it is scored."""
    err = (f"estimate error {res['error']:.3f}, tpot {res['tpot_error']:.3f}, "
           f"mean tpot {res['tpot_mean_error']:.3f}" if "error" in res else "never saturated")
    print(f"  {res['tag']}: vs best {res['r']:.3f} ({res['best']}), rr {res['r_rr']:.3f} "
          f"({res['best_rr']}), draw 0 {res['r1']:.3f} / rr {res['r1_rr']:.3f}, {err}, "
          f"{res['plans']} plans, {res['requests']} requests, {res['sims']} simulations, "
          f"{res['wall_s']:.1f} s", file=sys.stderr, flush=True)


def robustness(seeds: list[int], sizes: list[int], mixes: list[str],
               verbose: bool = False, draws: int = 3, jobs: int = 1) -> dict[str, float | str]:
    """Over generated clusters (sizes 8–64, every mix, 2–3 regions, 70B and 8B): each plan served
    an offline batch (every request at once, 2× what our plan holds concurrently, at least 200)
    under the load-aware router and under round robin; throughput = output tokens ÷ makespan.
    `jobs` > 1 scores clusters in that many processes (largest first; the figures are the same,
    each cluster's simulations are deterministic and independent)."""
    grid = [(seed, mix, n) for seed in seeds for mix in mixes for n in sizes]
    results: list[dict | None] = [None] * len(grid)  # in grid order, however they finish
    if jobs > 1:
        import multiprocessing as mp

        cores = CORES
        order = sorted(range(len(grid)), key=lambda g: (-grid[g][2], g))  # big ones first
        work = [(g, *grid[g], draws, cores[k % len(cores)] if len(cores) >= jobs else -1)
                for k, g in enumerate(order)]
        with mp.get_context("fork").Pool(jobs) as pool:
            for g, res in pool.imap_unordered(_score, work, chunksize=1):
                results[g] = res
                if verbose and res is not None:
                    _line(res)
    else:
        for g, (seed, mix, n) in enumerate(grid):
            results[g] = res = score_cluster(seed, mix, n, draws)
            if verbose and res is not None:
                _line(res)
    ratios, ratios_rr, errors, tpot_errors, tpot_mean_errors = [], [], [], [], []
    ratios_1: list[float] = []  # the same on draw 0 alone (the figure before draws were averaged)
    ratios_1_rr: list[float] = []
    screened = sims = 0  # alternatives scored on draw 0 alone (SCREEN); simulations run
    cpu = 0.0
    dominated: list[str] = []  # clusters where another plan beats ours under both routings
    worst: tuple[float, str] = (math.inf, "")
    worst_rr: tuple[float, str] = (math.inf, "")
    count = 0
    for res in results:
        if res is None:
            continue
        count += 1
        tag = res["tag"]
        ratios.append(res["r"])
        ratios_rr.append(res["r_rr"])
        ratios_1.append(res["r1"])
        ratios_1_rr.append(res["r1_rr"])
        screened += res["screened"]
        sims += res["sims"]
        cpu += res["cpu_s"]
        if "error" in res:
            errors.append(res["error"])
            tpot_errors.append(res["tpot_error"])
            tpot_mean_errors.append(res["tpot_mean_error"])
        if res["dominated"]:
            dominated.append(tag)
        worst = min(worst, (res["r"], tag))
        worst_rr = min(worst_rr, (res["r_rr"], tag))
    ratios.sort()
    return {
        "clusters": count, "plan_vs_best_min": min(ratios),
        "plan_vs_best_median": float(np.median(ratios)),
        "plan_vs_best_min_rr": min(ratios_rr), "plan_vs_best_median_rr": float(np.median(ratios_rr)),
        "plan_vs_best_min_1draw": min(ratios_1), "plan_vs_best_min_rr_1draw": min(ratios_1_rr),
        "plan_vs_best_median_1draw": float(np.median(ratios_1)),
        "estimate_error_p90": float(np.percentile(errors, 90)),
        "estimate_error_max": max(errors),
        "tpot_error_p90": float(np.percentile(tpot_errors, 90)),
        "tpot_mean_error_p90": float(np.percentile(tpot_mean_errors, 90)),
        "worst_cluster": worst[1], "worst_cluster_rr": worst_rr[1],
        "screened_plans": screened,
        "simulations": sims,
        "robust_cpu_s": cpu,
        "dominated_clusters": len(dominated),
        "dominated": ",".join(dominated) or "none",
    }


def gmean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    global SIMS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller version, under a minute")
    ap.add_argument("--verbose", action="store_true", help="one line per generated cluster (stderr)")
    ap.add_argument("--only", default="solve,exact,serve,robust",
                    help="comma list of sections: solve, exact, serve, robust")
    ap.add_argument("--seeds", type=_ints, help="generated clusters: seeds (default 0-4; quick 0)")
    ap.add_argument("--sizes", type=_ints, help=f"generated clusters: sizes from {SIZES}")
    ap.add_argument("--mixes", help=f"generated clusters: comma list from {MIXES}")
    ap.add_argument("--cache", help="keep simulation results in this JSON file (development)")
    ap.add_argument("--draws", type=int, default=3,
                    help="generated clusters: common workload draws averaged per plan (default "
                         "3; 1: the old one-draw scoring)")
    ap.add_argument("--jobs", type=int, default=2,
                    help="generated clusters: processes scoring them, one core each (default 2; "
                         "the other sections run on one core)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if only - {"solve", "exact", "serve", "robust"}:
        ap.error(f"--only: unknown sections {sorted(only - {'solve', 'exact', 'serve', 'robust'})}")
    if args.sizes and set(args.sizes) - set(SIZES):
        ap.error(f"--sizes: each must be one of {SIZES}, got {args.sizes}")
    SIMS = SimCache(args.cache)
    if hasattr(os, "sched_setaffinity"):
        CORES[:] = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {CORES[0]})  # one core
    t0 = time.perf_counter()
    summary = []

    if "solve" in only:
        for n in (10, 100, 1000, 10000):
            cpu, wall = solve_time(n, "llama3-70b", repeats=1 if n >= 10000 else 3)
            emit(f"solve_s_{n}", cpu)
            emit(f"solve_wall_s_{n}", wall)
            if n == 1000:
                summary.append(f"1k nodes in {cpu:.2f} CPU s")
        emit("solve_s_10000_smollm2", solve_time(10000, "smollm2-135m", repeats=1)[0])

    if "exact" in only:
        gaps = exact_gaps(instances=8 if args.quick else 24, max_nodes=8 if args.quick else 9)
        emit("exact_gap", sum(gaps) / len(gaps))
        emit("exact_gap_max", max(gaps))
        emit("exact_instances", len(gaps))
        gaps16, slowest = exact_gaps_large(instances=1 if args.quick else 4)
        emit("exact_gap_16", sum(gaps16) / len(gaps16))
        emit("exact_gap_16_max", max(gaps16))
        emit("exact_s_16", slowest)
        summary.append(f"gap {sum(gaps) / len(gaps):.3f}")

    if "serve" in only:
        serving(args.quick)
        summary.append(f"{SERVED['throughput_vs_rr']:.2f}x greedy+RR throughput")

    if "robust" in only:
        seeds = args.seeds if args.seeds is not None else [0] if args.quick else [0, 1, 2, 3, 4]
        sizes = args.sizes or ([8, 16] if args.quick else SIZES)
        mixes = args.mixes.split(",") if args.mixes else MIXES
        if args.draws < 1:
            ap.error(f"--draws: must be at least 1, got {args.draws}")
        if args.jobs < 1 or (args.cache and args.jobs > 1):
            ap.error(f"--jobs: must be at least 1, and 1 with --cache, got {args.jobs}")
        t_rob = time.perf_counter()
        rob = robustness(seeds, sizes, mixes, verbose=args.verbose, draws=args.draws,
                         jobs=args.jobs)
        rob["robust_wall_s"] = time.perf_counter() - t_rob
        emit("workload_draws", args.draws)
        for key, val in rob.items():
            emit(key, val)
        summary.append(f"plan_vs_best_min {rob['plan_vs_best_min']:.3f}")
    SIMS.save()

    print(f"scheduler bench ({'quick' if args.quick else 'full'}, "
          f"{time.perf_counter() - t0:.0f} s): " + ", ".join(summary))


SERVED: dict[str, float] = {}


def serving(quick: bool) -> None:
    """Our plan and router against greedy placement + round robin on 24-GPU 70B clusters and
    8-GPU SmolLM2 clusters."""
    seeds = [21] if quick else [21, 22, 23]
    requests = 300 if quick else 800
    open_requests = 600 if quick else 2000
    runs = [serve(snap(24, "llama3-70b", seed=sd, regions=REGIONS[:2]), requests, 64,
                  open_requests) for sd in seeds]
    small = [serve(snap(8, "smollm2-135m", seed=sd, regions=REGIONS[:2]), requests, 64,
                   open_requests) for sd in seeds]
    SERVED["throughput_vs_rr"] = gmean([r["thr_ours"] / r["thr_rr"] for r in runs])
    emit("throughput_vs_rr", SERVED["throughput_vs_rr"])
    emit("throughput_vs_rr_sustained", gmean([r["sus_ours"] / r["sus_rr"] for r in runs]))
    emit("throughput_vs_noload", gmean([r["thr_ours"] / r["thr_noload"] for r in runs]))
    emit("plan_gain_under_rr", gmean([r["thr_ours_plan_rr"] / r["thr_rr"] for r in runs]))
    emit("routing_gain_over_rr", gmean([r["thr_ours"] / r["thr_ours_plan_rr"] for r in runs]))
    emit("throughput_tok_s_ours", gmean([r["thr_ours"] for r in runs]))
    emit("throughput_tok_s_rr", gmean([r["thr_rr"] for r in runs]))
    emit("p99_ms_ours", gmean([r["p99_ours"] for r in runs]))
    emit("p99_ms_rr", gmean([r["p99_rr"] for r in runs]))
    emit("p99_ms_noload", gmean([r["p99_noload"] for r in runs]))
    emit("p99_rr_over_ours", gmean([r["p99_rr"] / r["p99_ours"] for r in runs]))
    emit("p99_noload_over_ours", gmean([r["p99_noload"] / r["p99_ours"] for r in runs]))
    emit("p99_noload_over_ours_busy", gmean([r["p99_busy_noload"] / r["p99_busy_ours"]
                                            for r in runs]))
    emit("throughput_vs_rr_smollm2", gmean([r["thr_ours"] / r["thr_rr"] for r in small]))
    emit("throughput_vs_rr_sustained_smollm2", gmean([r["sus_ours"] / r["sus_rr"] for r in small]))
    emit("p99_rr_over_ours_smollm2", gmean([r["p99_rr"] / r["p99_ours"] for r in small]))


if __name__ == "__main__":
    main()
