"""`veriplex sim …`: generate clusters, allocate them, and score any allocation in the simulator.

  veriplex sim gen-cluster --nodes 64 --mix mixed --regions us-east,eu-west --seed 1 -o c.json
  veriplex sim allocate --cluster c.json --model llama3-70b -o alloc.json [--solver exact|greedy]
  veriplex sim --cluster c.json --alloc alloc.json [--workload w.json] [--policy rr]
  veriplex sim compare --cluster c.json --model llama3-70b [--workload w.json]

Documents are described in scheduler/SCHEMAS.md. Every scheduler error (malformed JSON, a cluster
that cannot hold the model, an allocation that breaks an invariant) ends the command with a clear
message and exit status 1, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from scheduler.errors import InvalidInput, SchedulerError


def _emit(doc: Any, out: Path | None) -> None:
    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        click.echo(f"wrote {out}", err=True)


def _model(spec: str) -> Any:
    from scheduler.schema import load_json, parse_model
    from scheduler.sim.catalogue import MODELS

    if spec in MODELS:
        return MODELS[spec]
    path = Path(spec)
    if not path.exists():
        raise InvalidInput(f"--model {spec!r} is neither a known model ({', '.join(MODELS)}) "
                           f"nor a JSON file")
    return parse_model(load_json(path))


def _guard(fn: Any) -> Any:
    """Turn scheduler errors into a click error (message, exit 1)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SchedulerError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


@click.group("sim", invoke_without_command=True)
@click.option("--cluster", "cluster_path", type=click.Path(path_type=Path), default=None,
              help="Cluster JSON (SCHEMAS.md).")
@click.option("--alloc", "alloc_path", type=click.Path(path_type=Path), default=None,
              help="Allocation JSON from any solver (SCHEMAS.md).")
@click.option("--workload", "workload_path", type=click.Path(path_type=Path), default=None,
              help="Workload JSON; flags below override its fields.")
@click.option("--policy", type=click.Choice(["router", "noload", "rr"]), default="router",
              show_default=True, help="router: load-aware; noload: ignores load; rr: round-robin "
              "over the allocation's fixed pipelines.")
@click.option("--requests", type=int, default=None, help="Number of requests.")
@click.option("--rate", type=float, default=None, help="Mean arrivals per second.")
@click.option("--seed", type=int, default=None, help="Workload seed.")
@click.pass_context
@_guard
def sim(ctx: click.Context, cluster_path: Path | None, alloc_path: Path | None,
        workload_path: Path | None, policy: str, requests: int | None, rate: float | None,
        seed: int | None) -> None:
    """Simulate a request stream on CLUSTER served by ALLOC; prints throughput, TTFT, TPOT, p50/p99."""
    if ctx.invoked_subcommand is not None:
        return
    if cluster_path is None or alloc_path is None:
        raise click.UsageError("give --cluster and --alloc (or a subcommand: gen-cluster, allocate)")
    from scheduler.schema import load_json, parse_plan, parse_snapshot
    from scheduler.sim.score import simulate
    from scheduler.sim.workload import Workload

    plan = parse_plan(load_json(alloc_path))
    snapshot = parse_snapshot(load_json(cluster_path), model=plan.model)
    fields: dict[str, Any] = load_json(workload_path) if workload_path else {}
    if not isinstance(fields, dict):
        raise InvalidInput("workload: expected a JSON object")
    for key, val in (("requests", requests), ("rate_per_s", rate), ("seed", seed)):
        if val is not None:
            fields[key] = val
    result = simulate(snapshot, plan, Workload.from_dict(fields), policy)
    _emit(result.to_dict(), None)


@sim.command("gen-cluster")
@click.option("--nodes", type=int, required=True, help="Number of nodes.")
@click.option("--mix", default="mixed", show_default=True,
              help="Preset (mixed, datacenter, consumer, apple) or GPU:weight,… e.g. H100:1,RTX4090:3.")
@click.option("--regions", default="us-east", show_default=True, help="Comma-separated regions.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, help="Output file.")
@_guard
def gen_cluster_cmd(nodes: int, mix: str, regions: str, seed: int, out: Path | None) -> None:
    """Write a synthetic cluster from the GPU catalogue."""
    from scheduler.sim.cluster import gen_cluster

    _emit(gen_cluster(nodes, mix, [r.strip() for r in regions.split(",") if r.strip()], seed), out)


@sim.command("allocate")
@click.option("--cluster", "cluster_path", type=click.Path(path_type=Path), required=True)
@click.option("--model", "model_spec", default=None,
              help="A catalogue model (smollm2-135m, llama3-8b, llama3-70b) or a model JSON file; "
              "optional when the cluster document is a snapshot with its own `model`.")
@click.option("--solver", type=click.Choice(["heuristic", "exact", "greedy"]), default="heuristic",
              show_default=True)
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, help="Output file.")
@_guard
def allocate_cmd(cluster_path: Path, model_spec: str | None, solver: str,
                 out: Path | None) -> None:
    """Run phase 1 on a cluster and write the allocation JSON."""
    from scheduler.schema import load_json, parse_snapshot

    model = _model(model_spec) if model_spec else None
    snapshot = parse_snapshot(load_json(cluster_path), model=model)
    if solver == "exact":
        from scheduler.exact import allocate_exact as solve
    elif solver == "greedy":
        from scheduler.sim.baselines import greedy_plan as solve
    else:
        from scheduler.allocate import allocate as solve
    _emit(solve(snapshot).to_dict(), out)


@sim.command("compare")
@click.option("--cluster", "cluster_path", type=click.Path(path_type=Path), required=True)
@click.option("--model", "model_spec", default=None, help="As for `allocate`.")
@click.option("--workload", "workload_path", type=click.Path(path_type=Path), default=None)
@_guard
def compare_cmd(cluster_path: Path, model_spec: str | None, workload_path: Path | None) -> None:
    """Our plan and greedy placement, each under the load-aware router and strict round robin
    (plus ours load-blind), with our planner's estimate beside them."""
    from scheduler.allocate import allocate
    from scheduler.schema import load_json, parse_snapshot
    from scheduler.sim.baselines import greedy_plan
    from scheduler.sim.score import simulate
    from scheduler.sim.workload import Workload

    model = _model(model_spec) if model_spec else None
    snapshot = parse_snapshot(load_json(cluster_path), model=model)
    workload = Workload.from_dict(load_json(workload_path) if workload_path else {})
    ours, greedy = allocate(snapshot), greedy_plan(snapshot)
    _emit({
        "ours": simulate(snapshot, ours, workload, "router").to_dict(),
        "ours_rr": simulate(snapshot, ours, workload, "rr").to_dict(),
        "ours_noload": simulate(snapshot, ours, workload, "noload").to_dict(),
        "ours_estimate": dict(ours.estimate),
        "greedy_router": simulate(snapshot, greedy, workload, "router").to_dict(),
        "greedy_rr": simulate(snapshot, greedy, workload, "rr").to_dict(),
    }, None)
