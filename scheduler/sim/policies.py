"""Routing policies the simulator runs: ours (load-aware least expected completion time), the
load-blind router (same graph, ignores queueing and batch), and round-robin over fixed pipelines.
All respect admission (KV room and the batch cap), so they differ only in where requests go."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scheduler.errors import NoRoute
from scheduler.model import Plan, Snapshot
from scheduler.route import Hop, NodeLoad, Router
from scheduler.schema import node_weight_budget, stage_memory_bytes

if TYPE_CHECKING:
    from scheduler.sim.engine import Simulation

Choice = tuple[list[Hop], dict[str, int]] | None | bool


def kv_capacities(snapshot: Snapshot, plan: Plan) -> dict[str, int]:
    """KV bytes each serving node can admit: usable VRAM minus its stage's weights."""
    m = snapshot.model
    out = {}
    for st in plan.stages():
        node = snapshot.node(st.node)
        out[st.node] = (node_weight_budget(snapshot, node) + (snapshot.params.kv_reserve_mib << 20)
                        - stage_memory_bytes(m, st))
    return out


class RouterPolicy:
    """Phase-2 routing from the simulator's live loads (or without them: `use_load=False`)."""

    def __init__(self, snapshot: Snapshot, plan: Plan, use_load: bool = True) -> None:
        self.router = Router(snapshot, plan)
        self.use_load = use_load
        self.name = "router" if use_load else "router-noload"
        # Whether a request could ever be served (a route on the idle cluster) depends only on
        # the KV tokens it holds, and monotonically: the largest size seen to fit and the
        # smallest seen not to answer most requests without a route search.
        self.fits_up_to = 0
        self.fails_from = 1 << 62

    def lane(self, req: int) -> int:
        return 0

    def fits(self, prompt: int, output: int) -> bool:
        """Could a request of `prompt` + `output` KV tokens be served on an idle cluster?"""
        kv = prompt + output
        if kv <= self.fits_up_to:
            return True
        if kv >= self.fails_from:
            return False
        try:
            self.router.route({}, prompt, output)
        except NoRoute:
            self.fails_from = kv
            return False
        self.fits_up_to = kv
        return True

    def choose(self, req: int, kv_tokens: int, sim: Simulation) -> Choice:
        if not self.fits(int(sim.prompt[req]), int(sim.output[req])):
            return False
        try:
            route = self.router.route(sim.loads(), int(sim.prompt[req]), int(sim.output[req]),
                                      use_load=self.use_load)
        except NoRoute:
            return None
        return list(route.hops), route.kv_bytes


class RoundRobin:
    """Request `r` goes to fixed pipeline `r mod P` and waits there for KV room."""

    name = "round-robin"

    def __init__(self, snapshot: Snapshot, plan: Plan) -> None:
        self.pipelines = [[Hop(s.node, s.start, s.end) for s in r.stages] for r in plan.replicas]
        self.kvb = snapshot.model.kv_bytes_per_token_layer
        self.capacity = kv_capacities(snapshot, plan)

    def lane(self, req: int) -> int:
        return req % len(self.pipelines)

    def choose(self, req: int, kv_tokens: int, sim: Simulation) -> Choice:
        hops = self.pipelines[self.lane(req)]
        need = {h.node: (h.end - h.start) * kv_tokens * self.kvb for h in hops}
        if any(b > self.capacity[n] for n, b in need.items()):
            return False
        if any(sim.kv_used[n] + b > self.capacity[n] or sim.active[n] >= sim.max_batch
               for n, b in need.items()):
            return None
        return hops, need


__all__ = ["RouterPolicy", "RoundRobin", "kv_capacities", "NodeLoad"]
