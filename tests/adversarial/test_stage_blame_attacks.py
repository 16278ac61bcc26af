"""Stage-level blame (issue 14): an honest stage is never convicted for what its input stage did.

The attack: the input stage computes honestly and settles a commitment to its true rows, but
sends the next stage other rows. The next stage computes on what it received; committee members
re-execute it from the settled (true) rows, disagree, and convict it — a frame that costs the
input stage nothing. The defence: before a stage signs its own commitment it checks the input
stage's signed commitment (relayed by the gateway at COMMIT) against the rows it received
(node/dataplane/stored_requests.py), and keeps it. If the settled input commitment is another
one, that signature proves the input stage equivocated: `TaskOpener.blame_input` slashes and
jails it (the prover's share to the record's client, whose answer came from disowned rows) and
closes the task without judging the framed stage, whose record is paid as settled.

Here the framed stage's output is modelled by a `forge={1: "rows"}` claim (what members re-execute
from the settled rows disagrees with it everywhere), and the rows the input stage really sent by
a commitment over other rows, signed by the input stage's key."""

from __future__ import annotations

from dataclasses import replace

import boa
import pytest
from coincurve import PrivateKey

from contracts.verification import StageCommit, TaskStatus, attestation_digest
from protocol.identity import sign_digest
from tests.support.boa import funded, mine
from tests.support.game import Game, Plan, Request

from .scenario import assert_books, assert_no_honest_loss, release, snapshot


def _framed(g: Game) -> Request:
    """A settled request whose checked stage is stage 1 (it has an input stage) and whose stage 1
    output disagrees with a re-execution from stage 0's settled rows."""
    return g.settle_checked(1, forge={1: "rows"})


def _sent(g: Game, req: Request, signer: str | None = None) -> tuple[StageCommit, bytes]:
    """Stage 0's signed commitment to the rows it really sent stage 1 (not its settled rows)."""
    return g.equivocation(req, 0, signer)


def test_without_the_proof_the_framed_stage_would_be_convicted() -> None:
    """The attack as it worked before: nothing on chain ties what stage 1 received to what
    stage 0 settled, so the honest committee convicts stage 1."""
    g = Game()
    req = _framed(g)
    tid = g.open_task(req, wait=False)
    assert g.run(tid, req, Plan(cheat=True)) == TaskStatus.FRAUD


def test_an_input_stage_that_sent_other_rows_than_it_settled_is_the_one_slashed() -> None:
    g = Game()
    req = _framed(g)
    framer = g.operator_owner[req.pipeline.stages[0].operator]
    framed_op = req.pipeline.stages[1].operator
    framed = g.operator_owner[framed_op]
    deposit = g.s.pay.deposits(g.client)
    before = snapshot(g, g.s.owners)
    framer_before = before.pop(framer)
    tid = g.open_task(req, wait=False)
    members = g.round_members(tid)
    sc, sig = _sent(g, req)
    with boa.env.prank(framed_op):  # the framed stage's node holds the proof
        g.opener.blame_input(tid, sc.as_tuple(), sig)
    t = g.ver.tasks(tid)
    assert t.status == TaskStatus.UNRESOLVED
    assert g.ver.open_tasks(req.batch_id) == 0
    release(g, req)
    assert g.worth(framer) < framer_before  # slashed, and no pay for the request
    assert g.s.reg.nodes(framer).jailed_until > boa.env.evm.patch.block_number
    assert g.worth(framed) > before[framed]  # paid for the request, never judged
    for op in members:
        assert not g.ver.member(tid, op).slashed
    assert g.s.pay.deposits(g.client) == deposit  # charged as settled (not refunded) ...
    share = g.s.reg.prover_share_bps()
    assert g.s.reg.credits(g.client) == g.params.stage_slash_wei * share // 10_000  # ... and paid
    assert g.s.reg.credits(g.client) > req.record.charge  # more than it paid for the answer
    assert_no_honest_loss(g, before)
    assert_books(g)


def test_the_proof_also_lands_while_the_committee_is_already_voting() -> None:
    g = Game()
    req = _framed(g)
    framer = g.operator_owner[req.pipeline.stages[0].operator]
    before = g.worth(framer)
    tid = g.open_task(req, wait=False)
    g.play_round(tid, req, Plan(cheat=True))  # members voted and opened: the task is OPENING
    assert g.ver.tasks(tid).status == TaskStatus.OPENING
    sc, sig = _sent(g, req)
    with boa.env.prank(funded()):  # anyone holding the signature may submit it
        g.opener.blame_input(tid, sc.as_tuple(), sig)
    assert g.ver.tasks(tid).status == TaskStatus.UNRESOLVED
    release(g, req)
    assert g.worth(framer) < before


@pytest.mark.parametrize("case", ["settled", "not_signed", "other_shape"])
def test_blame_needs_a_real_equivocation(case: str) -> None:
    """Stage 1 cannot turn the rule against an honest input stage: only the input stage's own
    signature on a same-shape commitment with another root counts."""
    g = Game()
    req = _framed(g)
    tid = g.open_task(req, wait=False)
    if case == "settled":
        sc = req.stage_commits[0]
        sig = g.signature(req, 0)
        why = "opener: the settled commitment itself"
    elif case == "not_signed":  # stage 1 signs a commitment in stage 0's name
        sc, sig = _sent(g, req, signer=req.pipeline.stages[1].operator)
        why = "opener: input stage did not sign this commitment"
    else:  # a commitment over fewer positions (an honest COMMIT for another length)
        sc, sig = _sent(g, req)
        sc = replace(sc, positions=sc.positions - 1)
        key = PrivateKey(bytes.fromhex(g.s.operator_keys[req.pipeline.stages[0].operator][2:]))
        sig = sign_digest(key, attestation_digest(g.s.chain_id, req.leaf.request_id, 0, sc))
        why = "opener: not the settled commitment's shape"
    with boa.env.prank(req.pipeline.stages[1].operator), boa.reverts(why):
        g.opener.blame_input(tid, sc.as_tuple(), sig)
    assert g.ver.tasks(tid).status == TaskStatus.VOTING


def test_blame_needs_an_input_stage_and_an_open_task() -> None:
    g = Game()
    req = g.settle_checked(0)
    tid = g.open_task(req, wait=False)
    sc, sig = _sent(g, req)
    with boa.reverts("opener: the checked stage has no input stage"):
        g.opener.blame_input(tid, sc.as_tuple(), sig)
    req = _framed(g)
    tid = g.open_task(req, wait=False)
    sc, sig = _sent(g, req)
    mine(g.ver.tasks(tid).deadline - boa.env.evm.patch.block_number + 1)
    g.ver.expire(tid)
    with boa.reverts("verification: task closed"):
        g.opener.blame_input(tid, sc.as_tuple(), sig)
    with boa.reverts("verification: caller is not the task opener"):
        g.ver.blame_input(tid, funded())


def test_a_record_whose_input_commitment_has_another_shape_is_voided() -> None:
    """Members re-execute the checked stage from its input stage's commitment: a record whose two
    commitments disagree on the rows they cover cannot be checked, so it is voided (refund,
    gateway bond slashed) instead of opening a task nobody can judge."""
    g = Game()
    scs = list(g.settle().stage_commits)
    scs[0] = replace(scs[0], positions=scs[0].positions - 1)
    req = _settle_with(g, scs)
    deposit = g.s.pay.deposits(g.client)
    bond = g.s.pay.gateway_bond(g.gateway)
    tid = g.open_task(req, wait=False)
    assert g.ver.tasks(tid).status == TaskStatus.VOID
    assert g.s.pay.deposits(g.client) == deposit + req.record.charge
    assert g.s.pay.gateway_bond(g.gateway) == bond - g.params.gateway_slash_wei


def _settle_with(g: Game, scs: list[StageCommit]) -> Request:
    """Settle a request with the given stage commitments, retrying until stage 1 is checked."""
    from contracts.batch import Record, leaves_of, merkle_proof
    from contracts.verification import commitment_root
    from tests.support.game import CHARGE, TOKENS_IN, TOKENS_OUT

    while True:
        g.seq += 1
        record = Record(g.seq, 0, 0, TOKENS_IN, TOKENS_OUT, CHARGE, commitment_root(scs))
        with boa.env.prank(g.gateway):
            batch_id = g.s.pay.settle_batch([g.key], [g.pipeline.as_tuple()], [record.as_tuple()])
        leaves = leaves_of(g.s.chain_id, g.s.pay.address, g.gateway, [g.key], [record])
        req = Request(g.seq, record, leaves[0], merkle_proof([lf.hash() for lf in leaves], 0),
                      batch_id, [], [], [], list(scs), g.pipeline)
        if g.chosen_stage(req) == 1:
            return req


def test_an_input_stage_cannot_cheaply_save_a_cheating_stage_from_its_check() -> None:
    """The rule turned around: stage 1 really cheats, and stage 0 (same owner, or paid off) signs
    a second commitment so that stage 1 can "prove" it was framed and skip its check. The pair
    pays a full stage_slash (the prover's share goes to the client, none back to them) - more
    than honest play costs, as much as the conviction it dodged."""
    g = Game()
    req = _framed(g)  # stage 1's claim disagrees with any honest re-execution: a cheat here
    pair = [g.operator_owner[st.operator] for st in req.pipeline.stages]
    before = sum(g.worth(o) for o in pair)
    tid = g.open_task(req, wait=False)
    sc, sig = _sent(g, req)  # stage 0's second signature, made to order
    with boa.env.prank(req.pipeline.stages[1].operator):
        g.opener.blame_input(tid, sc.as_tuple(), sig)
    release(g, req)
    paid = sum(g.worth(o) for o in pair) - before  # both stages' pay for the request included
    assert paid < 0
    assert before - sum(g.worth(o) for o in pair) >= g.params.stage_slash_wei - req.record.charge
    assert g.s.reg.credits(g.client) > 0  # the slash's prover share went to the client
    assert_books(g)
