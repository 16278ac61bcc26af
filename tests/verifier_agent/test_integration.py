"""The verification game end to end with agents on a real devnet (DESIGN §5, issue 6 item 7):
a worker serving a perturbed model is caught, slashed and its client refunded, and a lazy verifier
on that task loses stake; on an honest task an always-accuse verifier and a non-revealer lose
stake while the honest members keep theirs and the task passes. A member that cannot re-execute
retries until a margin before the commit deadline, then abstains (commits nothing) instead of
vouching, and the task is still judged by the members that checked; one whose inputs never come
reports NO_INPUT in time instead."""

from __future__ import annotations

import asyncio

import pytest

from contracts.verification import TaskStatus
from devnet.process import running_devnet
from node.verification.policy import Policy

from .world import ETH, Miner, NodeSpec, World, params

pytestmark = pytest.mark.slow

PROMPT = [5, 17, 99, 3, 250, 41, 7, 12]
FINAL = (TaskStatus.PASSED, TaskStatus.UNRESOLVED, TaskStatus.FRAUD, TaskStatus.REFUNDED)


@pytest.fixture(scope="module")
def devnet(tmp_path_factory):
    with running_devnet(tmp_path_factory.mktemp("devnet")) as dn, Miner(dn.url):
        yield dn.url


def _seated(world, block: int) -> set[str]:
    """Round 0's committee. The draw depends on the block hash and on which stage is checked
    (a stage of the pipeline that is neither the checked one nor its input may sit), so the
    tests seat every eligible node and read who sat."""
    (sel,) = world.events("CommitteeSelected", block)
    return set(sel.args["members"])


async def _play(model, tmp, url, vparams, specs, n_pipeline=2):
    world = World.deploy(url, model, tmp, vparams)
    try:
        await world.start_nodes(specs)
        head = await asyncio.to_thread(world.chain.block_number)
        world.start_agents(head)
        opened = await world.request_and_open(world.nodes[:n_pipeline], PROMPT, 4)
        t = await world.run_until(opened.task_id, lambda t: t.status in FINAL, timeout_s=120)
        stakes = {n.operator: world.chain.node_registry.node(n.owner.address).stake_wei for n in world.nodes}
        return world, opened, t, stakes
    finally:
        await world.stop()


def test_a_perturbed_worker_is_slashed_its_client_refunded_and_a_lazy_verifier_loses(
        tiny_model, tmp_path, devnet):
    specs = [NodeSpec((0, 4), perturb=0.02), NodeSpec((4, 8), perturb=0.02),  # both stages cheat
             NodeSpec((0, 4)), NodeSpec((4, 8)), NodeSpec((0, 4), Policy.LAZY)]
    world, opened, t, stakes = asyncio.run(
        _play(tiny_model, tmp_path, devnet, params(committee_size=4), specs))
    b = opened.open_block
    lazy = world.nodes[4]
    seated = _seated(world, b)
    assert lazy.operator in seated and len(seated) >= 3
    assert t.status is TaskStatus.FRAUD  # convicted; finalize refunds the client at once
    (fin,) = world.events("TaskFinalized", b)
    # the lazy member's PASS is slashed when the named leaf is judged, so it is not counted; every
    # other member (the pipeline's other stage too, when it sits) re-executed and accused
    assert (fin.args["status"], fin.args["passes"], fin.args["fails"]) == (
        TaskStatus.FRAUD, 0, len(seated) - 1)
    cheat = next(n for n in world.nodes[:2] if n.operator == t.stage_operator)
    slashed = sum(e.args["amount"] for e in world.events("StageSlashed", b))
    assert slashed == ETH // 2 and stakes[cheat.operator] == ETH - ETH // 2
    (refund,) = world.events("ClientRefunded", b)
    assert refund.args["charge"] == opened.charge
    assert world.chain.payments.deposit_of(opened.client.address) == opened.deposit_before_refund + opened.charge
    honest = world.nodes[2:4]
    (ms,) = world.events("MemberSlashed", b)
    assert ms.args["member"] == lazy.operator
    assert any(r in ms.args["reason"] for r in ("pass contradicted by evidence", "against the outcome"))
    assert stakes[lazy.operator] == ETH - ETH // 10
    assert all(stakes[n.operator] == ETH for n in honest)


def test_an_accusing_verifier_and_a_non_revealer_lose_on_an_honest_task(tiny_model, tmp_path, devnet):
    specs = [NodeSpec((0, 4)), NodeSpec((4, 8)), NodeSpec((0, 4)), NodeSpec((4, 8)),
             NodeSpec((4, 8), Policy.ACCUSE), NodeSpec((0, 4), Policy.SILENT)]
    world, opened, t, stakes = asyncio.run(
        _play(tiny_model, tmp_path, devnet, params(committee_size=5, reveal_blocks=25), specs))
    b = opened.open_block
    accuser, silent = world.nodes[4], world.nodes[5]
    seated = _seated(world, b)
    assert {accuser.operator, silent.operator} <= seated and len(seated) >= 4
    assert t.status is TaskStatus.PASSED
    (fin,) = world.events("TaskFinalized", b)
    # the accuser's FAIL is slashed, not counted; the silent member never revealed
    assert (fin.args["passes"], fin.args["fails"]) == (len(seated) - 2, 0)
    reasons = {e.args["member"]: e.args["reason"] for e in world.events("MemberSlashed", b)}
    assert set(reasons) == {accuser.operator, silent.operator}
    assert any(r in reasons[accuser.operator] for r in (
        "named leaf is not faulty", "named leaf outweighed by evidence", "against the outcome"))
    assert "not revealed" in reasons[silent.operator]
    assert stakes[accuser.operator] == stakes[silent.operator] == ETH - ETH // 10
    assert all(stakes[n.operator] == ETH for n in world.nodes[:4])
    assert not world.events("StageSlashed", b)


def test_a_member_that_cannot_re_execute_abstains_and_the_cheat_is_still_convicted(tiny_model, tmp_path, devnet):
    # Both pipeline stages cheat; of the three committee members one has no stage server at all.
    # (A leaf is shown wrong by at least two pieces of evidence outnumbering the stage's own, so
    # two honest members remain.)
    specs = [NodeSpec((0, 4), perturb=0.02), NodeSpec((4, 8), perturb=0.02),
             NodeSpec((0, 4)), NodeSpec((4, 8), rerun=False), NodeSpec((4, 8))]
    world, opened, t, stakes = asyncio.run(
        _play(tiny_model, tmp_path, devnet,
              params(committee_size=4, commit_blocks=40, reveal_blocks=20), specs))
    b = opened.open_block
    blind = world.nodes[3]
    seated = _seated(world, b)
    assert blind.operator in seated and len(seated) >= 3
    honest = [n for n in world.nodes if n.operator in seated - {blind.operator}]
    assert t.status is TaskStatus.FRAUD
    (fin,) = world.events("TaskFinalized", b)
    assert (fin.args["status"], fin.args["passes"], fin.args["fails"]) == (TaskStatus.FRAUD, 0, len(honest))
    assert {e.args["member"] for e in world.events("VerdictCommitted", b)} == {n.operator for n in honest}
    assert any("abstained" in e for e in blind.agent.events), blind.agent.events
    (ms,) = world.events("MemberSlashed", b)  # the price of abstaining, and nothing else
    assert ms.args["member"] == blind.operator and "not revealed" in ms.args["reason"]
    assert all(stakes[n.operator] == ETH for n in honest) and stakes[blind.operator] == ETH - ETH // 10


async def _job_without_agents(model, tmp, url):
    """A served, settled, opened request on an honest pipeline; a member's job on its stage 1,
    run directly: first with a shard load that fails once (retried), then with stage 0 gone."""
    from dataclasses import replace

    from node.verification.jobs import Abstention, JobContext, prepare_vote
    from node.verification.rerun import Listener, ServerPool
    from node.verification.task_data import load_task_data
    from tests.support.agent import make_server

    world = World.deploy(url, model, tmp, params())
    listener = await Listener().start()
    try:
        await world.start_nodes([NodeSpec((0, 4)), NodeSpec((4, 8)), NodeSpec((0, 4))])
        opened = await world.request_and_open(world.nodes[:2], PROMPT, 4)
        (ev,) = world.events("TaskOpened", opened.open_block)
        td = await asyncio.to_thread(load_task_data, world.chain, opened.task_id, 1, ev.tx_hash)
        td = replace(td, stage=1)  # whichever stage the draw picked: stage 1 has inputs from stage 0
        member = world.nodes[2]
        loads = []

        def build(layers):  # the first load fails as the demo's racing `transformers` import did
            loads.append(layers)
            if len(loads) == 1:
                raise ImportError("cannot import name 'AutoModelForCausalLM' from 'transformers'")
            return make_server(model, layers, member.key, member.server.directory, tmp / "rerun",
                               chain_id=world.chain.chain_id)

        pool = ServerPool(lambda: [member.server], build)

        async def job():
            head = await asyncio.to_thread(world.chain.block_number)
            ctx = JobContext(world.chain, world.chain.chain_id, member.key, pool, listener, 30.0,
                             deadline_block=head + 20, margin_blocks=3, backoff_s=(0.2, 0.8))
            return ctx, await prepare_vote(ctx, td, 0, Policy.HONEST)

        _, recovered = await job()
        await world.nodes[0].server.stop()  # stage 0: its rows, the job's inputs, are gone
        ctx, abstained = await job()
        head = await asyncio.to_thread(world.chain.block_number)
        await pool.stop()
        return recovered, abstained, loads, ctx, head, Abstention
    finally:
        await listener.stop()
        await world.stop()


def test_a_failed_load_is_retried_and_without_inputs_the_member_reports_no_input(
        tiny_model, tmp_path, devnet):
    recovered, no_input, loads, ctx, head, Abstention = asyncio.run(
        _job_without_agents(tiny_model, tmp_path, devnet))
    vote, tree = recovered  # the honest stage passes once the retried load worked
    assert vote.verdict is True and vote.output_root == tree.root and len(loads) == 2
    assert "re-execution failed at first; succeeded on attempt 2" in vote.note
    # stage 0 is gone: the member says NO_INPUT (abstaining would cost it a non-revealer's slash)
    assert not isinstance(no_input, Abstention)
    vote2, _ = no_input
    assert vote2.kind_code == 4 and "no input" in vote2.note
    tries = int(vote2.note.split("inputs unavailable after ")[1].split(" ")[0])
    assert tries >= 3 and "claimed rows unusable" not in vote2.note
    # it kept trying for the first two thirds of the 20-block commit window, leaving the rest to
    # commit its NO_INPUT
    assert ctx.deadline_block - 20 // 3 - 2 <= head < ctx.deadline_block
