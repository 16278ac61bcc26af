"""The coordinator's decision logic: a pure state machine fed events and the time.

`CoordinatorState` holds what the coordinator knows — active operators from the registry
(`sync_registry`), their heartbeats (`heartbeat`), the working snapshot and plan, and the last
published epoch — and decides, with the scheduler's pure core, when the allocation changes:

* start / first placeable pool: phase 1 (`allocate`) over every live node;
* a node appears on the registry, or an evicted node heartbeats again: `dynamics.join` (one
  replica touched, no global reshuffle);
* a node leaves the registry (unstaked, jailed), announces LEAVE, or misses heartbeats for
  `heartbeat_timeout_s` (`tick`), or is found dead by the coordinator's own probes after a
  failure report (`evict`, from `reports.py`): `dynamics.leave` (its replica repaired or dissolved);
* every `rebalance_interval_s`, measured per-layer latencies are folded into the snapshot and a
  global re-allocation is adopted only when `dynamics.rebalance` finds the imbalance above the
  threshold.

An eviction first tries to heal in place (`replace.fill_gap`): only the evicted node's stage is
re-placed, onto standby nodes (heard-from reserved ones included), and every surviving stage keeps
its node and range, so no survivor reloads a shard. Only when no such plan is usable does it fall
back to `dynamics.leave` (the replica re-split) and promotions (phase 1 when nothing is placeable).

Hot standby (`standby_reserve` N > 0): the N most recently registered live nodes are held out of
the allocation (planned as unavailable, so phase 1 and joins leave them standby; they verify
meanwhile). An evicted stage is re-placed on them first (above); when that fails and an eviction
costs a replica (or leaves no plan), reserved nodes are promoted one by one — each placed with
`dynamics.join`, phase 1 when nothing is placeable — until the replica count is back or the
reserve is empty; a node registering later refills the reserve.

Routing waits for confirmation: a heartbeat says which range its node serves and for which
epoch's assignment. A published stage `(node, [a, b))` is routed only once its node's latest
heartbeat reports `[a, b)` for an epoch at or after the one since which the node has held that
range (`Published.since`); until then the stage is left out, and when what is left has no
complete pipeline the previous epoch's stages that their nodes still confirm fill in (the old
assignment, still served while the new one loads).

Whenever the plan's epoch rows differ from the last published ones, `pending()` returns a
`Publication`; the IO shell sends it and reports back with `mark_published`. No sockets, no
clocks (`now` is always passed in), no randomness: tests drive it directly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlparse

from eth_utils import to_checksum_address

from protocol.api_errors import (
    BadSignature,
    ModelNotServed,
    NotReady,
    Replay,
    StaleMessage,
    UnknownOperator,
    WrongChain,
)
from protocol.messages import (
    AssignmentResponse,
    Heartbeat,
    HeartbeatKind,
    RouteRequest,
    RouteResponse,
    SignedHeartbeat,
    StageAssignment,
    recover_signer,
)
from scheduler import dynamics
from scheduler.allocate import allocate
from scheduler.errors import CannotPlace, NoRoute, SchedulerError
from scheduler.model import Links, ModelSpec, NodeSpec, Params, Plan, Snapshot
from scheduler.replace import fill_gap
from scheduler.route import NodeLoad, Router
from scheduler.service.routing import confirms, routable_plans, shard_key

Row = tuple[str, int, int, int]  # (operator, model_id, layer start, layer end)


@dataclass(frozen=True)
class ChainNode:
    """An active operator as the registry describes it; `spec.id == spec.operator == operator`."""

    operator: str
    owner: str
    endpoint: str
    spec: NodeSpec
    registered_block: int = 0  # the registry's; the latest registered make the standby reserve


@dataclass(frozen=True)
class Timing:
    heartbeat_timeout_s: float = 15.0
    max_clock_skew_s: float = 30.0
    rebalance_interval_s: float = 60.0
    imbalance_threshold: float = 0.2


@dataclass(frozen=True)
class Publication:
    """An allocation to publish as the next epoch."""

    snapshot: Snapshot
    plan: Plan
    rows: tuple[Row, ...]
    snapshot_hash: str
    reason: str


@dataclass(frozen=True)
class Published:
    epoch: int
    snapshot: Snapshot
    plan: Plan
    rows: tuple[Row, ...]
    snapshot_hash: str
    at_s: float
    endpoints: dict[str, str] = field(default_factory=dict)
    # per operator of `rows`: the first epoch of the unbroken run of epochs that gave it this range
    since: dict[str, int] = field(default_factory=dict)


def links_for(regions: set[str], base: Links, default_rtt_ms: float) -> Links:
    """`base` plus an RTT for every region pair it lacks: the simulator catalogue's figure for
    known cloud regions, else `default_rtt_ms` (the solver needs every pair)."""
    from scheduler.sim.catalogue import region_rtt_ms

    rtt = dict(base.rtt_ms)
    for a in regions:
        for b in regions:
            key = (a, b) if a <= b else (b, a)
            if a == b or key in rtt:
                continue
            try:
                rtt[key] = region_rtt_ms(a, b)
            except SchedulerError:
                rtt[key] = default_rtt_ms
    return replace(base, rtt_ms=rtt)


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """(host, port) of an http(s) endpoint URL; the scheme's default port when none is given."""
    u = urlparse(endpoint)
    try:
        port = u.port
    except ValueError:
        port = None
    return u.hostname or "", port or (443 if u.scheme == "https" else 80)


class CoordinatorState:
    """Everything the coordinator decides, as a function of the events it was fed."""

    def __init__(self, model: ModelSpec, chain_id: int, timing: Timing = Timing(),
                 params: Params | None = None, links: Links | None = None,
                 default_rtt_ms: float = 100.0, standby_reserve: int = 0) -> None:
        self.model = model
        self.standby_reserve = standby_reserve
        self.reserved: set[str] = set()  # live nodes held out of the plan as hot standby
        self.chain_id = chain_id
        self.timing = timing
        self.params = params or Params()
        self.base_links = links or Links()
        self.default_rtt_ms = default_rtt_ms
        self.registered: dict[str, ChainNode] = {}
        self.last_seen: dict[str, float] = {}
        self.last_seq: dict[str, int] = {}
        self.loads: dict[str, NodeLoad] = {}
        self.serving: dict[str, tuple[int, int, int]] = {}  # (epoch, start, end) heartbeats report
        self.layer_ms: dict[str, float] = {}
        self.live: set[str] = set()
        self.plan: Plan | None = None
        self.published: Published | None = None
        self.previous: Published | None = None  # the epoch before `published`
        self.problem = ""  # why nothing can be placed right now, if so
        self.events: deque[str] = deque(maxlen=200)
        self._last_rebalance_s: float | None = None
        self._routers: dict[tuple[int, tuple[tuple[str, int, int], ...]], Router] = {}
        self._reason = "start"
        self._working = self._snapshot(set())

    # ── snapshot ─────────────────────────────────────────────────────────────────────────────
    def _snapshot(self, live: set[str], promote: set[str] | frozenset[str] = frozenset()
                  ) -> Snapshot:
        """Solver input over `live`, with the latest measured per-layer latencies; reserved
        nodes are unavailable unless in `promote`."""
        nodes = []
        for op in sorted(live):
            spec = self.registered[op].spec
            if op in self.layer_ms:
                spec = replace(spec, layer_ms=self.layer_ms[op])
            if op in self.reserved and op not in promote:
                spec = replace(spec, available=False)
            nodes.append(spec)
        links = links_for({n.region for n in nodes}, self.base_links, self.default_rtt_ms)
        return Snapshot(model=self.model, nodes=tuple(nodes), links=links, params=self.params)

    @property
    def snapshot(self) -> Snapshot:
        """The snapshot the current plan was made from (every live node at that time)."""
        return self._working

    # ── membership changes ───────────────────────────────────────────────────────────────────
    def _note(self, now: float, text: str) -> None:
        self.events.append(f"{now:.3f} {text}")

    def _replan(self, now: float, reason: str, before_live: set[str], change: Any) -> None:
        """Apply `change(snapshot over before_live, plan) -> plan` for the move from
        `before_live` to `self.live`, or fall back to phase 1 from scratch."""
        before = self._snapshot(before_live)
        self._working = self._snapshot(self.live)
        try:
            if self.plan is None:
                self.plan = allocate(self._working)
                reason += " (phase 1)"
            else:
                self.plan = change(before, self.plan)
            self.problem = ""
        except CannotPlace as e:
            self.plan, self.problem = None, str(e)
        except SchedulerError as e:  # an incremental step refused: solve afresh
            self._note(now, f"incremental step failed ({e}); running phase 1")
            try:
                self.plan = allocate(self._working)
                self.problem = ""
            except CannotPlace as e2:
                self.plan, self.problem = None, str(e2)
        self._reason = reason
        self._note(now, reason + (f"; cannot place: {self.problem}" if self.problem else ""))

    def _join(self, op: str, now: float, why: str) -> None:
        if op in self.live:
            return
        before = set(self.live)
        self.live.add(op)
        spec = self._snapshot({op}).nodes[0]
        self._replan(now, f"{op} joined ({why})", before,
                     lambda snap, plan: dynamics.join(snap, plan, spec))
        if self.plan is None:  # the others alone place nothing: a standby must step in
            self._promote(now, 1)

    def evict(self, op: str, now: float, why: str) -> None:
        """Evict `op` now, as a timeout would (the IO shell's checked failure reports)."""
        self._evict(op, now, why)

    def note(self, now: float, text: str) -> None:
        """Add `text` to the events `/status` lists."""
        self._note(now, text)

    def _evict(self, op: str, now: float, why: str) -> None:
        if op not in self.live:
            return
        had = len(self.plan.replicas) if self.plan is not None else 0
        before = set(self.live)
        self.live.discard(op)
        self.loads.pop(op, None)
        self.serving.pop(op, None)
        if op in self.reserved:  # a standby went quiet: nothing served changes; it stays in
            self._working = self._snapshot(self.live)  # the reserve for when it is back
            self._note(now, f"standby {op} evicted ({why})")
            return
        if self._heal(op, now, why):
            return
        self._replan(now, f"{op} evicted ({why})", before,
                     lambda snap, plan: dynamics.leave(snap, plan, op))
        self._promote(now, max(had, 1))

    def _heal(self, op: str, now: float, why: str) -> bool:
        """Re-place only `op`'s stage onto standby nodes (heard-from reserved ones count), every
        surviving stage kept as it is; False when no such plan is usable or `op` served nothing."""
        if self.plan is None or op not in {s.node for s in self.plan.stages()}:
            return False
        try:
            healed = fill_gap(self._snapshot(self.live, self._ready(now)), self.plan, op)
        except SchedulerError as e:
            self._note(now, f"cannot keep the survivors' ranges: {e}")
            return False
        if healed is None:
            self._note(now, f"no standby can take {op}'s layers with every survivor kept")
            return False
        old = {s.node for s in self.plan.stages()}
        took = [s for s in healed.stages() if s.node not in old]
        reserve = set(self.reserved)
        self.reserved -= {s.node for s in took}
        self._working = self._snapshot(self.live)
        self.plan = replace(healed, snapshot_hash=self._working.canonical_hash())
        self.problem = ""
        onto = ", ".join(f"{'standby ' if s.node in reserve else 'spare '}{s.node} promoted "
                         f"into [{s.start}, {s.end})" for s in took)
        self._reason = f"{op} evicted ({why}); {onto}; every other stage kept"
        self._note(now, self._reason)
        return True

    def _ready(self, now: float) -> set[str]:
        """Reserved standbys heard from within the timeout: a silent one is no replacement."""
        return {op for op in self.reserved & self.live
                if now - self.last_seen.get(op, now) <= self.timing.heartbeat_timeout_s}

    def _promote(self, now: float, want: int) -> None:
        """Promote reserved standbys that are heard from (heartbeat within the timeout) until
        the plan has `want` replicas (or none is left): a silent standby is no replacement."""
        def ready() -> set[str]:
            return self._ready(now)

        while ready() and (self.plan is None or len(self.plan.replicas) < want):
            op = max(ready(), key=self._reserve_rank)
            self.reserved.discard(op)
            spec = self._snapshot({op}).nodes[0]
            self._replan(now, f"standby {op} promoted", self.live - {op},
                         lambda snap, plan, s=spec: dynamics.join(snap, plan, s))

    def _reserve_rank(self, op: str) -> tuple[int, str]:
        """Later registration ranks higher for the reserve; promotion takes the earliest."""
        return (-self.registered[op].registered_block, op)

    def _refill_reserve(self, candidates: list[str]) -> None:
        """Hold the latest registered of `candidates` out as standby, up to the reserve size."""
        ranked = sorted((o for o in candidates if o not in self.reserved),
                        key=lambda o: (self.registered[o].registered_block, o), reverse=True)
        for op in ranked[:max(0, self.standby_reserve - len(self.reserved))]:
            self.reserved.add(op)

    def sync_registry(self, nodes: list[ChainNode], now: float) -> None:
        """The registry's current active operators. New ones join with a grace period of one
        heartbeat timeout; ones gone from it (unstaked, jailed, rotated) are evicted."""
        fresh = {n.operator: n for n in nodes}
        for op in sorted(set(self.registered) - set(fresh)):
            self._evict(op, now, "no longer active on the registry")
            self.reserved.discard(op)
            del self.registered[op]
            self.last_seq.pop(op, None)
            self.last_seen.pop(op, None)
        joined = []
        for op in sorted(fresh):
            old = self.registered.get(op)
            self.registered[op] = fresh[op]
            if old is None:
                self.last_seen.setdefault(op, now)
                joined.append(op)
            elif old.spec != fresh[op].spec and op in self.live:
                self._evict(op, now, "hardware profile changed")
                self._join(op, now, "new hardware profile")
        if self.plan is None and joined:  # first placement: phase 1 over all, not one by one
            before = set(self.live)
            self.live.update(joined)
            self._refill_reserve(sorted(self.live - self.reserved))
            self._replan(now, f"{len(joined)} node(s) registered", before, None)
            self._promote(now, 1)  # the reserve must never cost the only pipeline
        else:
            for op in joined:
                if self.plan is not None:
                    self._refill_reserve([op])
                self._join(op, now, "registered" + (" as standby" if op in self.reserved
                                                     else ""))

    def heartbeat(self, signed: SignedHeartbeat, now: float) -> Heartbeat:
        """Check and record a signed heartbeat; raises a `HeartbeatRejected` subclass."""
        hb = signed.heartbeat
        signer = recover_signer(signed)
        named = to_checksum_address(hb.operator)
        if signer != named:
            raise BadSignature(f"heartbeat names operator {named} but is signed by {signer}")
        if hb.chain_id != self.chain_id:
            raise WrongChain(f"heartbeat is for chain id {hb.chain_id}, this coordinator serves "
                             f"chain id {self.chain_id}")
        if named not in self.registered:
            raise UnknownOperator(f"{named} is not an active operator on the NodeRegistry "
                                  f"(registered, staked, not jailed)")
        skew = abs(now - hb.timestamp_ms / 1e3)
        if skew > self.timing.max_clock_skew_s:
            raise StaleMessage(f"heartbeat timestamp {hb.timestamp_ms} ms is {skew:.1f} s from "
                               f"the coordinator's clock (at most "
                               f"{self.timing.max_clock_skew_s:g} s)")
        last = self.last_seq.get(named, 0)
        if hb.seq <= last:
            raise Replay(f"heartbeat seq {hb.seq} is not above the last accepted ({last})")
        self.last_seq[named] = hb.seq
        self.last_seen[named] = now
        if hb.kind == HeartbeatKind.LEAVE:
            self._evict(named, now, "announced leave")
            return hb
        self.loads[named] = NodeLoad(active=hb.active, queue_s=hb.queue_ms / 1e3,
                                     kv_used_bytes=hb.kv_used_bytes)
        if hb.layer_us:
            self.layer_ms[named] = hb.layer_us / 1e3
        if hb.serving is None:
            self.serving.pop(named, None)
        else:
            self.serving[named] = hb.serving
        if named not in self.live:
            self._join(named, now, "heartbeat resumed")
        return hb

    def tick(self, now: float) -> None:
        """Evict nodes silent for longer than the timeout; rebalance when it is due."""
        for op in sorted(self.live):
            silent = now - self.last_seen.get(op, now)
            if silent > self.timing.heartbeat_timeout_s:
                self._evict(op, now, f"no heartbeat for {silent:.1f} s")
        if self._last_rebalance_s is None:
            self._last_rebalance_s = now
        elif now - self._last_rebalance_s >= self.timing.rebalance_interval_s:
            self._last_rebalance_s = now
            self._rebalance(now)

    def _rebalance(self, now: float) -> None:
        if not self.live:
            return
        if self.plan is None:  # nothing placeable so far; measurements may have changed that
            self._replan(now, "periodic retry", set(self.live), None)
            return
        measured = self._snapshot(self.live)
        try:
            plan, changed = dynamics.rebalance(measured, self.plan,
                                               self.timing.imbalance_threshold)
        except SchedulerError as e:
            self._note(now, f"rebalance skipped: {e}")
            return
        self._working = measured
        if changed:
            self.plan = plan
            self._reason = "global re-allocation (imbalance above threshold)"
            self._note(now, self._reason)

    # ── publication ──────────────────────────────────────────────────────────────────────────
    def rows(self) -> tuple[Row, ...]:
        if self.plan is None:
            return ()
        return tuple(self.plan.epoch_assignments(self._working))

    def pending(self) -> Publication | None:
        """The allocation to publish, when it differs from the last published one."""
        if self.plan is None:
            return None
        rows = self.rows()
        if self.published is not None and rows == self.published.rows:
            return None
        return Publication(self._working, self.plan, rows, self._working.canonical_hash(),
                           self._reason)

    def mark_published(self, pub: Publication, epoch: int, now: float) -> None:
        endpoints = {op: self.registered[op].endpoint for op, *_ in pub.rows
                     if op in self.registered}
        before = self.published
        held = {op: (a, b) for op, _, a, b in before.rows} if before else {}
        since = {op: before.since.get(op, before.epoch)
                 if before is not None and held.get(op) == (a, b) else epoch
                 for op, _, a, b in pub.rows}
        self.previous = before
        self.published = Published(epoch, pub.snapshot, pub.plan, pub.rows, pub.snapshot_hash,
                                   now, endpoints, since)
        self._routers.clear()
        self._note(now, f"published epoch {epoch} ({len(pub.rows)} stages, {pub.reason})")

    # ── answers ──────────────────────────────────────────────────────────────────────────────
    def assignment(self, operator: str) -> AssignmentResponse:
        op = to_checksum_address(operator)
        p = self.published
        if p is None:
            raise NotReady("no epoch has been published yet")
        for row_op, model_id, start, end in p.rows:
            if row_op == op:
                return AssignmentResponse(operator=op, epoch=p.epoch, model_id=model_id,
                                          assigned=True, layer_start=start, layer_end=end,
                                          snapshot_hash=p.snapshot_hash)
        return AssignmentResponse(operator=op, epoch=p.epoch, model_id=self.model.model_id,
                                  assigned=False, standby=op in p.plan.standby,
                                  snapshot_hash=p.snapshot_hash)

    def route(self, req: RouteRequest) -> RouteResponse:
        """A pipeline over the published epoch's confirmed stages (`routing`), least expected
        completion time at the current loads; `req.exclude` is avoided. Raises `NoRoute`."""
        if req.model_id != self.model.model_id:
            raise ModelNotServed(f"model {req.model_id} is not served here (this coordinator "
                                 f"schedules model {self.model.model_id})")
        p = self.published
        if p is None:
            raise NotReady("no epoch has been published yet")
        exclude = {to_checksum_address(a) for a in req.exclude}
        plans = routable_plans(p, self.previous, self.serving, self.live)
        r, err = None, NoRoute("no confirmed stage")
        for plan in plans:
            key = (p.epoch, shard_key(plan))
            if key not in self._routers:
                if len(self._routers) >= 16:
                    self._routers.clear()
                self._routers[key] = Router(p.snapshot, plan)
            try:
                # whole shards: a worker serves exactly its range and refuses a suffix of it
                r = self._routers[key].route(self.loads, req.prompt_tokens, req.output_tokens,
                                             exclude=exclude, whole_shards=True)
                break
            except NoRoute as e:
                err = e
        if r is None:
            waiting = sorted({s.node for s in p.plan.stages()} - {s.node for s in plans[0].stages()})
            raise NoRoute(f"{err}; {len(waiting)} stage(s) of epoch {p.epoch} not yet confirmed "
                          f"by their node's heartbeat" if waiting else str(err))
        stages = []
        for h in r.hops:
            endpoint = p.endpoints.get(h.node) or (
                self.registered[h.node].endpoint if h.node in self.registered else "")
            host, port = split_endpoint(endpoint)
            stages.append(StageAssignment(operator=h.node, endpoint=endpoint, host=host, port=port,
                                     start=h.start, end=h.end))
        return RouteResponse(epoch=p.epoch, model_id=self.model.model_id,
                             snapshot_hash=p.snapshot_hash, stages=tuple(stages),
                             expected_ms=r.cost_s * 1e3)

    def status(self, now: float) -> dict[str, Any]:
        p = self.published
        return {
            "chain_id": self.chain_id,
            "model": self.model.to_dict(),
            "epoch": p.epoch if p else 0,
            "snapshot_hash": p.snapshot_hash if p else "",
            "published_rows": [list(r) for r in p.rows] if p else [],
            "pending": self.pending() is not None,
            "problem": self.problem,
            "standby_reserve": sorted(self.reserved),
            "nodes": [
                {"operator": op, "endpoint": n.endpoint, "live": op in self.live,
                 "reserved": op in self.reserved,
                 "last_seen_s_ago": round(now - self.last_seen[op], 3)
                 if op in self.last_seen else None,
                 "last_seq": self.last_seq.get(op, 0),
                 "load": vars(self.loads[op]) if op in self.loads else None,
                 "serving": list(self.serving[op]) if op in self.serving else None,
                 "confirmed": p is not None and any(
                     confirms(p, self.serving, self.live, op, a, b)
                     for row_op, _, a, b in p.rows if row_op == op),
                 "layer_ms": self.layer_ms.get(op)}
                for op, n in sorted(self.registered.items())
            ],
            "estimate": dict(self.plan.estimate) if self.plan else {},
            "events": list(self.events)[-20:],
        }
