"""Parse and validate the JSON documents of `scheduler/SCHEMAS.md` into the frozen types.

Cluster, model, snapshot (= cluster + model) and allocation documents come in as parsed JSON (or
text); anything malformed raises `InvalidInput` naming the field path and the value found, never a
`KeyError` or `TypeError`. `check_plan` verifies an allocation against a snapshot (every replica
covers every layer once and in order; no node's memory is exceeded; nodes exist, are available and
appear once) and is what the simulator and the property tests rely on.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from scheduler.errors import InvalidInput, InvalidPlan
from scheduler.model import MIB, Links, ModelSpec, NodeSpec, Params, Plan, Replica, Snapshot, Stage

MAX_LAYERS = 4096  # far above any published model; keeps the solver's loops bounded
MAX_DEPTH = 64  # JSON nesting; the documents need 4
MIN_RATE = 1e-6  # TFLOPS, GB/s, Mbit/s: anything slower overflows the cost model's times
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')


def load_json(source: str | Path | bytes) -> Any:
    """Read a JSON file (path) or text; malformed JSON becomes `InvalidInput`."""
    try:
        if isinstance(source, Path):
            text: str | bytes = source.read_bytes()
        else:
            text = source
        _check_depth(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        return json.loads(text)
    except OSError as exc:
        raise InvalidInput(f"cannot read {source}: {exc.strerror or exc}") from exc
    except RecursionError as exc:
        raise InvalidInput(f"malformed JSON in {source if isinstance(source, Path) else 'input'}: "
                           f"nested deeper than {MAX_DEPTH} levels") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers beyond 4300 digits
        raise InvalidInput(f"malformed JSON in {source if isinstance(source, Path) else 'input'}: "
                           f"{exc}") from exc


def _check_depth(raw: bytes) -> None:
    """Refuse JSON nested deeper than `MAX_DEPTH` before parsing it (the C parser would recurse)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return
    bare = np.frombuffer(_STRINGS.sub(b'""', raw), dtype=np.uint8)
    step = (np.isin(bare, (ord("["), ord("{"))).astype(np.int32)
            - np.isin(bare, (ord("]"), ord("}"))).astype(np.int32))
    if step.size and int(np.cumsum(step).max()) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")


def _jtype(v: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(v), type(v).__name__)


def _finite(v: Any) -> bool:
    """A JSON number that is finite and fits a float (booleans are not numbers)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer beyond float range
        return False


def _check_version(d: dict[str, Any], where: str) -> None:
    if "version" in d and (not _finite(d["version"]) or d["version"] != 1):
        raise InvalidInput(f"{where}.version: only version 1 is understood, got {d['version']!r}")


def _obj(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise InvalidInput(f"{where}: expected an object, got {_jtype(doc)}")
    return doc


def _num(d: dict[str, Any], key: str, where: str, *, default: Any = ..., lo: float = 0.0,
         strict: bool = True, integer: bool = False, hi: float = 1e15) -> Any:
    if key not in d:
        if default is ...:
            raise InvalidInput(f"{where}.{key}: missing")
        return default
    v = d[key]
    if not _finite(v):
        shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
        raise InvalidInput(f"{where}.{key}: expected a finite number, got {shown}")
    if integer and int(v) != v:
        raise InvalidInput(f"{where}.{key}: expected an integer, got {v!r}")
    if (v <= lo) if strict else (v < lo):
        raise InvalidInput(f"{where}.{key}: must be {'>' if strict else '>='} {lo:g}, got {v!r}")
    if v > hi:
        raise InvalidInput(f"{where}.{key}: must be <= {hi:g}, got {v!r}")
    return int(v) if integer else float(v)


def _str(d: dict[str, Any], key: str, where: str, default: Any = ...) -> str:
    if key not in d:
        if default is ...:
            raise InvalidInput(f"{where}.{key}: missing")
        return str(default)
    v = d[key]
    if not isinstance(v, str) or (default is ... and not v):
        raise InvalidInput(f"{where}.{key}: expected a non-empty string, got {v!r}")
    return v


def parse_model(doc: Any, where: str = "model") -> ModelSpec:
    d = _obj(doc, where)
    m = ModelSpec(
        name=_str(d, "name", where),
        layers=_num(d, "layers", where, integer=True, hi=MAX_LAYERS),
        hidden=_num(d, "hidden", where, integer=True, hi=1 << 20),
        heads=_num(d, "heads", where, integer=True, hi=1 << 14),
        kv_heads=_num(d, "kv_heads", where, integer=True, hi=1 << 14),
        intermediate=_num(d, "intermediate", where, integer=True, hi=1 << 22),
        vocab=_num(d, "vocab", where, integer=True, hi=1 << 24),
        tied_embeddings=bool(d.get("tied_embeddings", False)),
        dtype_bytes=_num(d, "dtype_bytes", where, default=2, integer=True, hi=8),
        model_id=_num(d, "model_id", where, default=0, strict=False, integer=True, hi=2**63 - 1),
    )
    if m.hidden % m.heads or m.heads % m.kv_heads:
        raise InvalidInput(f"{where}: hidden ({m.hidden}) must divide by heads ({m.heads}) and "
                           f"heads by kv_heads ({m.kv_heads})")
    return m


def parse_node(doc: Any, where: str) -> NodeSpec:
    d = _obj(doc, where)
    layer_ms = d.get("layer_ms")
    if layer_ms is not None:
        layer_ms = _num(d, "layer_ms", where, hi=1e6)
    step_ms = _step_ms(d.get("step_ms"), f"{where}.step_ms")
    return NodeSpec(
        id=_str(d, "id", where),
        region=_str(d, "region", where),
        vram_mib=_num(d, "vram_mib", where, integer=True, hi=1 << 24),  # 16 TiB
        tflops=_num(d, "tflops", where, lo=MIN_RATE),
        mem_bw_gbps=_num(d, "mem_bw_gbps", where, lo=MIN_RATE),
        net_mbps=_num(d, "net_mbps", where, lo=MIN_RATE),
        operator=_str(d, "operator", where, default=""),
        gpu=_str(d, "gpu", where, default=""),
        available=bool(d.get("available", True)),
        layer_ms=layer_ms,
        step_ms=step_ms,
    )


def _step_ms(rows: Any, where: str) -> tuple[tuple[int, float], ...] | None:
    """Measured per-layer step times: `[[tokens, ms], …]`, tokens strictly ascending integers
    >= 1, ms finite and > 0 (1 to 64 rows)."""
    if rows is None:
        return None
    if not isinstance(rows, list) or not 1 <= len(rows) <= 64:
        raise InvalidInput(f"{where}: expected a list of 1 to 64 [tokens, ms] rows, got "
                           f"{_jtype(rows)}{f' of {len(rows)}' if isinstance(rows, list) else ''}")
    out: list[tuple[int, float]] = []
    for i, row in enumerate(rows):
        if (not isinstance(row, list) or len(row) != 2 or not all(_finite(x) for x in row)
                or int(row[0]) != row[0] or not 1 <= row[0] <= 1 << 24 or not 0 < row[1] <= 1e6):
            raise InvalidInput(f"{where}[{i}]: expected [tokens >= 1 (integer), ms in (0, 1e6]], "
                               f"got {row!r}"[:200])
        if out and int(row[0]) <= out[-1][0]:
            raise InvalidInput(f"{where}[{i}]: tokens must ascend, got {row[0]!r} after "
                               f"{out[-1][0]}")
        out.append((int(row[0]), float(row[1])))
    return tuple(out)


def _pairs(rows: Any, where: str, width: int, bandwidth: bool = False) -> list[list[Any]]:
    """Rows `[name, name, number…]` with numbers >= 0; with `bandwidth` the last one must be > 0."""
    if not isinstance(rows, list):
        raise InvalidInput(f"{where}: expected a list of rows, got {_jtype(rows)}")
    out = []
    for i, row in enumerate(rows):
        if (not isinstance(row, list) or len(row) != width
                or not all(isinstance(x, str) for x in row[:2])
                or not all(_finite(x) and x >= 0 for x in row[2:])):
            raise InvalidInput(f"{where}[{i}]: expected [name, name{', number' * (width - 2)}] "
                               f"with numbers >= 0, got {row!r}")
        if bandwidth and not row[-1] > MIN_RATE:
            raise InvalidInput(f"{where}[{i}]: bandwidth must be > {MIN_RATE:g} Mbit/s, got "
                               f"{row[-1]!r}")
        out.append(row)
    return out


def parse_links(doc: Any, where: str = "links") -> Links:
    d = _obj(doc if doc is not None else {}, where)

    def key(a: str, b: str) -> tuple[str, str]:
        return (a, b) if a <= b else (b, a)

    return Links(
        rtt_ms={key(a, b): float(v) for a, b, v in _pairs(d.get("rtt_ms", []), f"{where}.rtt_ms", 3)},
        bandwidth_mbps={key(a, b): float(v) for a, b, v in
                        _pairs(d.get("bandwidth_mbps", []), f"{where}.bandwidth_mbps", 3, True)},
        pairs={key(a, b): (float(r), float(m)) for a, b, r, m in
               _pairs(d.get("pairs", []), f"{where}.pairs", 4, True)},
        intra_rtt_ms=_num(d, "intra_rtt_ms", where, default=0.5, strict=False),
    )


def parse_params(doc: Any, where: str = "params") -> Params:
    d = _obj(doc if doc is not None else {}, where)
    base = Params()
    p = Params(
        kv_reserve_mib=_num(d, "kv_reserve_mib", where, default=base.kv_reserve_mib, strict=False,
                            integer=True),
        memory_utilization=_num(d, "memory_utilization", where, default=base.memory_utilization),
        context_tokens=_num(d, "context_tokens", where, default=base.context_tokens, integer=True),
        max_batch=_num(d, "max_batch", where, default=base.max_batch, integer=True),
        prompt_tokens=_num(d, "prompt_tokens", where, default=base.prompt_tokens, integer=True,
                           hi=1 << 24),
        output_tokens=_num(d, "output_tokens", where, default=base.output_tokens, integer=True,
                           hi=1 << 24),
        latency_bound_ms=_num(d, "latency_bound_ms", where, default=base.latency_bound_ms),
        layer_overhead_us=_num(d, "layer_overhead_us", where, default=base.layer_overhead_us,
                               strict=False),
    )
    if p.memory_utilization > 1:
        raise InvalidInput(f"{where}.memory_utilization: must be <= 1, got {p.memory_utilization}")
    return p


def parse_snapshot(doc: Any, model: ModelSpec | None = None) -> Snapshot:
    """A cluster document (plus `model` unless given) → `Snapshot`, checking cross references."""
    d = _obj(doc, "cluster")
    _check_version(d, "cluster")
    if model is None:
        if "model" not in d:
            raise InvalidInput("cluster.model: missing (pass a model, e.g. --model smollm2-135m)")
        model = parse_model(d["model"])
    raw_nodes = d.get("nodes")
    if not isinstance(raw_nodes, list):
        raise InvalidInput(f"cluster.nodes: expected a list, got {_jtype(raw_nodes)}")
    nodes = [parse_node(n, f"cluster.nodes[{i}]") for i, n in enumerate(raw_nodes)]
    seen: set[str] = set()
    for n in nodes:
        if n.id in seen:
            raise InvalidInput(f"cluster.nodes: duplicate node id {n.id!r}")
        seen.add(n.id)
    links = parse_links(d.get("links"))
    regions = sorted({n.region for n in nodes})
    for i, a in enumerate(regions):
        for b in regions[i + 1:]:
            if (a, b) not in links.rtt_ms:
                raise InvalidInput(f"cluster.links.rtt_ms: no RTT between regions {a!r} and {b!r}")
    return Snapshot(model=model, nodes=tuple(nodes), links=links, params=parse_params(d.get("params")))


def parse_plan(doc: Any) -> Plan:
    """An allocation document (from any solver) → `Plan`. Coverage is checked by `check_plan`."""
    d = _obj(doc, "allocation")
    _check_version(d, "allocation")
    model = parse_model(d.get("model"), "allocation.model")
    reps = d.get("replicas")
    if not isinstance(reps, list):
        raise InvalidInput(f"allocation.replicas: expected a list, got {_jtype(reps)}")
    replicas = []
    for i, r in enumerate(reps):
        stages_doc = _obj(r, f"allocation.replicas[{i}]").get("stages")
        if not isinstance(stages_doc, list) or not stages_doc:
            raise InvalidInput(f"allocation.replicas[{i}].stages: expected a non-empty list")
        stages = []
        for j, s in enumerate(stages_doc):
            w = f"allocation.replicas[{i}].stages[{j}]"
            s = _obj(s, w)
            stages.append(Stage(node=_str(s, "node", w),
                                start=_num(s, "start", w, strict=False, integer=True),
                                end=_num(s, "end", w, integer=True)))
        replicas.append(Replica(stages=tuple(stages)))
    standby = d.get("standby", [])
    if not isinstance(standby, list) or not all(isinstance(x, str) for x in standby):
        raise InvalidInput("allocation.standby: expected a list of node ids")
    est = d.get("estimate", {})
    if not isinstance(est, dict) or not all(_finite(v) for v in est.values()):
        raise InvalidInput(f"allocation.estimate: expected an object of finite numbers, got {est!r}"[:300])
    return Plan(model=model, replicas=tuple(replicas), standby=tuple(standby),
                snapshot_hash=str(d.get("snapshot_hash", "")), solver=str(d.get("solver", "")),
                estimate={k: float(v) for k, v in est.items()})


def stage_memory_bytes(model: ModelSpec, stage: Stage) -> int:
    """Weight bytes a stage holds, with embedding and LM head counted as in the solver."""
    return stage.layers * model.layer_bytes + model.extra_bytes(stage.start == 0,
                                                                stage.end == model.layers)


def node_weight_budget(snapshot: Snapshot, node: NodeSpec) -> int:
    """Bytes a node may fill with weights: usable VRAM minus the KV reserve."""
    p = snapshot.params
    return int(node.vram_mib * MIB * p.memory_utilization) - p.kv_reserve_mib * MIB


def check_plan(plan: Plan, snapshot: Snapshot) -> list[str]:
    """Every violated invariant of `plan` against `snapshot`, as readable lines (empty if valid)."""
    problems: list[str] = []
    L = snapshot.model.layers
    if not plan.replicas:
        problems.append("the allocation has no replicas: nothing serves the model")
    if plan.model.layers != L:
        problems.append(f"model has {plan.model.layers} layers, snapshot's has {L}")
    nodes = {n.id: n for n in snapshot.nodes}
    used: dict[str, int] = {}
    for ri, rep in enumerate(plan.replicas):
        pos = 0
        for si, st in enumerate(rep.stages):
            if st.start != pos or st.end <= st.start:
                problems.append(f"replica {ri} stage {si} ({st.node}) covers [{st.start}, {st.end}) "
                                f"but layer {pos} is next")
            pos = max(pos, st.end)
            if st.node not in nodes:
                problems.append(f"replica {ri} stage {si}: unknown node {st.node!r}")
                continue
            if st.node in used:
                problems.append(f"node {st.node} holds more than one stage")
            used[st.node] = stage_memory_bytes(snapshot.model, st)
            if not nodes[st.node].available:
                problems.append(f"node {st.node} is not available")
        if pos != L:
            problems.append(f"replica {ri} ends at layer {pos}, not {L}")
    for nid, need in sorted(used.items()):
        if nid in nodes:
            budget = node_weight_budget(snapshot, nodes[nid])
            if need > budget:
                problems.append(f"node {nid}: weights {need / MIB:.0f} MiB exceed its budget "
                                f"{budget / MIB:.0f} MiB")
    return problems


def require_valid(plan: Plan, snapshot: Snapshot) -> None:
    problems = check_plan(plan, snapshot)
    if problems:
        raise InvalidPlan(problems)


def plan_from_epoch(snapshot: Snapshot, rows: list[tuple[str, int, int, int]],
                    snapshot_hash: str = "") -> Plan:
    """Rebuild a plan from on-chain epoch rows `(operator, model_id, start, end)`.

    Rows are chained into replicas deterministically (by start, then node id); since the router
    only needs the shards, any chaining serves requests the same. Rows that name an unknown
    operator or another model, or that cannot be chained into complete pipelines, are refused.
    """
    by_op = {(n.operator or n.id): n.id for n in snapshot.nodes}
    L = snapshot.model.layers
    problems = []
    shards: list[Stage] = []
    for op, model_id, start, end in rows:
        if model_id != snapshot.model.model_id:
            problems.append(f"row for {op}: model {model_id}, snapshot's is {snapshot.model.model_id}")
        elif op not in by_op:
            problems.append(f"row for unknown operator {op}")
        elif not 0 <= start < end <= L:
            problems.append(f"row for {op}: range [{start}, {end}) outside [0, {L})")
        else:
            shards.append(Stage(by_op[op], start, end))
    pending = sorted(shards, key=lambda s: (s.start, s.node))
    replicas = []
    while any(s.start == 0 for s in pending):
        chain = [next(s for s in pending if s.start == 0)]
        pending.remove(chain[0])
        while chain[-1].end < L:
            nxt = next((s for s in pending if s.start == chain[-1].end), None)
            if nxt is None:
                break
            chain.append(nxt)
            pending.remove(nxt)
        if chain[-1].end < L:
            problems.append(f"shards {[(s.node, s.start, s.end) for s in chain]} stop at layer "
                            f"{chain[-1].end}")
        replicas.append(Replica(tuple(chain)))
    problems += [f"shard {s.node} [{s.start}, {s.end}) joins no pipeline" for s in pending]
    if problems:
        raise InvalidPlan(problems)
    used = {s.node for s in shards}
    return Plan(model=snapshot.model, replicas=tuple(replicas), snapshot_hash=snapshot_hash,
                standby=tuple(sorted(n.id for n in snapshot.nodes if n.available
                                     and n.id not in used)), solver="epoch")
