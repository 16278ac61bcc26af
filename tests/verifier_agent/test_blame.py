"""Stage-level blame end to end on a real devnet, with real stage servers and agents.

Stage 0 frames stage 1, colluding with the gateway: it sends stage 1 rows other than the ones it
computed (its stored rows and its settled commitment are the true ones), and signs a commitment to
the rows it sent, which the gateway relays to stage 1 at COMMIT. Stage 1 checks that commitment
against the rows it received, signs its own, and keeps the relayed one. The gateway settles stage
0's true commitment. The task checks stage 1: members re-executing it from the settled rows would
disagree with it — but stage 1's agent sees that the settled input commitment is not the one it
kept and proves it on chain (`TaskOpener.blame_input`): stage 0 is slashed (the prover's share to the
client) and jailed, stage 1 never judged. Without the collusion, stage 1 refuses to commit at all (tests/node
test_a_stage_commits_only_on_its_input_stages_commitment_to_the_rows_it_received)."""

from __future__ import annotations

import asyncio
import time

import pytest
from coincurve import PrivateKey

from contracts.apikeys import create_api_key
from contracts.batch import Pipeline, Record, Stage, leaves_of, merkle_proof, request_id
from contracts.verification import BLAME_REASON, TaskStatus, attestation_digest, commitment_root
from devnet.process import running_devnet
from node.dataplane.client import PipelineClient
from node.dataplane.query import input_relay, request_commitment
from protocol.frames import InputRelay, Kind, make_frame
from protocol.identity import sign_digest
from protocol.messages import PipelineRequest, StageAssignment, StageCommit
from protocol.rows import hidden_body, parse_hidden
from verifier.encoding import Domain

from .world import ETH, PRICE_IN, PRICE_OUT, Miner, NodeSpec, World, params

pytestmark = pytest.mark.slow

PROMPT = [5, 17, 99, 3, 250, 41, 7, 12]
NEW = 4


def _tamper(node) -> None:
    """Stage 0's server sends its HIDDEN rows shifted (signed as itself, so stage 1 accepts them)."""
    links, srv = node.server.links, node.server
    orig = links.send

    async def send(st, f, stage):
        if f.kind == Kind.HIDDEN:
            sh = srv.executor.shard
            start, rows = parse_hidden(f.body, sh.hidden_size, sh.dtype, 1 << 16)
            f = make_frame(node.key, Kind.HIDDEN, f.chain_id, f.request_id, f.step, f.epoch, f.stage,
                           hidden_body(start, rows + 0.05))
        await orig(st, f, stage)

    links.send = send


async def _framed_request(world: World, seq: int):
    """Serve one request through nodes 0 -> 1 as a gateway colluding with stage 0; settle stage 0's
    true commitment; return what opening the task needs."""
    ch = world.chain
    n0, n1 = world.nodes[0], world.nodes[1]
    client, gateway = world.fresh(), world.fresh()
    gkey = PrivateKey(bytes(gateway.account.key))
    await asyncio.to_thread(ch.payments.deposit, ETH, sender=client)
    signed = create_api_key(bytes(client.account.key), gateway.address, ETH, int(time.time()) + 3600, 1,
                            ch.chain_id, ch.payments.address)
    key = await asyncio.to_thread(ch.payments.register_key, signed, sender=gateway)
    await asyncio.to_thread(ch.payments.bond_gateway, int(ch.payments.params()["min_gateway_bond"]),
                            sender=gateway)
    model_id = await asyncio.to_thread(ch.model_registry.register_model, f"tiny-{time.time_ns()}", 8, 256,
                                       b"\x01" * 32, b"\x02" * 32, PRICE_IN, PRICE_OUT)
    rid = request_id(ch.chain_id, ch.payments.address, gateway.address, seq)
    stages = tuple(StageAssignment(operator=n.operator, host=n.server.host, port=n.server.port,
                                   start=n.spec.layers[0], end=n.spec.layers[1]) for n in (n0, n1))
    req = PipelineRequest(chain_id=ch.chain_id, request_id="0x" + rid.hex(), gateway=gateway.address,
                          stages=stages, prompt_len=len(PROMPT), max_new_tokens=NEW)
    gen = await PipelineClient(gkey, ch.chain_id).generate(req, PROMPT)
    seq_tokens = PROMPT + gen.tokens
    P = len(seq_tokens) - 1
    true0 = await request_commitment(gkey, ch.chain_id, req, 0, P)
    honest_relay = input_relay(true0, 1, seq_tokens, P)
    # What stage 0 signs for the rows it really sent: the tree stage 1 grew over what it received.
    acc = n1.server.sessions.inputs.leaves.get(rid, Domain(ch.chain_id, rid, 0),
                                               n1.server.sessions.store.entry(rid, 4, 8).rows)
    root, _ = acc.root(P, list(honest_relay.tokens))
    sent = StageCommit(root, P, true0[0].hidden_size, true0[0].n_tokens)
    relay = InputRelay(sent, sign_digest(n0.key, attestation_digest(ch.chain_id, rid, 0, sent)),
                       honest_relay.tokens)
    sc1, sig1 = await request_commitment(gkey, ch.chain_id, req, 1, P, relay=relay)
    scs = [true0[0], sc1]
    pipeline = Pipeline(model_id, (Stage(n0.operator, 0, 4), Stage(n1.operator, 4, 8)))
    tin, tout = len(PROMPT), len(gen.tokens)
    record = Record(seq, 0, 0, tin, tout, tin * PRICE_IN + tout * PRICE_OUT, commitment_root(scs))
    settled = await asyncio.to_thread(ch.payments.settle_batch, [key], [pipeline], [record], sender=gateway)
    leaf = leaves_of(ch.chain_id, ch.payments.address, gateway.address, [key], [record])[0]
    return settled.batch_id, leaf, merkle_proof([leaf.hash()], 0), pipeline, scs, sig1, client, sent


async def _run(model, tmp, url):
    world = World.deploy(url, model, tmp, params(committee_size=3))
    try:
        await world.start_nodes([NodeSpec((0, 4)), NodeSpec((4, 8)), NodeSpec((0, 4)), NodeSpec((4, 8)),
                                 NodeSpec((4, 8))])
        _tamper(world.nodes[0])
        ver = world.chain.verification
        for seq in range(1, 12):  # until the batch's randomness checks stage 1
            batch, leaf, proof, pipeline, scs, sig1, client, sent = await _framed_request(world, seq)
            while True:
                try:
                    if await asyncio.to_thread(ver.is_sampled, batch, leaf.request_id):
                        break
                except Exception:
                    pass
                await asyncio.sleep(0.2)
            if await asyncio.to_thread(ver.stage_of, batch, leaf.request_id, 2) == 1:
                break
        else:
            raise AssertionError("the randomness never checked stage 1")
        head = await asyncio.to_thread(world.chain.block_number)
        task_id, tx = await asyncio.to_thread(ver.open_task, batch, leaf, proof, [pipeline], scs, sig1,
                                              sender=client)
        world.start_agents(head)
        t = await world.run_until(task_id, lambda t: t.status not in (
            TaskStatus.VOTING, TaskStatus.OPENING, TaskStatus.DRAWING))
        credits = await asyncio.to_thread(world.chain.node_registry.credit_of, client.address)
        return world, t, tx.block_number, sent, client.address, credits
    finally:
        await world.stop()


def test_a_stage_framed_by_its_input_stage_proves_it_and_the_framer_is_slashed(tiny_model, tmp_path):
    with running_devnet(tmp_path / "devnet") as dn, Miner(dn.url):
        world, t, block, sent, client, credits = asyncio.run(_run(tiny_model, tmp_path, dn.url))
        assert t.status is TaskStatus.UNRESOLVED
        framer, framed = world.nodes[0], world.nodes[1]
        slashed = world.events("StageSlashed", block)
        assert [(e.args["stage_operator"], e.args["reason"]) for e in slashed] == [
            (framer.operator, BLAME_REASON)]
        assert slashed[0].args["prover"] == client  # the client whose answer came from them
        assert credits > 0 and not world.events("MemberSlashed", block)
        assert any("blame_input" in e for e in framed.agent.events)
        assert sent.root != t.input_commit.root
