"""Shipped verification profiles, one per serving precision.

- `SHIPPED["fp32"]`, `SHIPPED["bf16"]` (`verifier.evidence.Profile`): the two kinds of evidence —
  depth-normalized proof-grade limits, the chunk rule, the statistical evidence scale, token
  tolerances — fitted by `bench/tolerance.py` (`verifier.calibrate.fit_profile`) on benign checks
  of SmolLM2-135M and a tiny random Llama served in padded batches with batched decode, one at a
  time, chunked and whole prefills, on 1 or 2 threads. Their `hash` is what
  `ModelRegistry.set_serving` records; `bench/verify.py` and `tests/verifier/test_profiles.py`
  hold them to fresh data and a held-out model. README.md: "Two kinds of evidence".
- `FP32`, `BF16` (`verifier.tolerance.Thresholds`, legacy): the single-shot thresholds `judge`
  takes, fitted on the lab's tiny Llama (README "Calibration"); `node/verification/jobs.py` and
  `veriplex verify-stage` still judge with them. They do not transfer between models in bf16.

`widen(fit, base)` makes a deployment's own fit (`veriplex calibrate`) never tighter than a base.
"""

from __future__ import annotations

from verifier.tolerance import Thresholds

FP32 = Thresholds(
    min_exponent_agreement=0.96,
    min_row_exponent_agreement=0.89,
    max_mantissa_mean_ulp=3.0,
    ulp_k=1,
    max_frac_beyond_k=0.19,
    max_row_frac_beyond_k=0.55,
    max_rel_err=0.011,
    max_row_rel_err=0.013,
    scaled_k=1,
    max_scaled_frac_beyond_k=0.001,
    max_row_scaled_frac_beyond_k=0.016,
    chunk_max_ulp=1,
    chunk_max_bad=4,
    max_failing_chunk_frac=0.0,
    logit_tol=1e-5,
    mass_tol=2e-6,
)

BF16 = Thresholds(
    min_exponent_agreement=0.88,
    min_row_exponent_agreement=0.71,
    max_mantissa_mean_ulp=10.5,
    ulp_k=1,
    max_frac_beyond_k=0.84,
    max_row_frac_beyond_k=1.0,
    max_rel_err=0.029,
    max_row_rel_err=0.036,
    scaled_k=1,
    max_scaled_frac_beyond_k=0.074,
    max_row_scaled_frac_beyond_k=0.44,
    chunk_max_ulp=6,
    chunk_max_bad=4,
    max_failing_chunk_frac=0.0,
    logit_tol=0.08,
    mass_tol=0.009,
)

PROFILES: dict[str, Thresholds] = {"fp32": FP32, "bf16": BF16}


# ── profiles with two kinds of evidence (verifier.evidence.Profile) ────────────────────────────
# Fitted by `bench/tolerance.py` (SmolLM2-135M + a tiny random Llama, CPU; README "Profiles");
# `bench/verify.py` and tests/verifier/test_profiles.py hold them to fresh data and held-out models.
from verifier.evidence import Profile, ProofLimits  # noqa: E402

_FITTED: dict[str, dict] = {  # bench/tolerance.py's output, verbatim
    "fp32": {
        "version": 1,
        "precision": "fp32",
        "depth_exponent": 0.306,
        "proof": {
            "max_row_err": 0.0036192176857822167,
            "max_score": 0.0007059691399465735,
            "chunk_max_ulp": 1,
            "chunk_max_bad": 2,
            "trim": 4,
        },
        "evidence": {
            "levels": [
                2.4459259843183686e-08,
                8.790409048510366e-06,
                4.468188725373228e-05,
                0.00010112824844944697,
                0.00035298456997328676,
            ],
            "null_tails": [
                0.7717761332479602,
                0.3176730858663602,
                0.08517802567826066,
                0.020169444193652637,
                0.001371045315930611,
            ],
            "alt_tails": [0.95, 0.85, 0.7, 0.5, 0.3],
        },
        "logit_tol": 0.0004129873046875,
        "mass_tol": 2.8879674430340242e-05,
        "note": "fitted by bench/tolerance.py on 3276 benign checks (smollm2, tiny-llama)",
    },
    "bf16": {
        "version": 1,
        "precision": "bf16",
        "depth_exponent": 0.721,
        "proof": {
            "max_row_err": 0.046970653058922285,
            "max_score": 0.014865443984417345,
            "chunk_max_ulp": 32,
            "chunk_max_bad": 4,
            "trim": 4
        },
        "evidence": {
            "levels": [
                0.0010456027420572222,
                0.0019164892498674485,
                0.00294545062620115,
                0.0041228932802180145,
                0.007432721992208673
            ],
            "null_tails": [
                0.7679137070666231,
                0.3146282327787464,
                0.08346692724021323,
                0.01930536542276554,
                0.0009312196151815835
            ],
            "alt_tails": [
                0.95,
                0.85,
                0.7,
                0.5,
                0.3
            ]
        },
        "logit_tol": 0.000397728515625,
        "mass_tol": 3.7070294956335434e-05,
        "note": "fitted by bench/tolerance.py on 4824 benign checks (smollm2 incl. requests of up to 64 + 32 tokens, tiny-llama)"
    },
}

SHIPPED: dict[str, Profile] = {k: Profile.from_json(v) for k, v in _FITTED.items()}


def widen(fit: Profile, base: Profile, max_depth: int = 128) -> Profile:
    """`fit`, never tighter than `base`: proof bounds and token tolerances take the wider of the
    two (`base`'s bounds carried to `fit`'s depth normalization at the worst depth up to
    `max_depth`), the chunk rule the wider D and K; the evidence scale stays `fit`'s own."""
    carry = max(n ** (base.depth_exponent - fit.depth_exponent) for n in range(1, max_depth + 1))
    p, q = fit.proof, base.proof
    proof = ProofLimits(
        max_row_err=max(p.max_row_err, q.max_row_err * carry),
        max_score=max(p.max_score, q.max_score * carry),
        chunk_max_ulp=max(p.chunk_max_ulp, q.chunk_max_ulp),
        chunk_max_bad=max(p.chunk_max_bad, q.chunk_max_bad),
        trim=p.trim,
    )
    return Profile(
        fit.precision,
        fit.depth_exponent,
        proof,
        fit.evidence,
        max(fit.logit_tol, base.logit_tol),
        max(fit.mass_tol, base.mass_tol),
        fit.note,
    )
