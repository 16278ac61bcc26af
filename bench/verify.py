"""The verifier's figures (DESIGN §9): false alarms, detection, checks to eject, overhead — per precision.

For fp32 and bf16, with the **shipped** profiles (`verifier.profiles.SHIPPED`, fitted by
`bench/tolerance.py` on other seeds), on SmolLM2-135M (when imported), the tiny Llama the profiles
were also fitted on, and a held-out tiny Qwen2 of another shape they never saw:

- benign: requests served the legitimate ways (`node/verification/calib_checks.serve_mix`: padded
  batches of 1–32 mixed-length requests with batched cached decode, one at a time, chunked and whole
  prefills, 1 or 2 threads; on SmolLM2 also longer requests of up to 64 + 32 tokens); every stage of `stage_sets` (each single layer, 2- and 3-stage
  pipelines, the whole model) checked by the verifier's one prefill from the committed input,
  tokens checked (greedy and seeded sampling) where the stage ends the model.
  `false_alarms` = checks failing proof-grade (rows or tokens), with the 95 % Clopper–Pearson bound;
- proof-grade attacks (`PROOF_ATTACKS`): `detect_min` = the lowest per-check detection;
- statistical attacks (`STATISTICAL_ATTACKS`): each check's score becomes an e-value; simulated
  operators draw checks at random from the attack's measured ones until the SPRT
  (`verifier.sprt`, lifetime false-ejection bound 1e-6 over 1e6 checks) jails them:
  `checks_to_eject_p50`; honest operators drawn from the benign checks: how many were ever jailed
  or flagged;
- `verify_overhead` = p · m · (one stage check) ÷ (the request's inference), wall time on this CPU,
  SmolLM2 (or the tiny model), p and m the Verification contract's deploy defaults.

    .venv/bin/python bench/verify.py [--quick] [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from contracts.verification import VerificationParams  # noqa: E402
from node.verification.calib_checks import (  # noqa: E402
    PROOF_ATTACKS,
    STATISTICAL_ATTACKS,
    Clock,
    attack_checks,
    benign_checks,
    failed,
    serve_mix,
    stage_sets,
)
from node.verification.calib_lab import Lab, load_smollm2, smollm2_available, tiny_model  # noqa: E402
from verifier.calibrate import clopper_pearson_upper  # noqa: E402
from verifier.evidence import assess  # noqa: E402
from verifier.profiles import SHIPPED  # noqa: E402
from verifier.sprt import SprtParams, suspect_rule  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
WINDOW = 8  # benign checks also over each run of 8 positions of a request's stage
MAX_CHECKS = 2000  # a simulated cheat still free after this many checks counts as never ejected


def eject_counts(evalues: np.ndarray, params: SprtParams, sims: int, rng: np.random.Generator,
                 horizon: int = MAX_CHECKS) -> tuple[np.ndarray, np.ndarray]:
    """Checks until each of `sims` operators is jailed (horizon + 1: never), drawing e-values at
    random from `evalues`; and whether each was ever flagged."""
    logs = np.log(np.maximum(evalues, 1e-300))
    w = np.zeros(sims)
    done = np.full(sims, horizon + 1)
    flagged = np.zeros(sims, dtype=bool)
    for k in range(1, horizon + 1):
        w = np.maximum(w + logs[rng.integers(0, len(logs), sims)], -params.floor)
        flagged |= w >= params.flag_at
        newly = (w >= params.jail_at) & (done > horizon)
        done[newly] = k
        if (done <= horizon).all():
            break
    return done, flagged


def onchain_counts(scores: np.ndarray, level: float, count: int, weight: int, sims: int,
                   rng: np.random.Generator, horizon: int = MAX_CHECKS) -> np.ndarray:
    """Checks until the contract's CUSUM (+`weight` per check scored above `level`, -1 otherwise,
    floored at 0) reaches weight * count for each of `sims` operators whose checks score like
    `scores` (horizon + 1: never)."""
    hits = scores > level
    draws = hits[rng.integers(0, len(hits), (sims, horizon))]
    score = np.zeros(sims, dtype=np.int64)
    done = np.full(sims, horizon + 1)
    for k in range(horizon):
        score = np.where(draws[:, k], score + weight, np.maximum(score - 1, 0))
        newly = (score >= weight * count) & (done > horizon)
        done[newly] = k + 1
    return done


def models_for(prec: str, quick: bool):
    out = []
    if smollm2_available() and not quick:
        out.append(("smollm2", lambda: load_smollm2(DTYPES[prec])))
    out.append(("tiny-llama", lambda: tiny_model("llama", 0, DTYPES[prec])))
    if not quick:
        out.append(("tiny-qwen2-heldout", lambda: tiny_model("qwen2", 5, DTYPES[prec], layers=4, hidden=96,
                                                            heads=3, kv_heads=1, mlp=256)))
    return out


def run_precision(prec: str, quick: bool, clock: Clock) -> dict:
    prof = SHIPPED[prec]
    params = SprtParams.for_bound(1e-6, 1_000_000)
    rng = np.random.default_rng(7)
    benign, attacks = [], {a: [] for a in PROOF_ATTACKS + STATISTICAL_ATTACKS}
    for name, load in models_for(prec, quick):
        lab = Lab(load(), name)
        small = name == "smollm2"
        if quick:
            sizes, modes = (1, 4), ("decode1", "chunked")
        elif small:
            sizes, modes = (1, 4, 16), ("decode1", "chunked", "prefill", "decode1")
        elif name.endswith("heldout"):
            sizes, modes = (1, 8, 32), ("decode1", "chunked", "prefill", "decode1")
        else:
            sizes, modes = (1, 2, 4, 8, 16, 32) * 2, ("decode1", "chunked", "prefill", "decode1")
        groups = serve_mix(lab, np.random.default_rng(2000 + len(benign)), sizes, modes,
                           20 if small else 40, 10 if small else 20)
        got = benign_checks(lab, name, groups, prof.proof, prof, pipelines=(3,) if small else (2, 3),
                            window=WINDOW)
        if small:
            # longer requests (prompts up to 64, up to 32 new tokens) over 2- and 3-stage pipelines:
            # the rows whose massive activation the last layers cancel (bf16's largest honest noise)
            long = [(f"long-{how}", runs) for how, runs in serve_mix(
                lab, np.random.default_rng(2500), (12,), ("decode1", "chunked", "prefill"), 64, 32)]
            got_long = benign_checks(lab, name, long, prof.proof, prof, pipelines=(2, 3), window=WINDOW)
            print(f"{prec}_{name}_long_false_alarms: {sum(failed(c, prof) for c in got_long)}/{len(got_long)}")
            got += got_long
        whole = sum("@" not in c.how for c in got)
        print(f"{prec}_{name}_checks: {len(got)} ({whole} whole-request stage checks, the rest "
              f"{WINDOW}-position slices of them)")
        fa = sum(failed(c, prof) for c in got)
        print(f"{prec}_{name}_false_alarms: {fa}/{len(got)} ({clock():.0f} s)", flush=True)
        for c in [c for c in got if failed(c, prof)][:3]:
            print(f"  false alarm {c.how} stage {c.stage}: score {c.m.score:.4g} row {c.m.row_score:.4g} "
                  f"chunks {c.m.failing_chunks} tokens {c.tokens_ok}")
        benign += got
        if name.endswith("heldout"):
            continue
        # attacks: requests of one length (so rows can be replayed), the stages of real pipelines
        n_req = 3 if quick else (4 if small else 8)
        arng = np.random.default_rng(3000)
        runs = lab.serve([lab.prompt(arng, 16) for _ in range(n_req)], [8] * n_req)
        stages = stage_sets(lab.n_layers, singles=False, pipelines=(2, 3))
        lower = Lab(copy.deepcopy(lab.model).to(torch.bfloat16), name) if prec == "fp32" else None
        for attack in attacks:
            got_a = attack_checks(lab, name, attack, runs, stages, prof, arng, lower=lower)
            attacks[attack] += got_a
        print(f"{prec}_{name}_attacks_done: {len(attacks)} attacks ({clock():.0f} s)", flush=True)
    res = {}
    fa = sum(failed(c, prof) for c in benign)
    res["false_alarms"] = (fa, len(benign))
    print(f"{prec}_false_alarms: {fa}/{len(benign)} (95 % upper bound {clopper_pearson_upper(fa, len(benign)):.2e})")
    for a in PROOF_ATTACKS:
        cs = attacks[a]
        det = sum(failed(c, prof) for c in cs) / len(cs)
        res[f"detect_{a}"] = det
        print(f"{prec}_detect_{a}: {det:.3f} ({sum(failed(c, prof) for c in cs)}/{len(cs)})")
    worst = min(PROOF_ATTACKS, key=lambda a: res[f"detect_{a}"])
    res["detect_min"] = (res[f"detect_{worst}"], worst)
    print(f"{prec}_detect_min: {res[f'detect_{worst}']:.3f} ({worst})")
    sims = 400 if quick else 2000
    rule = suspect_rule(prof.evidence, 1e-6, 100_000, threshold=VerificationParams().suspect_threshold)
    b_scores = np.array([c.m.score for c in benign])
    b_e = np.array([prof.evidence.evalue(s) for s in b_scores])
    horizon = 1000 if quick else 5000
    done, flagged = eject_counts(b_e, params, sims, rng, horizon)
    print(f"{prec}_honest_operators_jailed: {(done <= horizon).sum()}/{sims} (each {horizon} "
          f"checks drawn from the benign ones; flagged at some point: {flagged.sum()})")
    print(f"{prec}_sprt: jail at log-wealth {params.jail_at:.2f}, floor -{params.floor:.2f}, flag at "
          f"{params.flag_at:.2f}: lifetime false-ejection bound {params.false_ejection_bound():.2e} over "
          f"{params.lifetime_checks:.0e} checks")
    print(f"{prec}_onchain_suspect_rule: score > {rule.level:.4g} (honest tail <= {rule.tail:.2e}), CUSUM "
          f"+{rule.weight}/-1 jails at {rule.weight * rule.count} (suspect_threshold {rule.count}): bound "
          f"{rule.bound:.2e} over {rule.lifetime_checks:.0e} checks")
    oc_honest = onchain_counts(b_scores, rule.level, rule.count, rule.weight, sims, rng, horizon)
    print(f"{prec}_onchain_honest_jailed: {(oc_honest <= horizon).sum()}/{sims} (each {horizon} checks "
          f"drawn from the benign ones; {(b_scores > rule.level).sum()}/{len(b_scores)} benign checks "
          f"above the suspect level)")
    for a in STATISTICAL_ATTACKS:
        cs = attacks[a]
        e = np.array([prof.evidence.evalue(c.m.score) for c in cs])
        n, _ = eject_counts(e, params, sims, rng)
        p50 = float(np.median(n))
        res[f"eject_{a}"] = p50
        oc = onchain_counts(np.array([c.m.score for c in cs]), rule.level, rule.count, rule.weight, sims, rng)
        proof = sum(failed(c, prof) for c in cs) / len(cs)
        print(f"{prec}_checks_to_eject_p50_{a}: {p50:g}{' (never, within ' + str(MAX_CHECKS) + ')' if p50 > MAX_CHECKS else ''} "
              f"(mean log e per check {np.log(e).mean():.2f}; on-chain CUSUM p50 {float(np.median(oc)):g}; "
              f"proof-grade on one check {proof:.2f})")
    return res


def overhead(quick: bool) -> tuple[float, dict]:
    """Wall seconds: the request's inference (prompt + generated tokens, cached decode through every
    layer) vs one stage check (the first half of the layers: one prefill + assess), fp32."""
    if smollm2_available() and not quick:
        lab, name = Lab(load_smollm2(torch.float32), "smollm2"), "smollm2"
    else:
        lab, name = Lab(tiny_model(), "tiny-llama"), "tiny-llama"
    rng = np.random.default_rng(11)
    prompt, new = (lab.prompt(rng, 32), 16) if quick else (lab.prompt(rng, 64), 64)
    reps = 1 if quick else 3
    infer, check, judge = [], [], []
    prof = SHIPPED["fp32"]
    half = lab.n_layers // 2
    for _ in range(reps):
        t0 = time.perf_counter()
        run = lab.serve([prompt], [new], "decode1")[0]
        infer.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rec = lab.recompute([lab.stage_input(run, 0)], 0, half)[0]
        t1 = time.perf_counter()
        assess(run.rows[half], rec, half, prof)
        check.append(time.perf_counter() - t0)
        judge.append(time.perf_counter() - t1)
    return statistics.median(check) / statistics.median(infer), {"model": name, "infer_s": statistics.median(infer),
                                                                 "check_s": statistics.median(check),
                                                                 "assess_s": statistics.median(judge)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the tiny model only, a few requests (< 1 min)")
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()
    clock = Clock()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # measured: 2 threads on this shared 2-core box run 30x slower (spinning)
    vp = VerificationParams()
    p, m = vp.sample_bps / 10_000, vp.committee_size
    out = {prec: run_precision(prec, args.quick, clock) for prec in args.precisions.split(",")}
    ratio, ov = overhead(args.quick)
    v = p * m * ratio
    parts = []
    for prec, r in out.items():
        fa, n = r["false_alarms"]
        print(f"false_alarms_{prec}: {fa}/{n} (95 % upper bound {clopper_pearson_upper(fa, n):.2e})")
        print(f"detect_min_{prec}: {r['detect_min'][0]:.3f} ({r['detect_min'][1]})")
        for a in STATISTICAL_ATTACKS:
            print(f"checks_to_eject_p50_{prec}_{a}: {r[f'eject_{a}']:g}")
        worst = max(r[f"eject_{a}"] for a in STATISTICAL_ATTACKS)
        parts.append(f"{prec}: {fa}/{n} false alarms, detect_min {r['detect_min'][0]:.3f}, worst eject p50 {worst:g}")
    print(f"verify_overhead: {v:.4f} (p={p}, m={m}; {ov['model']} fp32: stage check {ov['check_s'] * 1e3:.0f} ms "
          f"(of which assess {ov['assess_s'] * 1e3:.0f} ms) vs inference {ov['infer_s'] * 1e3:.0f} ms)")
    print(f"bench_seconds: {clock():.0f}")
    print("summary: " + "; ".join(parts) + f"; verify_overhead {v:.4f}")


if __name__ == "__main__":
    main()
