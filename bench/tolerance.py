"""Calibrate the tolerance test on a tiny random Llama and report it on held-out prompts.

For each precision profile (fp32: the verifier's input is either the worker's exact rows or their
bf16 rounding, i.e. what the previous stage's commitment authenticates; bf16: model and rows in
bf16), builds benign (claimed, recomputed) pairs — a worker computing the stage repeated, on 1
thread, in a batch of 4, by cached decode, with eager attention; the verifier recomputing with one
sdpa prefill — on *fit* prompts, fits `Thresholds` with `verifier.calibrate.fit_thresholds`, then
judges benign pairs on *held-out* prompts (other seeds and lengths) and every attack of
`tests/verifier/lab.py` on them; token tolerances are fitted on cached-decode vs prefill logits and
checked on held-out token sequences (honest: drawn from the worker's logits; forged: random). Prints one `name: value` line per figure, the fitted thresholds as
JSON (the source of `verifier/profiles.py`), then a summary. The model is built in memory from a
seed; nothing is downloaded.

    .venv/bin/python bench/tolerance.py [--quick] [--profiles fp32,bf16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from protocol.sampling import Sampling  # noqa: E402
from tests.support.lab import ATTACKS, TinyLab, attack_pairs, benign_pairs, prompts, tiny_llama  # noqa: E402
from verifier.calibrate import clopper_pearson_upper, evaluate, fit_thresholds  # noqa: E402
from verifier.profiles import PROFILES  # noqa: E402
from verifier.tokens import check_tokens, reproduce_token  # noqa: E402
from verifier.tolerance import judge  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def pairs(named):
    return [(c, r) for _, c, r in named]


def run_profile(name: str, quick: bool) -> dict:
    lab = TinyLab(tiny_llama(0, dtype=DTYPES[name]))
    n_fit, n_held, length = (2, 2, 32) if quick else (6, 50, 64)  # full: >= 1,000 benign fp32 pairs
    regimes = (False, True) if name == "fp32" else (False,)  # rounding bf16 rows is a no-op in bf16
    t0 = time.perf_counter()
    fit = [p for r in regimes for p in benign_pairs(lab, prompts(n_fit, length, 1), rounded_inputs=r)]
    # token tolerances: logits of cached decode (the worker) vs one prefill (the verifier)
    fit_ids = prompts(n_fit, length, 1)
    logit_pairs = [(lab.logits(ids, decode=True), lab.logits(ids)) for ids in fit_ids]
    th = fit_thresholds(pairs(fit), logit_pairs=logit_pairs)
    held_prompts = torch.cat([prompts(n_held // 2, length, 2), prompts(n_held - n_held // 2, length + 31, 3)[:, :length]])
    held = [p for r in regimes for p in benign_pairs(lab, held_prompts, rounded_inputs=r)]
    attacks = {a: [p for r in regimes for p in attack_pairs(lab, held_prompts[: min(6, n_held)], a,
                                                            rounded_inputs=r)] for a in ATTACKS}
    token_data = [(lab.logits(ids, decode=True), lab.logits(ids)) for ids in held_prompts]
    out = {"fit_pairs": len(fit), "thresholds": th}
    for label, t in (("fitted", th), ("shipped", PROFILES[name])):
        ev = evaluate(pairs(held), t)
        fa = ev.trials - ev.passed
        print(f"{name}_{label}_false_alarms: {fa}/{ev.trials}", flush=True)
        print(f"{name}_{label}_false_alarm_upper95: {clopper_pearson_upper(fa, ev.trials):.4f}")
        for reason in ev.reasons:
            print(f"  false alarm reason: {reason}")
        rates = []
        for attack, ap in attacks.items():
            verdicts = [judge(c, r, t) for _, c, r in ap]
            caught = sum(not v.passed for v in verdicts)
            rates.append(caught / len(ap))
            chunk_fail = min(v.stats.failing_chunk_frac for v in verdicts)
            print(f"{name}_{label}_detect_{attack}: {caught / len(ap):.3f} ({caught}/{len(ap)}; "
                  f"lowest fraction of chunks failing the chunk rule {chunk_fail:.3f})", flush=True)
        tok_fa, tok_n, tok_caught = token_checks(token_data, t)
        print(f"{name}_{label}_token_false_alarms: {tok_fa}/{tok_n}")
        print(f"{name}_{label}_token_detect_random: {tok_caught / tok_n:.3f} ({tok_caught}/{tok_n})")
        rates.append(tok_caught / tok_n)
        out[label] = (fa + tok_fa, ev.trials + tok_n, min(rates))
    print(f"{name}_benign_worst: {json.dumps({k: round(v, 6) for k, v in ev.worst.items()})}")
    print(f"{name}_fit_pairs: {len(fit)}")
    print(f"{name}_fitted_thresholds: {json.dumps(th.to_json())}")
    print(f"{name}_seconds: {time.perf_counter() - t0:.1f}")
    return out


def token_checks(token_data, th) -> tuple[int, int, int]:
    """Tokens a worker drew from its cached-decode logits, checked against the verifier's prefill
    logits (greedy, and sampling at two seeds): (false alarms, sequences, random sequences caught)."""
    rng = np.random.default_rng(0)
    specs = (Sampling(), Sampling(0.7, 0.9, 11), Sampling(1.0, 1.0, 12))
    fa = caught = n = 0
    for worker, verifier in token_data:
        for spec in specs:
            honest = [reproduce_token(worker[i], spec, i + 1) for i in range(len(worker))]
            fa += not check_tokens(verifier, honest, 1, spec, th.logit_tol, th.mass_tol).passed
            forged = [int(t) for t in rng.integers(0, verifier.shape[1], len(honest))]
            caught += not check_tokens(verifier, forged, 1, spec, th.logit_tol, th.mass_tol).passed
            n += 1
    return fa, n, caught


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer, shorter prompts (< 1 min)")
    ap.add_argument("--profiles", default="fp32,bf16", help="comma-separated: fp32, bf16")
    args = ap.parse_args()
    names = [p for p in args.profiles.split(",") if p]
    for p in names:
        if p not in DTYPES:
            ap.error(f"unknown profile {p!r}; choose from {sorted(DTYPES)}")
    if args.quick:
        names = [p for p in names if p == "fp32"] or names[:1]  # bf16 matmuls are slow on CPU
    results = {p: run_profile(p, args.quick) for p in names}
    parts = []
    for p, r in results.items():
        fa, n, detect = r["shipped"]
        parts.append(f"{p}: shipped profile {fa}/{n} held-out false alarms, lowest detection {detect:.2f}")
    print("summary: " + "; ".join(parts))


if __name__ == "__main__":
    main()
