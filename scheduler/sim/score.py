"""`simulate`: score any plan on a cluster under a workload and a named policy."""

from __future__ import annotations

from scheduler.costs import build_cluster
from scheduler.errors import InvalidInput
from scheduler.model import Plan, Snapshot
from scheduler.schema import require_valid
from scheduler.sim.engine import SimResult, Simulation
from scheduler.sim.policies import RoundRobin, RouterPolicy, kv_capacities
from scheduler.sim.workload import Workload

POLICIES = ("router", "noload", "rr")


def simulate(snapshot: Snapshot, plan: Plan, workload: Workload, policy: str = "router") -> SimResult:
    """Validate `plan` against `snapshot`, then run the discrete-event simulation."""
    return run_simulation(snapshot, plan, workload, policy).run()


def run_simulation(snapshot: Snapshot, plan: Plan, workload: Workload,
                   policy: str = "router") -> Simulation:
    """The validated, ready-to-run `Simulation` (for callers that inspect its state after)."""
    require_valid(plan, snapshot)
    if policy == "router":
        pol = RouterPolicy(snapshot, plan, use_load=True)
    elif policy == "noload":
        pol = RouterPolicy(snapshot, plan, use_load=False)
    elif policy == "rr":
        pol = RoundRobin(snapshot, plan)
    else:
        raise InvalidInput(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    cluster = build_cluster(snapshot, list(snapshot.nodes))
    return Simulation(cluster, kv_capacities(snapshot, plan), workload, pol,
                      max_batch=snapshot.params.max_batch)
