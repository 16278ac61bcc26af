"""The verification game end to end with agents on a real devnet (DESIGN §5, issue 6 item 7):
a worker serving a perturbed model is caught, slashed and its client refunded, and a lazy verifier
on that task loses stake; on an honest task an always-accuse verifier and a non-revealer lose
stake while the honest members keep theirs and the task passes."""

from __future__ import annotations

import asyncio

import pytest

from contracts.verification import TaskStatus
from devnet.testing import running_devnet
from node.verification.policy import Policy

from .world import ETH, Miner, NodeSpec, World, params

pytestmark = pytest.mark.slow

PROMPT = [5, 17, 99, 3, 250, 41, 7, 12]
FINAL = (TaskStatus.PASSED, TaskStatus.UNRESOLVED, TaskStatus.REFUNDED)


@pytest.fixture(scope="module")
def devnet(tmp_path_factory):
    with running_devnet(tmp_path_factory.mktemp("devnet")) as dn, Miner(dn.url):
        yield dn.url


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
        _play(tiny_model, tmp_path, devnet, params(committee_size=3), specs))
    b = opened.open_block
    assert t.status is TaskStatus.REFUNDED  # FRAUD, then a keeper agent refunded the client
    (fin,) = world.events("TaskFinalized", b)
    assert (fin.args["status"], fin.args["passes"], fin.args["fails"]) == (TaskStatus.FRAUD, 1, 2)
    cheat = next(n for n in world.nodes[:2] if n.operator == t.stage_operator)
    slashed = sum(e.args["amount"] for e in world.events("StageSlashed", b))
    assert slashed == ETH // 2 and stakes[cheat.operator] == ETH - ETH // 2
    (refund,) = world.events("ClientRefunded", b)
    assert refund.args["charge"] == opened.charge
    assert world.chain.payments.deposit_of(opened.client.address) == opened.deposit_before_refund + opened.charge
    lazy, honest = world.nodes[4], world.nodes[2:4]
    (ms,) = world.events("MemberSlashed", b)
    assert ms.args["member"] == lazy.operator and "against the outcome" in ms.args["reason"]
    assert stakes[lazy.operator] == ETH - ETH // 10
    assert all(stakes[n.operator] == ETH for n in honest)


def test_an_accusing_verifier_and_a_non_revealer_lose_on_an_honest_task(tiny_model, tmp_path, devnet):
    specs = [NodeSpec((0, 4)), NodeSpec((4, 8)), NodeSpec((0, 4)), NodeSpec((4, 8)),
             NodeSpec((4, 8), Policy.ACCUSE), NodeSpec((0, 4), Policy.SILENT)]
    world, opened, t, stakes = asyncio.run(
        _play(tiny_model, tmp_path, devnet, params(committee_size=4, reveal_blocks=25), specs))
    b = opened.open_block
    assert t.status is TaskStatus.PASSED
    (fin,) = world.events("TaskFinalized", b)
    assert (fin.args["passes"], fin.args["fails"]) == (2, 1)
    accuser, silent = world.nodes[4], world.nodes[5]
    reasons = {e.args["member"]: e.args["reason"] for e in world.events("MemberSlashed", b)}
    assert set(reasons) == {accuser.operator, silent.operator}
    assert "against the outcome" in reasons[accuser.operator]
    assert "not revealed" in reasons[silent.operator]
    assert stakes[accuser.operator] == stakes[silent.operator] == ETH - ETH // 10
    assert all(stakes[n.operator] == ETH for n in world.nodes[:4])
    assert not world.events("StageSlashed", b)
