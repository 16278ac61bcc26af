"""Deviations from honest play as strategies against the real contracts (titanoboa, in process).

Each strategy is played over many tasks with the deployed verification parameters
(`DeployParams().verification`, except that every record is sampled so each task is checked);
the deviator's balance change is measured on chain (stake + unbonding + prover credits +
earnings) against the same role's change under honest play, then weighted by the deployed sample
rate p and credited with the compute the deviation saves (inference: `--compute-cost-fraction` of
the stage's share; verification: `--verify-cost-fraction` of that). Printed per strategy:
`profit_vs_honest_<name>: W` (wei per request, expected), then `deviations_profitable: N`,
`honest_losses_wei: N` (what honest nodes, the client and the honest gateway lost, measured),
`escrow_stuck: N` (batches still escrowed once every task's hard deadline passed) and the
`params check` equilibrium margin for a request of the same charge.

    .venv/bin/python bench/adversarial.py [--quick] [--tasks N]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import boa  # noqa: E402

from contracts.batch import Pipeline, Stage  # noqa: E402
from contracts.deploy import DeployParams  # noqa: E402
from contracts.verification import TaskStatus  # noqa: E402
from tests.support.boa import ETH, mine  # noqa: E402
from tests.support.game import (  # noqa: E402
    CHARGE,
    WINDOW,
    Game,
    Plan,
)
from verifier.params import MarginInputs, equilibrium_margin  # noqa: E402

BPS = 10_000
DEPLOYED = DeployParams().verification
PLAYED = replace(DEPLOYED, sample_bps=BPS)  # every record checked; weighted by p below
P = DEPLOYED.sample_bps / BPS


WITHHOLDERS = ("withholder", "spot_opener")


@dataclass
class Outcome:
    deviator_delta: int = 0  # wei, summed over the sampled tasks
    honest_loss: int = 0
    stuck: int = 0
    tasks: int = 0


def operators_share() -> float:
    return (BPS - DeployParams().protocol_fee_bps - DeployParams().verifier_share_bps) / BPS


def worth(g: Game, owners) -> int:
    return sum(g.worth(o) for o in owners)


def settle_all(g: Game, reqs) -> int:
    """Let every hard deadline pass, expire what is left, release every batch; count failures."""
    mine(WINDOW + 2)
    now_deadline = max([g.ver.tasks(t).deadline for t in range(1, g.ver.task_count() + 1)] or [0])
    while boa.env.evm.patch.block_number <= now_deadline:
        mine(10)
    stuck = 0
    for t in range(1, g.ver.task_count() + 1):
        if g.ver.tasks(t).status in (TaskStatus.VOTING, TaskStatus.OPENING, TaskStatus.DRAWING):
            g.ver.expire(t)
    for req in reqs:
        if req.batch_id == 0:
            continue
        try:
            g.s.pay.release(req.batch_id, [req.pipeline.as_tuple()])
        except Exception:  # noqa: BLE001 - a batch that cannot be released is what we count
            stuck += 1
    return stuck


def play(strategy: str, tasks: int) -> Outcome:
    """Play `tasks` sampled requests where one party follows `strategy` (or "honest")."""
    g = Game(nodes=16, params=PLAYED)
    s = g.s
    stage_owners = [s.owners[0], s.owners[1]]
    out = Outcome(tasks=0)
    if strategy in ("framing_gateway", "shielding_gateway"):
        with boa.env.prank(g.gateway):  # enough bond to keep settling while it is slashed
            s.pay.bond_gateway(value=(tasks + 2) * DEPLOYED.gateway_slash_wei)
    before = {o: g.worth(o) for o in s.owners}
    gw_before = s.pay.gateway_bond(g.gateway) + s.pay.balances(g.gateway)
    client_before = s.pay.deposits(g.client)
    reqs = []
    deviators: set[str] = set()
    member_delta = 0
    charged = 0
    for i in range(tasks):
        forge = None
        if strategy in ("forge_rows", "forge_chunk", "forge_tokens", "exit_before_conviction",
                        "shielding_gateway"):
            forge = {0: strategy.removeprefix("forge_"), 1: strategy.removeprefix("forge_")}
            if strategy in ("exit_before_conviction", "shielding_gateway"):
                forge = {0: "rows", 1: "rows"}
            deviators |= set(stage_owners)
        elif strategy == "framing_input":
            # stage 0 computes honestly and settles its true rows but sent stage 1 other ones
            # (and, to get stage 1 to commit at all, signed a commitment to what it sent): stage
            # 1's output disagrees with a re-execution from the settled rows
            forge = {1: "rows"}
            deviators.add(s.owners[0])
        elif strategy == "lazy_verifier" and i % 10 == 0:
            forge = {0: "rows", 1: "rows"}  # the world's background cheat rate: 1 in 10
            deviators |= set(stage_owners)  # (those cheating stages are not honest parties)
        if strategy == "framing_gateway":
            victim = s.operators[-1]
            pipe = Pipeline(s.model_id, (Stage(victim, 0, 8),))
            req = g.settle(pipeline=pipe)
            reqs.append(req)
            charged += req.record.charge
            mine(DEPLOYED.randomness_delay + DEPLOYED.open_task_blocks + 2)
            g.void_unopened(req, s.owners[5])  # any watcher
            out.tasks += 1
            continue
        req = g.settle(forge=forge)
        if req.batch_id == 0:
            continue  # a jailed (convicted) stage: nothing more to settle through it
        if strategy in WITHHOLDERS:
            while g.chosen_stage(req) != 1:  # a check of stage 1: stage 0 supplies its input
                reqs.append(req)
                charged += req.record.charge
                g.open_task(req, wait=False)  # (checked by an honest committee elsewhere)
                req = g.settle(forge=forge)
        reqs.append(req)
        charged += req.record.charge
        out.tasks += 1
        if strategy == "exit_before_conviction":
            for o in stage_owners:
                if s.reg.nodes(o).stake > 0:
                    with boa.env.prank(o):
                        s.reg.request_unbond(s.reg.nodes(o).stake)
        if strategy == "shielding_gateway":
            mine(DEPLOYED.randomness_delay + DEPLOYED.open_task_blocks + 2)
            g.void_unopened(req, s.owners[5])
            continue
        if strategy == "framing_input" and g.chosen_stage(req) == 1:
            tid = g.open_task(req, wait=False)
            sc, sig = g.equivocation(req, 0)  # what honest stage 1 kept at COMMIT
            with boa.env.prank(s.operators[1]):
                g.opener.blame_input(tid, sc.as_tuple(), sig)
            assert g.ver.tasks(tid).status == TaskStatus.UNRESOLVED
            continue
        if strategy == "grinding":
            mine(2)
            with boa.env.anchor():
                tid0 = g.open_task(req, wait=False)
                honest_seats = g.round_members(tid0)
            for o in s.owners[8:12]:
                with boa.env.prank(o):
                    s.reg.add_stake(value=ETH)
            tid = g.open_task(req, wait=False)
            assert g.round_members(tid) == honest_seats, "grinding moved the committee"
            deviators |= set(s.owners[8:12])
        elif strategy in WITHHOLDERS:
            tid = g.open_task(req, wait=False)
        else:
            tid = g.open_task(req)
        members = g.round_members(tid)
        dev = g.ver.member(tid, members[0]).owner
        coalition = [g.ver.member(tid, op).owner for op in members]
        behaviour = {
            "lazy_verifier": "lazy_copy", "garbage_pass": "garbage_pass",
            "always_accuse": "accuse", "spoiler": "spoiler", "silent_verifier": "silent",
            "no_reveal": "no_reveal", "no_open": "no_open", "false_no_input": "no_input",
        }.get(strategy)
        plan = Plan(cheat=forge is not None, behaviours={0: behaviour} if behaviour else {})
        if strategy == "framing_committee":  # the coalition holds every seat of round 0
            plan = Plan(behaviours={i: "accuse" for i in range(len(members))})
            c_before = worth(g, coalition)
        m_before = g.worth(dev)
        if strategy in WITHHOLDERS:
            # the input stage refuses every FETCH; "withholder" also opens nothing on chain,
            # "spot_opener" opens the spots it is asked for (it holds the rows, serves none)
            # (a round where most report NO_INPUT escalates; every round is starved the same way)
            for _ in range(PLAYED.max_rounds):
                seats = len(g.round_members(tid))
                plan = Plan(behaviours={i: "no_input" for i in range(seats)})
                g.play_round(tid, req, plan, open_input=strategy == "spot_opener")
                if g.finalize(tid) != TaskStatus.DRAWING:
                    break
                mine(DEPLOYED.randomness_delay + 1)
                g.ver.next_round(tid)
            deviators.add(s.owners[0])
        else:
            # the deviator sits in round 0; a larger committee drawn later (a split, or a
            # conviction being confirmed) is honest
            status = g.run(tid, req, plan, rounds=1)
            if status in (TaskStatus.VOTING, TaskStatus.DRAWING):
                status = g.run(tid, req, Plan(cheat=plan.cheat))
            assert status != TaskStatus.FRAUD or forge is not None, "an honest stage convicted"
        if strategy == "framing_committee":
            member_delta += worth(g, coalition) - c_before
            deviators |= set(coalition)
            continue
        member_delta += g.worth(dev) - m_before
        if behaviour:
            deviators.add(dev)
    out.stuck = settle_all(g, reqs)
    # deltas
    if strategy in ("honest_stage",):
        out.deviator_delta = worth(g, stage_owners) - sum(before[o] for o in stage_owners)
    elif strategy in ("forge_rows", "forge_chunk", "forge_tokens", "exit_before_conviction",
                      "shielding_gateway", *WITHHOLDERS, "framing_input"):
        who = stage_owners if strategy not in (*WITHHOLDERS, "framing_input") else [s.owners[0]]
        out.deviator_delta = worth(g, who) - sum(before[o] for o in who)
        if strategy == "shielding_gateway":
            out.deviator_delta += (s.pay.gateway_bond(g.gateway) + s.pay.balances(g.gateway)
                                   - gw_before)
    elif strategy == "framing_gateway":
        # the attacker is its own client (a self-made key): what it paid, what it kept
        out.deviator_delta = (s.pay.gateway_bond(g.gateway) + s.pay.balances(g.gateway)
                              - gw_before) + (s.pay.deposits(g.client) - client_before)
    elif strategy == "grinding":
        out.deviator_delta = 0  # measured above: identical committee, identical outcome
    else:
        out.deviator_delta = member_delta
    honest = [o for o in s.owners if o not in deviators]
    out.honest_loss = sum(max(0, before[o] - g.worth(o)) for o in honest)
    if strategy not in ("framing_gateway",):
        # the client: charged only for work that stood (refunds make convicted work free)
        client_paid = client_before - s.pay.deposits(g.client)
        out.honest_loss += max(0, client_paid - charged)
    return out


STAGE = ["forge_rows", "forge_chunk", "forge_tokens", "exit_before_conviction",
         "shielding_gateway", "withholder", "spot_opener", "framing_input"]
VERIFIER = ["lazy_verifier", "garbage_pass", "always_accuse", "spoiler", "silent_verifier",
            "no_reveal", "no_open", "false_no_input"]
OTHER = ["framing_gateway", "framing_committee", "grinding"]
SKIPS_INFERENCE = {"forge_rows", "forge_chunk", "forge_tokens", "exit_before_conviction",
                   "shielding_gateway"}
SKIPS_VERIFY = {"lazy_verifier", "garbage_pass", "always_accuse", "spoiler", "silent_verifier",
                "false_no_input"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 tasks per strategy instead of 12")
    ap.add_argument("--tasks", type=int, default=None)
    ap.add_argument("--compute-cost-fraction", type=float, default=0.5)
    ap.add_argument("--verify-cost-fraction", type=float, default=0.01)
    args = ap.parse_args()
    n = args.tasks or (3 if args.quick else 12)
    t0 = time.time()
    stage_pay = CHARGE * operators_share() / 2  # one of two stages
    inference_cost = args.compute_cost_fraction * stage_pay
    verify_cost = args.verify_cost_fraction * inference_cost
    honest_stage = play("honest_stage", n)
    honest_member = play("honest_member", n)
    profits: dict[str, float] = {}
    losses = honest_stage.honest_loss + honest_member.honest_loss
    stuck = honest_stage.stuck + honest_member.stuck
    stage_base = honest_stage.deviator_delta / honest_stage.tasks
    member_base = honest_member.deviator_delta / honest_member.tasks
    for name in STAGE + VERIFIER + OTHER:
        o = play(name, n)
        losses += o.honest_loss
        stuck += o.stuck
        k = max(o.tasks, 1)
        if name in STAGE:
            base = stage_base if name not in (*WITHHOLDERS, "framing_input") else stage_base / 2
            # sampled: the measured difference; not sampled: paid like honest work
            sampled = o.deviator_delta / k - base
            profit = P * sampled + (2 * inference_cost if name in SKIPS_INFERENCE else 0)
        elif name in VERIFIER:
            sampled = o.deviator_delta / k - member_base
            profit = P * (sampled + (verify_cost if name in SKIPS_VERIFY else 0))
        elif name == "framing_committee":
            # every seat of a committee frames the honest stage (it must hold the confirming
            # committee too); against the same seats playing honestly, compute saved
            seats = DEPLOYED.committee_size
            profit = P * (o.deviator_delta / k - seats * member_base + seats * verify_cost)
        elif name == "framing_gateway":
            # sampled: voided (bond slashed); not sampled: its charge paid to the framed node
            profit = P * (o.deviator_delta / k) + (1 - P) * (-CHARGE)
        else:
            profit = 0.0
        profits[name] = profit
        print(f"profit_vs_honest_{name}: {profit:.0f}")
    profitable = [k for k, v in profits.items() if v > 0]
    print(f"deviations_profitable: {len(profitable)}")
    print(f"honest_losses_wei: {losses}")
    print(f"escrow_stuck: {stuck}")
    d = DeployParams()
    m = equilibrium_margin(MarginInputs(DEPLOYED.sample_bps, DEPLOYED.stage_slash_wei,
                                        d.protocol_fee_bps, d.verifier_share_bps, 2, CHARGE,
                                        compute_cost_fraction=args.compute_cost_fraction))
    print(f"params_check_margin_wei: {m.margin_wei:.0f}")
    print(f"summary: {len(profits)} deviations over {n} checked tasks each (p = {P}, charge "
          f"{CHARGE} wei, stage slash {DEPLOYED.stage_slash_wei} wei); profitable: "
          f"{', '.join(profitable) or 'none'}; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
