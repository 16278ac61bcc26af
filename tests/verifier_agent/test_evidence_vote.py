"""The agent's vote from the two kinds of evidence (`node.verification.jobs`), in process.

The tiny Llama's stage [4, 8) served in bf16: the worker prefills half the sequence and decodes
the rest from its cache, the verifier recomputes with one prefill. Under the shipped bf16 profile
that honest check is a PASS; rows of perturbed weights (the demo's cheat) are proof-grade FRAUD
with a named failing leaf; rows nudged by noise sized between the profile's suspect level and its
proof-grade bound are SUSPECT. Also: which profile the agent picks from the registry's hash.
"""

from __future__ import annotations

import os

import pytest
import torch

from contracts.verification import TOKEN_CHUNK, VerdictKind
from node.verification.evidence import failing_leaf
from node.verification.jobs import ZERO_HASH, choose_profile, judge_rows, known_profiles
from node.verification.policy import Claimed, Policy, Recomputed, decide
from node.verification.state import Vote
from verifier.chunk_rule import chunk_bad_counts
from verifier.encoding import Domain
from verifier.evidence import FRAUD, PASS, SUSPECT, assess
from verifier.merkle import StageCommitment
from verifier.profiles import SHIPPED
from verifier.sprt import suspect_rule

LAYERS = (4, 8)
SEQ = [5, 17, 99, 3, 250, 41, 7, 12, 400, 9, 77, 120, 31, 8, 500, 2, 45, 19, 303, 11]


@pytest.fixture(scope="module")
def stage_rows(tiny_model):
    """(input rows, honest worker rows, verifier rows, perturbed worker rows) of stage [4, 8), bf16."""
    from node.runtime.executor import StageExecutor
    from node.runtime.shard import load_shard
    from node.verification.perturb import perturb_shard

    torch.manual_seed(0)
    first = StageExecutor(load_shard(tiny_model, 0, LAYERS[0], device="cpu", dtype=torch.float32))
    x = first.run(torch.tensor(SEQ, dtype=torch.int64), logits="none").hidden.to(torch.bfloat16)

    def worker(ex: StageExecutor) -> torch.Tensor:  # a prefill of half, then cached decode steps
        rid = os.urandom(32)
        ex.open(rid)
        h = len(SEQ) // 2
        out = [ex.forward(rid, x[:h], 0, logits="none").hidden]
        out += [ex.forward(rid, x[i : i + 1], i, logits="none").hidden for i in range(h, len(SEQ))]
        ex.close(rid)
        return torch.cat(out).float()

    honest = StageExecutor(load_shard(tiny_model, *LAYERS, device="cpu", dtype=torch.bfloat16))
    mine = honest.run(x, logits="none").hidden.float()
    cheat_shard = load_shard(tiny_model, *LAYERS, device="cpu", dtype=torch.bfloat16)
    perturb_shard(cheat_shard, 0.02)
    return x, worker(honest), mine, worker(StageExecutor(cheat_shard))


def _tree(rows: torch.Tensor) -> StageCommitment:
    return StageCommitment.build(Domain(31337, b"\x07" * 32, 1), rows, [0] * (rows.shape[0] + 1))


def _vote(rows_claimed: torch.Tensor, rows_mine: torch.Tensor, kind: str) -> Vote:
    """What `prepare_vote` builds from a check's kind (the same calls, in the same order)."""
    c, r = Claimed(rows_claimed, _tree(rows_claimed)), Recomputed(rows_mine, _tree(rows_mine))
    d = decide(Policy.HONEST, c, r, kind)
    named = failing_leaf(c.tree, r.tree, 6, 4) if d.verdict is False else None
    verdict, kind = d.verdict, d.kind
    if d.verdict is False and named is None:  # off-chain proof only: statistical on chain
        verdict, kind = True, 3
    return Vote(7, 0, 1, verdict, r.tree.root, os.urandom(32), "honest", leaf=list(named or (0, 0)),
                kind=kind)


def test_the_registry_names_the_profile_else_the_dtype_falls_back_and_unknown_is_refused():
    bf16, fp32 = SHIPPED["bf16"], SHIPPED["fp32"]
    assert choose_profile(bf16.hash, torch.float32).profile is bf16  # the registry wins
    assert choose_profile(fp32.hash, torch.bfloat16).profile is fp32
    assert choose_profile(ZERO_HASH, torch.bfloat16).profile is bf16
    assert choose_profile(None, torch.float32).profile is fp32
    unknown = choose_profile(b"\x42" * 32, torch.bfloat16)
    assert unknown.profile is None and "refused" in unknown.reason and "42424242" in unknown.reason
    assert choose_profile(ZERO_HASH, torch.float16).profile is None
    own = SHIPPED["bf16"].__class__.from_json({**bf16.to_json(), "logit_tol": 0.5})
    assert choose_profile(own.hash, torch.bfloat16).profile is None
    assert choose_profile(own.hash, torch.bfloat16, known_profiles({own.hash: own})).profile == own


def test_an_honest_bf16_check_passes(stage_rows):
    _, worker, mine, _ = stage_rows
    assert not torch.equal(worker, mine)  # decode vs prefill really differ in bf16
    kind, a, note = judge_rows(worker, mine, LAYERS[1] - LAYERS[0], SHIPPED["bf16"])
    assert kind == PASS, note
    assert not a.proof.failed
    v = _vote(worker, mine, kind)
    assert v.verdict is True and v.kind_code == VerdictKind.PASS and v.leaf == [0, 0]


def test_perturbed_weights_are_proof_grade_fraud_naming_a_leaf(stage_rows):
    _, _, mine, cheat = stage_rows
    kind, a, note = judge_rows(cheat, mine, LAYERS[1] - LAYERS[0], SHIPPED["bf16"])
    assert kind == FRAUD and a.proof.failed, note
    v = _vote(cheat, mine, kind)
    assert v.verdict is False and v.kind_code == VerdictKind.FAIL and v.label == "FRAUD"
    # the named leaf is a hidden chunk that fails the deployed chunk rule (6, 4)
    (pos, chunk), sl = v.leaf, slice(32 * v.leaf[1], 32 * v.leaf[1] + 32)
    assert chunk != TOKEN_CHUNK
    c, r = _tree(cheat).bits[pos : pos + 1, sl], _tree(mine).bits[pos : pos + 1, sl]
    assert int(chunk_bad_counts(c, r, 6).max()) > 4


def test_a_statistical_only_deviation_is_suspect(stage_rows):
    _, worker, mine, _ = stage_rows
    prof, n = SHIPPED["bf16"], LAYERS[1] - LAYERS[0]
    level = suspect_rule(prof.evidence).level
    # every row nudged by noise of a relative size between the suspect level and the proof bounds
    target = (level * min(prof.proof.max_score, prof.proof.max_row_err)) ** 0.5 * n ** prof.depth_exponent
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(worker.shape, generator=g)
    noise *= (worker.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True)) * target
    nudged = worker + noise
    kind, a, note = judge_rows(nudged, mine, n, prof)
    assert kind == SUSPECT, note
    assert not a.proof.failed and a.measurement.score > level and a.evalue > 1
    assert assess(nudged, mine, n, prof).measurement.failing_chunks == 0
    v = _vote(nudged, mine, kind)
    assert v.verdict is True and v.kind_code == VerdictKind.SUSPECT and v.leaf == [0, 0]
    assert v.label == "SUSPECT"
    # a pre-SUSPECT record (no kind) still reads as PASS / FAIL
    old = Vote.from_json({k: x for k, x in v.to_json().items() if k != "kind"})
    assert old.kind_code == VerdictKind.PASS
