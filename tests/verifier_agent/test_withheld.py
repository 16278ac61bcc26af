"""Withheld inputs end to end on a real devnet (issue 14, attack 6, with real agents): the input
stage of a checked stage refuses every FETCH, but its agent opens the random spots on chain when
asked (it holds the rows, it serves none). Honest members that cannot get the rows reveal NO_INPUT
instead of abstaining (an abstaining member would be slashed as a non-revealer); NO_INPUT from
more members than stand with a verdict slashes the input stage although it opened its spots;
nobody else is slashed."""

from __future__ import annotations

import asyncio

import pytest

from contracts.verification import TaskStatus, VerdictKind
from devnet.process import running_devnet
from protocol.dataplane_errors import NotStored

from .world import Miner, NodeSpec, World, params

pytestmark = pytest.mark.slow

PROMPT = [5, 17, 99, 3, 250, 41, 7, 12]


def _withhold(node) -> None:
    def fetch(f):
        raise NotStored("rows withheld")  # (the stage holds them: its agent opens them on chain)

    node.server.stored.fetch = fetch


async def _run(model, tmp, url):
    world = World.deploy(url, model, tmp, params(committee_size=3))
    try:
        await world.start_nodes([NodeSpec((0, 4)), NodeSpec((4, 8)), NodeSpec((4, 8)), NodeSpec((4, 8)),
                                 NodeSpec((4, 8))])
        _withhold(world.nodes[0])
        ver = world.chain.verification
        for seq in range(1, 12):  # until the batch's randomness checks stage 1
            opened = await world.request_and_open(world.nodes[:2], PROMPT, 3, seq=seq)
            t = await asyncio.to_thread(ver.task, opened.task_id)
            if t.stage == 1:
                break
        else:
            raise AssertionError("the randomness never checked stage 1")
        world.start_agents(opened.open_block)
        t = await world.run_until(opened.task_id, lambda t: t.status not in (
            TaskStatus.VOTING, TaskStatus.OPENING), timeout_s=150)
        input_opened = await asyncio.to_thread(ver.input_opened, opened.task_id, 0)
        return world, opened, t, input_opened
    finally:
        await world.stop()


def test_an_input_stage_that_serves_no_rows_is_slashed_and_the_members_are_not(tiny_model, tmp_path):
    with running_devnet(tmp_path / "devnet") as dn, Miner(dn.url):
        world, opened, t, input_opened = asyncio.run(_run(tiny_model, tmp_path, dn.url))
        b = opened.open_block
        reveals = world.events("VerdictRevealed", b)
        notes = [e for n in world.nodes if n.agent for e in n.agent.events]
        assert reveals and all(e.args["kind"] == VerdictKind.NO_INPUT for e in reveals), (t, notes)
        assert input_opened  # the withholder's agent opened its spots: it holds the rows
        slashed = world.events("StageSlashed", b)
        assert [(e.args["stage_operator"], e.args["reason"]) for e in slashed] == [
            (world.nodes[0].operator, "verification: inputs withheld")]
        assert not world.events("MemberSlashed", b)  # nobody who reported NO_INPUT loses
        assert t.status is TaskStatus.UNRESOLVED  # nothing to judge the checked stage on
        notes = [e for n in world.nodes[2:] if n.agent for e in n.agent.events]
        assert any("NO_INPUT" in e for e in notes), notes
