"""No straggler replicas (phase 1's last step): choose among a plan and its variants by how they
serve under both routings.

A load-aware router serves the summed throughput of the replicas; strict round robin gives every
replica the same share of requests, so the slowest replica sets the finish time. `candidates`
lists the plan and its variants without its slowest replicas (their nodes standby), `regrow`
offers the freed nodes back to the kept replicas (a slow node paired with fast ones), and
`choose` keeps the option whose worse routing comes closest to its target share of the best.
"""

from __future__ import annotations

from scheduler.costs import MID, Cluster
from scheduler.group import Built, augment

# The share of the best plan each routing should keep. The load-aware router is what serves; a
# plan may give up at most 4 % of its estimated router throughput for round robin's sake. 0.95
# let a trade priced at 4.4 % through that cost 6.6 % in the simulator (llama3-8b/apple/16/seed4:
# M3-Max + M4-Pro pairs rated ~10 % above what they serve; 3.1 % once the LM head was priced);
# 0.97 and above keep every straggler of llama3-8b/datacenter/40/seed2 (0.97 since the head is
# priced: 0.830 vs 0.826), where the summed throughput overrates a plan whose slow replicas set a
# short batch's finish time (the standby plan serves 1.3–1.6× more under the router). The rule
# sits near an edge there either way: what a batch's tail costs is not in `rates`.
# Both are regression tests in `tests/scheduler/test_choose.py`. Round robin's is looser (0.75):
# a slower replica still adds to what the router serves, and dropping it for round robin's sake
# beyond this cost more than it saved over the bench's generated clusters (0.9 and 0.6 were worse).
ROUTER_TARGET, RR_TARGET = 0.96, 0.75


def rates(built: list[Built]) -> tuple[float, float]:
    """(load-aware, round-robin) throughput of a plan: the summed replica throughput, and the
    replicas × the slowest one (round robin gives every replica the same share of requests, so
    the slowest sets the finish time)."""
    if not built:
        return 0.0, 0.0
    xs = [b[2].throughput for b in built]
    return sum(xs), len(xs) * min(xs)


def plan_value(built: list[Built]) -> float:
    """The summed throughput, for ranking plans that are equally robust."""
    return rates(built)[0]


def candidates(c: Cluster, built: list[Built], rest: list[int]
               ) -> list[tuple[list[Built], list[int]]]:
    """The plan and its straggler-free variants: without its slowest replicas (their nodes
    standby), each listed only if its round robin beats every longer one's."""
    ranked = sorted(built, key=lambda b: (-b[2].throughput, c.ids[b[0][0]]))
    out = [(built, rest)]
    best_q = rates(built)[1]
    for n in range(len(ranked) - 1, 0, -1):
        q = ranked[n - 1][2].throughput * n
        if q <= best_q * (1 + 1e-9):
            continue
        best_q = q
        out.append((ranked[:n], sorted({i for b in ranked[n:] for i in b[0]} | set(rest))))
    return out


REGROW_MAX = 32  # freed nodes offered back to the kept replicas (fastest first)


def regrow(c: Cluster, kept: list[Built], freed: list[int]) -> tuple[list[Built], list[int]]:
    """Offer the nodes a straggler-free variant left standby to its replicas (`augment`: a slow
    node paired with fast ones where it adds KV room or layers), the `REGROW_MAX` fastest."""
    able = sorted((i for i in freed if int(c.cap[i, MID]) >= 1),
                  key=lambda i: (float(c.tau[i]), c.ids[i]))
    grown, unused = augment(c, kept, able[:REGROW_MAX])
    return grown, sorted(set(unused) | set(freed) - {i for b in grown for i in b[0]})


def choose(options: list[tuple[list[Built], list[int]]]) -> tuple[list[Built], list[int]]:
    """The option whose worse routing comes closest to its target share of the best option
    under that routing (no straggler replicas unless the load-aware gain pays for them)."""
    both = [rates(b) for b, _ in options]
    top_s = max(s for s, _ in both) or 1.0
    top_q = max(q for _, q in both) or 1.0
    score = [(min(s / top_s / ROUTER_TARGET, q / top_q / RR_TARGET), s) for s, q in both]
    j = max(range(len(options)), key=lambda j: (score[j][0] - 1e-9 * j, score[j][1]))
    return options[j]
