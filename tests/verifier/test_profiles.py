"""The shipped profiles held to fresh benign and attack data on a model they were not fitted on.

The profiles were fitted (bench/tolerance.py) on SmolLM2 and a tiny Llama; here a tiny Qwen2 of
another shape (4 layers, hidden 96, 3 heads / 1 KV head) serves requests in padded batches with
batched decode, one at a time and in chunks, and every stage is checked by the verifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from node.verification.calib_checks import (
    PROOF_ATTACKS,
    attack_checks,
    benign_checks,
    failed,
    serve_mix,
    stage_sets,
)
from node.verification.calib_lab import Lab, load_smollm2, smollm2_available, tiny_model, to_bf16
from verifier.profiles import SHIPPED

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def heldout(request):
    prec = request.param
    lab = Lab(tiny_model("qwen2", 5, DTYPES[prec], layers=4, hidden=96, heads=3, kv_heads=1, mlp=256))
    return prec, lab


def test_benign_checks_on_a_held_out_model_never_fail_proof_grade(heldout):
    prec, lab = heldout
    prof = SHIPPED[prec]
    groups = serve_mix(lab, np.random.default_rng(42), (1, 5, 12), ("decode1", "chunked", "prefill"), 24, 10)
    checks = benign_checks(lab, "heldout", groups, prof.proof, prof)
    assert len(checks) >= 150
    bad = [(c.how, c.stage, c.m.score, c.m.row_score, c.m.failing_chunks, c.tokens_ok)
           for c in checks if failed(c, prof)]
    assert not bad, bad[:5]
    # statistical evidence: honest checks carry e-values whose mean stays below one
    e = np.array([prof.evidence.evalue(c.m.score) for c in checks])
    assert e.mean() <= 1.0 and np.log(e).mean() < 0


@pytest.mark.parametrize("attack", PROOF_ATTACKS)
def test_every_proof_grade_attack_fails_every_check_on_a_held_out_model(heldout, attack):
    prec, lab = heldout
    prof = SHIPPED[prec]
    rng = np.random.default_rng(3)
    runs = lab.serve([lab.prompt(rng, 12) for _ in range(3)], [8] * 3)
    checks = attack_checks(lab, "heldout", attack, runs, stage_sets(lab.n_layers, False, (2,)), prof, rng)
    assert checks
    passed = [(c.stage, c.m.score, c.m.row_score, c.tokens_ok) for c in checks if not failed(c, prof)]
    assert not passed, passed


def test_the_referee_upholds_honest_bf16_rows_against_an_fp32_recomputation_and_convicts_a_cheat():
    import copy

    from node.verification.calib_lab import quantize_layer
    from verifier.referee import STAGE_GUILTY, VERIFIER_WRONG, referee

    lab = Lab(tiny_model("qwen2", 5, torch.bfloat16, layers=4, hidden=96, heads=3, kv_heads=1, mlp=256))
    ref = Lab(copy.deepcopy(lab.model).float())
    prof = SHIPPED["bf16"]
    rng = np.random.default_rng(8)
    runs = lab.serve([lab.prompt(rng, 10) for _ in range(4)], [6] * 4)  # a padded batch
    for a, b in stage_sets(lab.n_layers, False, (2,)):
        inputs = [lab.stage_input(r, a) for r in runs]
        mine = lab.recompute(inputs, a, b)
        fp32 = ref.recompute(inputs, a, b)
        cheat = lab.recompute(inputs, a, b, edits={i: quantize_layer(lab.layers[i], "int4") for i in range(a, b)})
        for r, v, x, c in zip(runs, mine, fp32, cheat, strict=True):
            assert referee(r.rows[b], v, x, b - a, prof).outcome == VERIFIER_WRONG  # a false accusation
            assert referee(c, v, x, b - a, prof).outcome == STAGE_GUILTY


SINK_PROMPT = [47625, 20742, 48943, 19581, 46596, 18365, 14869, 48675, 29879]  # 23 new tokens


@pytest.mark.skipif(not smollm2_available(), reason="SmolLM2 not imported (veriplex model import smollm2)")
def test_an_honest_bf16_row_whose_massive_activation_is_cancelled_is_not_convicted():
    """Regression: SmolLM2 bf16, served by prefill + cached decode and checked by one prefill. Row 1
    grows a massive activation (13,312 in one channel) at layer 12 that layers 29-30 cancel; the
    noise it carried at that scale (bf16 ulp 64) is left in a row of norm ~2,600 — 18 % relative
    error, a chunk with 16 of 32 elements beyond 12 scale ulps. The old bf16 rule (D 12, K 7)
    convicted this honest stage; the shipped profile must not."""
    from verifier.chunk_rule import chunk_bad_counts
    from verifier.evidence import measure, proof_verdict

    lab = Lab(load_smollm2(torch.bfloat16), "smollm2")
    prof = SHIPPED["bf16"]
    run = lab.serve([SINK_PROMPT], [23], "decode1")[0]
    for a, b in ((0, 30), (15, 30)):
        rec = lab.recompute([lab.stage_input(run, a)], a, b)[0]
        claimed, mine = to_bf16(run.rows[b]), to_bf16(rec)
        m = measure(claimed, mine, b - a, prof.proof, prof.depth_exponent)
        assert not proof_verdict(m, prof.proof).failed, proof_verdict(m, prof.proof).reasons
        if (a, b) == (0, 30):  # the case reproduces: the old rule fails this honest chunk
            bits = [x.view(torch.int16).numpy().view(np.uint16) for x in (claimed, mine)]
            assert chunk_bad_counts(*bits, 12).max() > 7
