"""The agents on a real devnet: a sampled request on a 2-stage tiny pipeline is checked by a
committee of agents (one re-executing on its own server, one on a server it loads for the range),
which commit, reveal and open on their own; the checked stage's agent opens its rows; keepers close
and finalize. An honest pipeline ends PASSED with nobody slashed — also when a member's node
restarts between its commit and its reveal (the new agent finds the task and the salt on disk), and
when a member's node was down when the task opened (its agent, started later, looks back for it)."""

from __future__ import annotations

import asyncio

import pytest

from contracts.verification import TaskStatus, VerdictKind
from devnet.process import running_devnet
from node.verification.policy import Policy

from .world import Miner, NodeSpec, World, params

pytestmark = pytest.mark.slow

PROMPT = [5, 17, 99, 3, 250, 41, 7, 12]


async def _honest(model, tmp, url):
    world = World.deploy(url, model, tmp, params(committee_size=3))  # every eligible node sits
    try:
        # Node 3's first agent commits but never reveals (it "crashes" after committing) ...
        await world.start_nodes([NodeSpec((0, 4)), NodeSpec((4, 8)), NodeSpec((0, 4)),
                                 NodeSpec((4, 8), Policy.SILENT)])
        head = await asyncio.to_thread(world.chain.block_number)
        for i in (0, 1, 3):
            world.start_agent(i, head)
        opened = await world.request_and_open(world.nodes[:2], PROMPT, 4)
        # Node 2 was down when the task opened: its agent starts afterwards with no start block
        # and no saved cursor, and must find the task by looking back.
        late = world.start_agent(2, None)
        restarted = world.nodes[3]
        ver = world.chain.verification
        await world.run_until(opened.task_id,
                              lambda t: ver.member(t.task_id, restarted.operator).commitment != bytes(32))
        # ... and its node comes back with an honest agent that never saw the TaskOpened event.
        later = await asyncio.to_thread(world.chain.block_number)
        agent = world.start_agent(3, later + 1, Policy.HONEST)
        t = await world.run_until(opened.task_id, lambda t: t.status not in (TaskStatus.VOTING,
                                                                               TaskStatus.OPENING))
        return world, opened, t, agent, late
    finally:
        await world.stop()


def test_an_honest_sampled_request_is_checked_by_agents_and_passes(tiny_model, tmp_path):
    with running_devnet(tmp_path / "devnet") as dn, Miner(dn.url):
        world, opened, t, restarted, late = asyncio.run(_honest(tiny_model, tmp_path, dn.url))
        assert t.status is TaskStatus.PASSED
        # keepers do not race: four agents closed and finalized, and no keeper call reverted
        ver = world.chain.verification
        failed = world.chain.rpc.failed_transactions(opened.open_block, world.chain.block_number())
        keeper = [f for f in failed if (f["to"] or "").lower() == ver.address.lower()]
        assert keeper == [], [ver.decode_call(bytes.fromhex(f["input"][2:]))[0] for f in keeper]
        b = opened.open_block
        # which stage is checked is drawn: the pipeline's other stage sits too when stage 0 is
        (sel,) = world.events("CommitteeSelected", b)
        members = set(sel.args["members"])
        assert {n.operator for n in world.nodes[2:]} <= members
        reveals = world.events("VerdictRevealed", b)
        assert {e.args["member"] for e in reveals} == members
        assert all(e.args["kind"] == VerdictKind.PASS for e in reveals)
        opened_by = {e.args["party"] for e in world.events("ChunksOpened", b)}
        assert opened_by == members | {t.stage_operator}  # the stage's own agent opened its rows
        assert not world.events("MemberSlashed", b) and not world.events("StageSlashed", b)
        (fin,) = world.events("TaskFinalized", b)
        assert (fin.args["passes"], fin.args["fails"]) == (len(members), 0)
        # Each member's output root is its own re-execution's (never a copy of the stage's root).
        assert all(e.args["output_root"] != t.stage_commit.root for e in reveals)
        # The restarted agent revealed the vote its predecessor committed, from the state file.
        assert any("revealed OK" in e for e in restarted.events)
        assert not any("verdict" in e for e in restarted.events)  # it did not re-run the job
        # The agent that started after the task opened caught up on it, voted and revealed, and
        # left its cursor past the blocks it read.
        assert any("committed" in e for e in late.events) and any("revealed OK" in e for e in late.events)
        assert late.state.cursor() is not None and late.state.cursor() > opened.open_block
