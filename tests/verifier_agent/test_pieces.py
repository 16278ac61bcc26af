"""The agent's pure pieces: calldata decoding, evidence against roots, policies, the state file,
endpoints and the perturbation of a cheating worker."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from web3 import Web3

from contracts.batch import Leaf, Pipeline, Stage
from contracts.build import compile_all
from contracts.errors import ContractsError
from contracts.rpc import Rpc
from contracts.verification import Verification
from node.verification.errors import AgentStateError, EvidenceError, TaskDataError
from node.verification.evidence import (
    check_against_root,
    committed_tokens,
    failing_leaf,
    forged_evidence,
    openings,
)
from node.verification.policy import Claimed, Policy, Recomputed, decide
from node.verification.state import AgentState, Vote
from node.verification.task_data import decode_open_task, split_endpoint
from protocol.messages import StageCommit
from verifier.encoding import Domain
from verifier.merkle import StageCommitment, verify_chunk

CID, RID = 31337, bytes(range(32))
P, D = 6, 64


def _commit(stage: int, rows, tokens=()):
    tree = StageCommitment.build(Domain(CID, RID, stage), rows, tokens)
    return tree, StageCommit(tree.root, P, D, len(tokens))


def _rows(seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((P, D)).astype(np.float32))


# ── calldata ──────────────────────────────────────────────────────────────────────────────────
def _contract() -> Verification:
    """A Verification binding (no node is reached: only its ABI encodes and decodes here)."""
    return Verification(Rpc("http://127.0.0.1:9"), "0x" + "11" * 20, compile_all()["Verification"].abi)


def _opener():  # type: ignore[no-untyped-def]
    """The TaskOpener's ABI: open_task goes through it (issue 14), with the stage's signature."""
    return Rpc("http://127.0.0.1:9").w3.eth.contract(abi=compile_all()["TaskOpener"].abi)


def _decode(v: Verification, task_id: int, stage: int, data: str):  # type: ignore[no-untyped-def]
    return decode_open_task(task_id, stage, *v.decode_call(bytes.fromhex(data[2:])))


def test_open_task_calldata_decodes_to_the_record_pipeline_and_every_stage_commit():
    c = _contract()
    ops = ["0x" + "aa" * 20, "0x" + "bb" * 20]
    pipes = [Pipeline(7, (Stage(Web3.to_checksum_address(ops[0]), 0, 4),
                          Stage(Web3.to_checksum_address(ops[1]), 4, 8)))]
    commits = [StageCommit(b"\x01" * 32, P, D, P + 1), StageCommit(b"\x02" * 32, P, D, P + 1)]
    leaf = Leaf(RID, b"\x03" * 32, 0, 4, 3, 12345, b"\x04" * 32)
    data = _opener().encode_abi("open_task", [9, leaf.fields(), [b"\x05" * 32], [p.as_tuple() for p in pipes],
                                      [s.as_tuple() for s in commits], b"\x07" * 65])
    td = _decode(c, 3, 1, data)
    assert (td.task_id, td.batch_id, td.stage, td.leaf) == (3, 9, 1, leaf)
    assert td.pipeline == pipes[0] and list(td.stage_commits) == commits
    assert td.proof == (b"\x05" * 32,) and td.positions == P and td.layers == (4, 8)


def test_calldata_of_another_function_or_garbage_is_refused():
    c = _contract()
    other = c.contract.encode_abi("finalize", [1])
    with pytest.raises(TaskDataError, match="not open_task"):
        _decode(c, 1, 0, other)
    with pytest.raises(ContractsError, match="does not decode"):
        c.decode_call(b"\xde\xad\xbe\xef" + b"\x00" * 10)


def test_a_checked_stage_outside_the_pipeline_is_refused():
    c = _contract()

    data = _opener().encode_abi("open_task", [1, Leaf(RID, RID, 0, 1, 1, 1, RID).fields(), [],
                                      [(1, [(Web3.to_checksum_address("0x" + "aa" * 20), 0, 8)])],
                                      [StageCommit(RID, 1, 1, 0).as_tuple()], b""])

    with pytest.raises(TaskDataError, match="checked stage 2"):
        _decode(c, 1, 2, data)


# ── evidence ──────────────────────────────────────────────────────────────────────────────────
def test_fetched_rows_that_reproduce_the_root_are_accepted():
    rows = _rows()
    _, sc = _commit(1, rows, list(range(P + 1)))
    tree = check_against_root(CID, RID, 1, sc, rows, list(range(P + 2)))
    assert tree.root == sc.root and list(tree.tokens) == list(range(P + 1))


def test_forged_rows_tokens_or_shapes_do_not_pass_as_a_stages_commitment():
    rows = _rows()
    _, sc = _commit(1, rows, list(range(P + 1)))
    forged = rows.clone()
    forged[3, 5] += 0.5
    with pytest.raises(EvidenceError, match="not the committed"):
        check_against_root(CID, RID, 1, sc, forged, list(range(P + 1)))
    with pytest.raises(EvidenceError, match="not the committed"):
        check_against_root(CID, RID, 1, sc, rows, [9] + list(range(1, P + 1)))
    with pytest.raises(EvidenceError, match="shape"):
        check_against_root(CID, RID, 1, sc, rows[:-1], list(range(P + 1)))
    with pytest.raises(EvidenceError, match="reported only"):
        check_against_root(CID, RID, 1, sc, rows, [1, 2])
    with pytest.raises(EvidenceError, match="not the committed"):  # another stage's domain
        check_against_root(CID, RID, 0, sc, rows, list(range(P + 1)))


def test_a_middle_stage_commits_no_tokens_whatever_it_reports():
    assert committed_tokens(StageCommit(RID, P, D, 0), [1, 2, 3]) == []


def test_openings_prove_against_the_tree_and_forged_evidence_disagrees_with_the_claim():
    rows = _rows()
    tree, sc = _commit(0, rows, list(range(P + 1)))
    ops = openings(tree, [(0, 0), (P - 1, 1)])
    assert len(ops) == 2 and all(len(o.hi) == 32 and len(o.lo) == 32 for o in ops)
    forged = forged_evidence(CID, RID, 0, rows, list(range(P + 1)), seed=1)
    assert forged.shape == tree.shape and forged.root != tree.root
    assert verify_chunk(forged.root, Domain(CID, RID, 0), forged.shape, forged.open_chunk(2, 1))
    from verifier.chunk_rule import chunk_bad_count

    a, b = tree.open_chunk(2, 0).values, forged.open_chunk(2, 0).values
    assert chunk_bad_count(a, b, 6) > 4  # far beyond the default chunk rule (D = 6, K = 4)


def test_a_fail_names_a_leaf_only_where_the_on_chain_rule_fails():
    """No leaf failing the chain's rule: None, so the member votes SUSPECT rather than a FAIL the
    chain would slash as naming a leaf that is not faulty."""
    rows = _rows()
    tree, _ = _commit(0, rows, list(range(P + 1)))
    assert failing_leaf(tree, tree, 6, 4) is None
    forged = forged_evidence(CID, RID, 0, rows, list(range(P + 1)), seed=1)
    assert failing_leaf(tree, forged, 6, 4) is not None
    other_token = StageCommitment.build(Domain(CID, RID, 0), rows, [*range(P), P + 7])
    assert failing_leaf(tree, other_token, 6, 4) == (P, 65535)  # the token leaf


# ── policies ──────────────────────────────────────────────────────────────────────────────────
def _claimed_recomputed():
    rows = _rows()
    tree, _ = _commit(0, rows)
    return Claimed(rows, tree), Recomputed(rows, tree)


@pytest.mark.parametrize("passed", [True, False])
def test_honest_and_silent_say_what_the_tolerance_test_says_with_their_own_rows(passed):
    c, r = _claimed_recomputed()
    for p in (Policy.HONEST, Policy.SILENT):
        d = decide(p, c, r, passed)
        assert (d.verdict, d.evidence) == (passed, "recomputed")
    assert Policy.HONEST.reveals and not Policy.SILENT.reveals


def test_lazy_vouches_with_the_stages_own_rows_and_accuse_accuses_with_forged_ones():
    c, r = _claimed_recomputed()
    assert (decide(Policy.LAZY, c, None, None).verdict, decide(Policy.LAZY, c, None, None).evidence) == (
        True, "claimed")
    assert (decide(Policy.ACCUSE, c, None, None).verdict, decide(Policy.ACCUSE, c, r, True).evidence) == (
        False, "forged")
    assert not Policy.LAZY.computes and not Policy.ACCUSE.computes and Policy.HONEST.computes


def test_without_the_claimed_rows_every_policy_says_fraud():
    _, r = _claimed_recomputed()
    for p in Policy:
        assert decide(p, None, r, None).verdict is False
    assert decide(Policy.LAZY, None, None, None).evidence == "blank"


def test_without_its_own_re_execution_an_honest_or_silent_verifier_abstains_and_never_vouches():
    c, _ = _claimed_recomputed()
    for p in (Policy.HONEST, Policy.SILENT):
        d = decide(p, c, None, None)
        assert (d.verdict, d.evidence) == (None, "none") and "abstained" in d.reason
    # a lazy member still vouches without computing: that is the fault it injects
    assert decide(Policy.LAZY, c, None, None).verdict is True


def test_inputs_the_input_stage_never_served_are_reported_not_abstained_on():
    """Withheld inputs (issue 14, attack 6): abstaining would cost an honest member its stake as a
    non-revealer; it reveals NO_INPUT instead, and the input stage answers for it on chain."""
    c, _ = _claimed_recomputed()
    for p in (Policy.HONEST, Policy.SILENT):
        d = decide(p, c, None, None, inputs_missing=True)
        assert (d.verdict, d.kind, d.evidence) == (False, 4, "blank") and "no input" in d.reason
    assert decide(Policy.HONEST, None, None, None, inputs_missing=True).kind == 2  # no claim: FAIL


# ── state ─────────────────────────────────────────────────────────────────────────────────────
def test_a_vote_and_its_evidence_survive_a_restart_in_private_files(tmp_path):
    rows = _rows(3)
    tree, _ = _commit(1, rows, list(range(P + 1)))
    st = AgentState(tmp_path / "verifier")
    v = Vote(4, 0, 1, False, tree.root, os.urandom(32), "honest", tokens=list(tree.tokens), note="x")
    st.save(v, tree.bits[:, :D])
    v.committed = True
    st.save(v)
    again = AgentState(tmp_path / "verifier")
    (back,) = again.votes()
    assert back == v
    assert again.evidence(back, CID, RID).root == tree.root
    assert stat.S_IMODE((tmp_path / "verifier").stat().st_mode) == 0o700
    for p in (tmp_path / "verifier").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    again.forget(4)
    assert again.votes() == [] and not list((tmp_path / "verifier").iterdir())


def test_a_state_file_readable_by_others_or_with_other_evidence_is_refused(tmp_path):
    rows = _rows(4)
    tree, _ = _commit(0, rows)
    st = AgentState(tmp_path)
    v = Vote(5, 1, 0, True, tree.root, b"\x01" * 32, "lazy")
    st.save(v, rows.numpy())
    path = tmp_path / "task-5-r1.json"
    os.chmod(path, 0o644)
    with pytest.raises(AgentStateError, match="readable by others"):
        st.load(5, 1)
    os.chmod(path, 0o600)
    v.output_root = b"\x09" * 32
    st.save(v)
    with pytest.raises(AgentStateError, match="gives root"):
        st.evidence(st.load(5, 1), CID, RID)


def test_the_scan_cursor_survives_a_restart_and_an_unreadable_one_means_rescan(tmp_path):
    st = AgentState(tmp_path)
    assert st.cursor() is None
    st.save_cursor(1234)
    assert AgentState(tmp_path).cursor() == 1234
    (tmp_path / "cursor.json").write_text("{not json")
    assert st.cursor() is None
    (tmp_path / "cursor.json").write_text('{"next_block": -3}')
    assert st.cursor() is None


# ── endpoints and perturbation ────────────────────────────────────────────────────────────────
def test_registry_endpoints_split_into_host_and_port():
    assert split_endpoint("http://10.0.0.5:7070") == ("10.0.0.5", 7070)
    assert split_endpoint("https://gpu.example") == ("gpu.example", 443)
    assert split_endpoint("127.0.0.1:9000") == ("127.0.0.1", 9000)
    with pytest.raises(TaskDataError, match="names no host"):
        split_endpoint("http://")


def test_perturbation_is_seeded_changes_every_tensor_and_refuses_a_bad_std(tiny_model):
    from node.runtime.shard import load_shard
    from node.verification.perturb import perturb_shard

    a, b, ref = (load_shard(tiny_model, 2, 5) for _ in range(3))
    assert perturb_shard(a, 0.01) == perturb_shard(b, 0.01) == len(ref.tensors())
    for name, t in a.tensors().items():
        assert torch.equal(t, b.tensors()[name]) and not torch.equal(t, ref.tensors()[name])
    with pytest.raises(ValueError, match="positive"):
        perturb_shard(ref, 0.0)


def test_exactly_one_keeper_per_task_round_and_action_and_outsiders_come_last() -> None:
    from node.verification.agent import keeper_rank

    committee = [f"0x{i:040x}" for i in (7, 3, 9, 1)]
    for tid in range(1, 30):
        for what in ("close_votes", "finalize", "refund_client"):
            ranks = sorted(keeper_rank(committee, m.upper().replace("0X", "0x"), tid, 0, what)
                           for m in committee)
            assert ranks == [0, 1, 2, 3]  # one keeper, then each fallback in turn
    outsider = "0x" + "ee" * 20
    assert keeper_rank(committee, outsider, 5, 0, "finalize") == len(committee)
    keepers = {next(m for m in committee if keeper_rank(committee, m, tid, 0, "finalize") == 0)
               for tid in range(1, 30)}
    assert len(keepers) > 1  # the duty rotates among the members


def test_each_keeper_acts_only_in_its_own_slot_and_anyone_after_every_members() -> None:
    from node.verification.agent import keeper_turn

    members, due, delay = 3, 100, 4
    turns = {rank: [h for h in range(due, due + 20) if keeper_turn(rank, members, due, h, delay)]
             for rank in range(members + 1)}  # rank 3: not a member
    assert turns[0][:4] == [100, 101, 102, 103] and 104 not in turns[0]  # a late keeper waits
    assert turns[1][:4] == [104, 105, 106, 107] and 103 not in turns[1]
    assert turns[2][:4] == [108, 109, 110, 111]
    assert turns[3][0] == 112  # outsiders only once every member's slot is over
    for h in range(due, due + 12):  # before that, exactly one party may act at any head
        assert sum(keeper_turn(r, members, due, h, delay) for r in range(members + 1)) == 1
