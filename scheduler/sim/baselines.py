"""The baseline placement the simulator compares against: greedy fill by memory.

`greedy_plan` is what deployed systems do: take nodes largest-VRAM first and fill each with as many
layers as its memory allows, closing a pipeline when the last layer is placed; speed, KV room and
regions are ignored, and a final incomplete pipeline stays unused. Served with round-robin over
these fixed pipelines (`policies.RoundRobin`), it is the "greedy + RR" baseline of the bench.
"""

from __future__ import annotations

from scheduler.allocate import diagnose
from scheduler.costs import ALONE, FIRST, LAST, MID, build_cluster
from scheduler.errors import CannotPlace
from scheduler.model import Plan, Replica, Snapshot, Stage

SOLVER = "greedy-fill-by-memory"


def greedy_plan(snapshot: Snapshot) -> Plan:
    c = build_cluster(snapshot)
    diagnose(c, snapshot)
    L = c.model.layers
    order = sorted(range(len(c)), key=lambda i: (-int(c.usable[i]), c.ids[i]))
    replicas: list[Replica] = []
    cur: list[Stage] = []
    pos = 0
    for i in order:
        nid = c.ids[i]
        if pos == 0 and int(c.cap[i, ALONE]) >= L:
            replicas.append(Replica((Stage(nid, 0, L),)))
            continue
        if pos == 0:
            k = min(int(c.cap[i, FIRST]), L - 1)
        elif int(c.cap[i, LAST]) >= L - pos:
            k = L - pos
        else:
            k = min(int(c.cap[i, MID]), L - pos - 1)
        if k < 1:
            continue
        cur.append(Stage(nid, pos, pos + k))
        pos += k
        if pos == L:
            replicas.append(Replica(tuple(cur)))
            cur, pos = [], 0
    if not replicas:
        raise CannotPlace("greedy placement completed no pipeline",
                          [f"{pos} of {L} layers placed before the nodes ran out"])
    used = {s.node for r in replicas for s in r.stages}
    return Plan(model=snapshot.model, replicas=tuple(replicas),
                standby=tuple(sorted(n.id for n in snapshot.nodes if n.id not in used)),
                snapshot_hash=snapshot.canonical_hash(), solver=SOLVER)


__all__ = ["greedy_plan", "MID"]
