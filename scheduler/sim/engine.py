"""Discrete-event simulation of a cluster serving a request stream under a routing policy.

Each node is a batching server (continuous batching, as in vLLM): whenever it is idle and work is
queued, it runs the queued items in FIFO order — decode rows of running sequences and whole
prompts of new ones alike, up to `max_batch` items and `max_batch_tokens` tokens (vLLM's
`max_num_batched_tokens`; a longer prompt runs alone) — as one step taking `layers × layer_time(
tokens, context)`: the shared step-time model of `scheduler.costs`, the roofline or the node's
measured per-layer step times (`step_ms`), at the step's token count and the KV its sequences read.
On the last stage a step also runs the LM head (`costs.head_time`) over the rows that need logits:
one per decode row and one per prompt (its last row), counted here from the step's items.
So a prompt that shares a step with decode rows makes it compute-bound and slows every sequence in
it (prefill/decode interference), and a batch of decode rows costs little more than one.
A request is admitted when its policy finds a route with free KV memory for prompt + output tokens
on every hop and a free batch slot (each node runs at most `max_batch` sequences: the batch cap);
else it waits in FIFO order. Its prompt runs as one prefill pass along the route, then each output
token goes round the ring (last hop back to the first) as a one-token decode row. Hidden states
cross links in `RTT/2 + bytes/bandwidth`; items leaving a step for the same place travel together.

The simulator shares only the step-time primitive with the planner (calibratable from
measurements); batching, queueing, admission and interference are its own, so the planner's
closed-form estimate is checked, not copied.

Reported: output tokens/s over the whole run (first arrival to last completion; with every request
arriving at once this is the offline-batch throughput of vLLM's benchmark), sustained over the
arrival window, saturated (tokens/s between the first completion and the last admission, while
requests were still waiting: the rate of a full cluster, what the planner estimates), TTFT, time
per output token (p50, p99 and the mean), p50/p99 end-to-end latency.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from scheduler.costs import Cluster, head_time, layer_time, link_time
from scheduler.route import Hop, NodeLoad
from scheduler.sim.workload import Workload

ARRIVE, DELIVER, DONE, START = 0, 1, 2, 3  # event kinds; a START runs after all else at its time


class Item(NamedTuple):
    """Work for one node: request `req` runs `hop` (its `index`-th) over `tokens` new tokens."""

    req: int
    hop: Hop
    index: int
    tokens: int


class Policy(Protocol):
    """Chooses a route for a request, or None to make it wait (FIFO in `lane(req)`)."""

    name: str

    def lane(self, req: int) -> int: ...

    def choose(self, req: int, kv_tokens: int,
               sim: Simulation) -> tuple[list[Hop], dict[str, int]] | None | bool:
        """A route and the KV bytes it takes per node; None to wait; False to reject for good."""


@dataclass(frozen=True)
class SimResult:
    policy: str
    completed: int
    rejected: int
    requests: int
    output_tokens: int
    makespan_s: float
    throughput_tok_s: float  # all output tokens ÷ (last completion − first arrival)
    sustained_tok_s: float  # tokens produced during the arrival window ÷ its length
    saturated_tok_s: float | None  # tokens/s, first completion to last waited admission (None: never full)
    ttft_p50_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    tpot_p99_ms: float
    tpot_mean_ms: float  # over requests of more than one output token
    latency_p50_ms: float
    latency_p99_ms: float

    def to_dict(self) -> dict[str, float | int | str | None]:
        """The result as JSON-ready values: a figure with no sample (no request completed) is null."""
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in self.__dict__.items()}


class Simulation:
    """One run. `loads()` exposes what a heartbeat would report, for load-aware policies."""

    def __init__(self, cluster: Cluster, kv_capacity: dict[str, int], workload: Workload,
                 policy: Policy, max_batch: int = 64, max_batch_tokens: int = 2048) -> None:
        self.c = cluster
        self.L = cluster.model.layers
        self.kv_capacity = kv_capacity
        self.kv_used = {n: 0 for n in kv_capacity}
        self.kv_peak = {n: 0 for n in kv_capacity}  # most KV bytes ever admitted at once
        self.active = {n: 0 for n in kv_capacity}
        self.policy = policy
        self.max_batch = max_batch
        self.max_batch_tokens = max_batch_tokens
        self.arrivals, self.prompt, self.output = workload.draw()
        self.now = 0.0
        self.queue: dict[str, deque[Item]] = {n: deque() for n in kv_capacity}
        # Running totals over each queue (what `loads()` reports without walking the queue):
        # tokens queued, and how many queued items run each layer count.
        self.queued_tokens: dict[str, int] = {n: 0 for n in kv_capacity}
        self.queued_layers: dict[str, dict[int, int]] = {n: {} for n in kv_capacity}
        self.busy_until: dict[str, float] = {n: 0.0 for n in kv_capacity}
        self.busy: dict[str, bool] = {n: False for n in kv_capacity}
        self.events: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.waiting: dict[int, deque[int]] = {}
        self.rejected = 0
        self.last_waited = float("nan")  # the last admission of a request that had to wait

    # -- what a heartbeat would say -------------------------------------------------------------
    def loads(self) -> dict[str, NodeLoad]:
        out = {}
        for n in self.kv_capacity:
            i = self.c.index[n]
            backlog = max(self.busy_until[n] - self.now, 0.0)
            if self.queue[n]:  # the queued items run as one more batch
                backlog += max(self.queued_layers[n]) * layer_time(
                    self.c, i, self.queued_tokens[n])
            out[n] = NodeLoad(active=self.active[n], queue_s=backlog, kv_used_bytes=self.kv_used[n])
        return out

    def _push(self, t: float, kind: int, data: Any) -> None:
        heapq.heappush(self.events, (t, kind == START, self.seq, kind, data))
        self.seq += 1

    def _wake(self, node: str) -> None:
        """Start `node`'s next step once everything arriving at this instant has arrived (a step
        takes all the work that is ready, as a stage's scheduler loop does)."""
        if not self.busy[node] and not self.waking.get(node):
            self.waking[node] = True
            self._push(self.now, START, node)

    def run(self) -> SimResult:
        n = len(self.arrivals)
        self.routes: list[list[Hop] | None] = [None] * n
        self.legs: list[list[tuple[str, float, float]]] = [[] for _ in range(n)]
        self.kv: list[dict[str, int]] = [{} for _ in range(n)]
        self._prompt: list[int] = [int(x) for x in self.prompt]
        self._output: list[int] = [int(x) for x in self.output]
        self.done_tokens: list[int] = [0] * n
        self._first: list[float | None] = [None] * n
        self._finish: list[float | None] = [None] * n
        self.token_times: list[float] = []
        for r in range(n):
            self._push(float(self.arrivals[r]), ARRIVE, r)
        self.waking: dict[str, bool] = {}
        while self.events:
            t, _, _, kind, data = heapq.heappop(self.events)
            self.now = t
            if kind == ARRIVE:
                self._arrive(data)
            elif kind == DELIVER:
                node, items = data
                self._enqueue(node, items)
                self._wake(node)
            elif kind == START:
                self.waking[data] = False
                if not self.busy[data] and self.queue[data]:
                    self._start(data)
            else:
                self._done(*data)
        return self._result()

    def _arrive(self, r: int) -> None:
        lane = self.policy.lane(r)
        q = self.waiting.setdefault(lane, deque())
        q.append(r)
        if len(q) == 1:
            self._admit(lane)

    def _admit(self, lane: int) -> None:
        q = self.waiting.get(lane)
        while q:
            r = q[0]
            kv_tokens = self._prompt[r] + self._output[r]
            got = self.policy.choose(r, kv_tokens, self)
            if got is None:
                return
            q.popleft()
            if got is False:
                self.rejected += 1  # could never fit, even on an idle cluster
                continue
            hops, kv = got
            self.routes[r], self.kv[r] = hops, kv
            self.legs[r] = self._legs(hops, self._prompt[r])
            for node, b in kv.items():
                self.kv_used[node] += b
                self.active[node] += 1
                self.kv_peak[node] = max(self.kv_peak[node], self.kv_used[node])
            if self.now > self.arrivals[r]:
                self.last_waited = self.now
            self._send(Item(r, hops[0], 0, self._prompt[r]), self.now)

    def _legs(self, hops: list[Hop], prompt: int) -> list[tuple[str, float, float]]:
        """Per hop: where its output goes next and the link delay for the prompt pass and for
        one token (the next hop's; after the last hop, the token id back to the first)."""
        c, act = self.c, self.c.model.activation_bytes
        idx = [c.index[h.node] for h in hops]
        out = [(hops[k + 1].node, link_time(c, idx[k], idx[k + 1], prompt * act),
                link_time(c, idx[k], idx[k + 1], act)) for k in range(len(hops) - 1)]
        back = link_time(c, idx[-1], idx[0], 8)
        out.append((hops[0].node, back, back))
        return out

    def _send(self, item: Item, at: float) -> None:
        self._push(at, DELIVER, (item.hop.node, [item]))

    def _enqueue(self, node: str, items: list[Item]) -> None:
        self.queue[node].extend(items)
        layers = self.queued_layers[node]
        tokens = 0
        for it in items:
            tokens += it.tokens
            hop = it.hop
            k = hop.end - hop.start
            layers[k] = layers.get(k, 0) + 1
        self.queued_tokens[node] += tokens

    def _start(self, node: str) -> None:
        q = self.queue[node]
        first = q.popleft()
        batch = [first]
        tokens = first.tokens
        max_batch, max_tokens = self.max_batch, self.max_batch_tokens
        while q and len(batch) < max_batch and tokens + q[0].tokens <= max_tokens:
            tokens += q[0].tokens
            batch.append(q.popleft())
        self.queued_tokens[node] -= tokens
        queued = self.queued_layers[node]
        prompt, done, last = self._prompt, self.done_tokens, self.L
        context = layers = rows = 0
        for it in batch:  # one pass: KV read, the deepest hop, the rows that need logits
            r, hop = it.req, it.hop
            context += prompt[r] + done[r]
            k = hop.end - hop.start
            if k > layers:
                layers = k
            if hop.end == last:
                rows += 1
            queued[k] -= 1
            if not queued[k]:
                del queued[k]
        i = self.c.index[node]
        dur = layers * layer_time(self.c, i, tokens, context)
        if rows:  # the step ends the model for these items: the LM head over their rows
            dur += head_time(self.c, i, rows)
        self.busy[node] = True
        self.busy_until[node] = self.now + dur
        self._push(self.now + dur, DONE, (node, batch))

    def _done(self, node: str, batch: list[Item]) -> None:
        self.busy[node] = False
        freed_lanes = []
        out: dict[tuple[str, float], list[Item]] = {}  # items leaving together, one event each
        routes, legs, done, output = self.routes, self.legs, self.done_tokens, self._output
        first, now, times = self._first, self.now, self.token_times
        for r, _, k, tokens in batch:
            hops = routes[r]
            assert hops is not None
            if k + 1 < len(hops):
                dest, prompt_s, token_s = legs[r][k]
                # A pass carries the prompt's tokens or one (a prompt of one token: the same).
                delay = token_s if tokens == 1 else prompt_s
                key = (dest, delay)
                item = Item(r, hops[k + 1], k + 1, tokens)
                got = out.get(key)
                if got is None:
                    out[key] = [item]
                else:
                    got.append(item)
                continue
            if first[r] is None:  # this was the prefill pass
                first[r] = now
            done[r] += 1
            times.append(now)
            if done[r] >= output[r]:
                self._finish[r] = now
                for n2, b in self.kv[r].items():
                    self.kv_used[n2] -= b
                    self.active[n2] -= 1
                freed_lanes.append(self.policy.lane(r))
            else:
                key = (hops[0].node, legs[r][k][1])  # the token id back to the first hop
                item = Item(r, hops[0], 0, 1)
                got = out.get(key)
                if got is None:
                    out[key] = [item]
                else:
                    got.append(item)
        for (dest, delay), items in out.items():
            self._push(now + delay, DELIVER, (dest, items))
        for lane in sorted(set(freed_lanes)):
            self._admit(lane)
        if self.queue[node]:
            self._wake(node)

    def _result(self) -> SimResult:
        nan = float("nan")
        self.first_token = np.array([nan if t is None else t for t in self._first])
        self.finish = np.array([nan if t is None else t for t in self._finish])
        ok = ~np.isnan(self.finish)
        out = self.output[ok]
        lat = (self.finish - self.arrivals)[ok] * 1e3
        ttft = (self.first_token - self.arrivals)[ok] * 1e3
        tpot = np.where(out > 1, (lat - ttft) / np.maximum(out - 1, 1), 0.0)
        span = float(np.nanmax(self.finish) - self.arrivals[0]) if ok.any() else 0.0
        tokens = int(out.sum())
        # Sustained rate: tokens produced while requests were still arriving (the system is in
        # steady state there when the offered load exceeds capacity); the drain after the last
        # arrival is left out. Falls back to tokens ÷ makespan when all arrive at once.
        t0, t1 = float(self.arrivals[0]), float(self.arrivals[-1])
        times = np.asarray(self.token_times)
        if t1 - t0 > 0 and span > 0:
            window = min(t1, t0 + span) - t0
            sustained = float(((times >= t0) & (times <= t0 + window)).sum()) / window
        else:
            sustained = tokens / span if span > 0 else 0.0

        # Saturated rate: from the first completion (the cluster has filled and turned over) to
        # the last admission made while others still waited (the queue ran dry after it).
        saturated: float | None = None
        if ok.any() and self.last_waited == self.last_waited:
            a, b = float(np.nanmin(self.finish)), self.last_waited
            if b > a:
                saturated = float(((times >= a) & (times <= b)).sum()) / (b - a)

        def pct(x: np.ndarray, q: float) -> float:
            return float(np.percentile(x, q)) if len(x) else float("nan")

        return SimResult(
            policy=self.policy.name, completed=int(ok.sum()), rejected=self.rejected, requests=len(self.arrivals),
            output_tokens=tokens, makespan_s=span,
            throughput_tok_s=tokens / span if span > 0 else 0.0, sustained_tok_s=sustained,
            saturated_tok_s=saturated,
            ttft_p50_ms=pct(ttft, 50), ttft_p99_ms=pct(ttft, 99),
            tpot_p50_ms=pct(tpot, 50), tpot_p99_ms=pct(tpot, 99),
            tpot_mean_ms=float(tpot[out > 1].mean()) if (out > 1).any() else nan,
            latency_p50_ms=pct(lat, 50), latency_p99_ms=pct(lat, 99),
        )
