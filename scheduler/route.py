"""Phase 2: per-request pipeline selection over the shards of a plan (DESIGN §4).

Vertices are shards `(node, [a, b))`. A node holding `[a, b)` can serve any suffix `[l, b)` with
`a ≤ l < b`, so an edge joins every shard ending at `l` to every shard with `a ≤ l < b`; shards
starting at 0 hold the embedding and may begin a route, shards ending at the last layer hold the LM
head and may end one. A route's cost is the request's expected completion time: for each hop, its
queueing delay + (per-layer time at the node's current batch × layers it runs) for the prefill and
for every output token + the link from the previous hop — the per-layer time is charged for every
layer served, never once per node — and on the last hop the LM head's step for every token. Hops
whose node lacks free KV memory for the request's tokens over the layers it would run, or whose
batch already holds `max_batch` sequences, are skipped (admission). Under load (when loads are
given), a request whose own replica's chain admits it stays on that chain: joining
another replica's shard mid-way would take a batch slot and strand the slot of that replica's
earlier stages; stitching routes around full, failed or excluded nodes. One dynamic
program over shards in order of their end layer touches each edge once: linear in the edges.

`Router` is built once per plan; `route()` is pure given the loads passed in, so the coordinator
answers gateway route requests by calling it with the latest heartbeats.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scheduler.costs import build_cluster, head_time, layer_time, link_time
from scheduler.errors import InvalidInput, NoRoute
from scheduler.model import Plan, Snapshot
from scheduler.schema import node_weight_budget, stage_memory_bytes


@dataclass(frozen=True)
class NodeLoad:
    """What a heartbeat says about a node's current load."""

    active: int = 0  # sequences in its running batch
    queue_s: float = 0.0  # backlog: seconds of work queued ahead of a new arrival
    kv_used_bytes: int = 0  # KV memory already admitted


@dataclass(frozen=True)
class Hop:
    """Run layers `[start, end)` on `node`."""

    node: str
    start: int
    end: int


@dataclass(frozen=True)
class Route:
    hops: tuple[Hop, ...]
    cost_s: float  # expected completion time of the request along the route, load included
    kv_bytes: dict[str, int] = field(default_factory=dict, compare=False)  # to admit, per node

    def to_dict(self) -> dict[str, Any]:
        return {"hops": [{"node": h.node, "start": h.start, "end": h.end} for h in self.hops],
                "expected_ms": self.cost_s * 1e3}


class Router:
    """Routes requests over a plan's shards. Immutable after construction."""

    def __init__(self, snapshot: Snapshot, plan: Plan) -> None:
        self.snapshot = snapshot
        self.cluster = build_cluster(snapshot, [n for n in snapshot.nodes])
        m = snapshot.model
        self.layers = m.layers
        self.kv_per_token_layer = m.kv_bytes_per_token_layer
        self.shards: list[tuple[int, int, int]] = []  # (node index, a, b), sorted by (b, a, id)
        self.kv_capacity: dict[str, int] = {}
        by_id = {n.id: n for n in snapshot.nodes}
        self.replica_of: dict[tuple[int, int], int] = {}  # (node index, start) → replica
        for r, rep in enumerate(plan.replicas):
            for st in rep.stages:
                if st.node in self.cluster.index:
                    self.replica_of[(self.cluster.index[st.node], st.start)] = r
        for st in plan.stages():
            if st.node not in self.cluster.index:
                raise InvalidInput(f"plan names node {st.node!r}, absent from the snapshot")
            node = by_id[st.node]
            weights = stage_memory_bytes(m, st)
            reserve = snapshot.params.kv_reserve_mib << 20
            self.kv_capacity[st.node] = node_weight_budget(snapshot, node) + reserve - weights
            self.shards.append((self.cluster.index[st.node], st.start, st.end))
        self.shards.sort(key=lambda s: (s[2], s[1], self.cluster.ids[s[0]]))
        self.rep = [self.replica_of.get((i, a), -1) for i, a, _ in self.shards]
        # The shard of the same replica ending at each cut (at most one: stages are contiguous).
        self.own_pred: dict[tuple[int, int], int] = {}
        for j, (_, _, b) in enumerate(self.shards):
            self.own_pred[(self.rep[j], b)] = j
        self.ending_at: dict[int, list[int]] = {}
        for j, (_, _, b) in enumerate(self.shards):
            self.ending_at.setdefault(b, []).append(j)
        self.cuts = sorted(self.ending_at)  # the layers where some shard ends
        # Nodes with a measured pair link keep their own edges; all others reach a node at the
        # same cost as any node sharing their region and link speed (see `_frontier`).
        self.paired = {a for pair in snapshot.links.pairs for a in pair}
        # `layer_time` split into its step at a token count (memoized: the simulator routes
        # thousands of requests over the same nodes) and the cached tokens it reads.
        self.mem_bw = self.cluster.mem_bw.tolist()
        self._steps: dict[tuple[int, int], float] = {}

    def _step(self, i: int, tokens: int) -> float:
        """`layer_time(c, i, tokens)`: one layer's step on node `i` over `tokens` new tokens."""
        got = self._steps.get((i, tokens))
        if got is None:
            got = self._steps[(i, tokens)] = layer_time(self.cluster, i, tokens)
        return got

    def _frontier(self, cut: int, best: list[float]) -> list[int]:
        """Predecessors ending at `cut` worth an edge: the link from `p` to any node depends only
        on `p`'s region and network speed (unless `p` has a measured pair link), so among shards
        alike in both only the one with the least cost so far can be on a best route. This keeps
        the search exact while the edges per request grow with regions × link classes, not with
        the number of replicas."""
        c = self.cluster
        keep: dict[tuple[int, float], int] = {}
        out = []
        for p in self.ending_at.get(cut, ()):
            if best[p] == float("inf"):
                continue
            i = self.shards[p][0]
            if c.ids[i] in self.paired:
                out.append(p)
                continue
            key = (int(c.region[i]), float(c.net[i]))
            q = keep.get(key)
            if q is None or best[p] < best[q]:
                keep[key] = p
        return out + sorted(keep.values())

    def route(self, loads: Mapping[str, NodeLoad] | None = None, prompt_tokens: int = 1,
              output_tokens: int = 1, exclude: frozenset[str] | set[str] = frozenset(),
              use_load: bool = True, whole_shards: bool = False) -> Route:
        """The route of least expected completion time for a request of `prompt_tokens` in and
        up to `output_tokens` out (KV for both is admitted on every hop).

        Per hop running `[l, b)`: its queueing delay + `(b − l)` × the prefill's per-layer time +
        `output_tokens` × `(b − l)` × the per-layer decode time at the node's batch and resident
        KV with this request added, plus the link to it for the prompt and for every token.
        `use_load=False` ignores queueing and batch size (the load-blind baseline) but still
        respects KV admission. `whole_shards=True` runs every hop over its shard's whole range
        (no suffixes): what a deployment whose workers serve exactly their assigned range needs.
        Raises `NoRoute` when no admissible chain covers every layer.
        """
        if prompt_tokens < 1 or output_tokens < 1:
            raise InvalidInput(f"prompt_tokens ({prompt_tokens}) and output_tokens "
                               f"({output_tokens}) must be >= 1")
        loads = loads or {}
        c, L = self.cluster, self.layers
        kv_tokens = prompt_tokens + output_tokens
        idle = NodeLoad()
        n = len(self.shards)
        best = [float("inf")] * n
        start_at = [0] * n
        prev = [-1] * n
        act = c.model.activation_bytes
        max_batch = self.snapshot.params.max_batch
        per_layer_kv = kv_tokens * self.kv_per_token_layer
        kvb, mem_bw = self.kv_per_token_layer, self.mem_bw
        frontier: dict[int, list[int]] = {}
        links: dict[tuple[int, int], float] = {}  # (from node, to node) → this request's link s
        for j, (i, a, b) in enumerate(self.shards):
            nid = c.ids[i]
            if nid in exclude:
                continue
            ld = loads.get(nid, idle) if use_load else idle
            # A decode step batches the node's sequences (compute grows with the batch) and reads
            # the KV resident per layer (as admitted) plus this request's. Sharing a node also
            # means a token usually finds another sequence's step running and waits for half of
            # it: busy ≈ 1 − 1/(active + 1). Congestion beyond that is the backlog `queue_s`.
            batch = min(ld.active + 1, max_batch)
            resident = ld.kv_used_bytes / (self.kv_per_token_layer * (b - a)) + kv_tokens
            busy = 1.0 - 1.0 / (ld.active + 1)
            per_layer = (output_tokens * (1 + busy / 2)
                         * (self._step(i, batch) + resident * kvb / mem_bw[i])
                         + self._step(i, prompt_tokens))
            # The last hop also runs the LM head: one row per output token, one for the prompt.
            head = (output_tokens * (1 + busy / 2) * head_time(c, i, batch)
                    + head_time(c, i, 1)) if b == L else 0.0
            seen = loads.get(nid, idle)
            if seen.active >= max_batch:
                continue  # the node's batch is full (the batch cap): no slot for another sequence
            free = self.kv_capacity[nid] - seen.kv_used_bytes
            if a == 0 and b * per_layer_kv <= free:
                best[j], start_at[j] = b * per_layer + head + ld.queue_s, 0
            # Under load, a request whose own replica's chain admits it up to this shard stays
            # on it: joining another replica's shard mid-way would take a batch slot and strand
            # the slot of that replica's earlier stages (each node runs at most max_batch
            # sequences). Stitching routes around full, failed or excluded nodes. (Every shard
            # ending at a cut comes before any shard that cuts there, so a frontier is final
            # whenever it is first built.)
            mine = self.own_pred.get((self.rep[j], a)) if use_load and loads else None
            stay = mine is not None and best[mine] < float("inf")
            # Only cuts where some shard ends can have a predecessor (and 0, where a route
            # begins, is handled above): the others are skipped without changing the result.
            cuts = (a,) if stay or whole_shards else self.cuts[bisect_left(self.cuts, a):
                                                               bisect_left(self.cuts, b)]
            for cut in cuts:
                if (b - cut) * per_layer_kv > free:
                    continue
                own = (b - cut) * per_layer + head + ld.queue_s
                if stay and mine is not None:
                    preds = [mine]
                else:
                    if cut not in frontier:
                        frontier[cut] = self._frontier(cut, best)
                    preds = frontier[cut]
                for p in preds:
                    pi = self.shards[p][0]
                    link = links.get((pi, i))
                    if link is None:  # the same pair recurs across cuts: once per request
                        link = links[(pi, i)] = (link_time(c, pi, i, prompt_tokens * act)
                                                 + output_tokens * link_time(c, pi, i, act))
                    cost = best[p] + link + own
                    if cost < best[j]:
                        best[j], start_at[j], prev[j] = cost, cut, p
        finals = [j for j in self.ending_at.get(L, ()) if best[j] < float("inf")]
        if not finals:
            raise NoRoute(f"no admissible route for a request of {kv_tokens} KV tokens over "
                          f"{L} layers ({len(exclude)} node(s) excluded, {n} shards)")
        j = min(finals, key=lambda j: (best[j], c.ids[self.shards[j][0]]))
        cost = best[j]
        hops: list[Hop] = []
        kv: dict[str, int] = {}
        while j >= 0:
            i, _, b = self.shards[j]
            hops.append(Hop(c.ids[i], start_at[j], b))
            kv[c.ids[i]] = (b - start_at[j]) * kv_tokens * self.kv_per_token_layer
            j = prev[j]
        hops.reverse()
        if len(hops) > 1:  # each sampled token returns from the last hop to the first
            cost += output_tokens * link_time(c, c.index[hops[-1].node], c.index[hops[0].node], 8)
        return Route(hops=tuple(hops), cost_s=cost, kv_bytes=kv)
