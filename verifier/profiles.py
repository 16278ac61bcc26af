"""Shipped threshold profiles: `Thresholds` fitted on benign noise, one per compute precision.

Each profile is the output of `bench/tolerance.py` (which calls `verifier.calibrate.fit_thresholds`
with its default `FitOptions`: margin 4, rate floor 1e-3, binomial chunk tail 1e-9) on a tiny random
Llama, rounded outward. README.md gives the run, the benign figures they rest on and the held-out
results. A deployment should re-fit on its own model and hardware and ship the JSON
(`Thresholds.from_json`); tests hold these profiles to fresh benign and attack pairs.

- `FP32`: the stage runs in float32; the verifier's input rows are the worker's, or their bf16
  rounding (what the previous stage's commitment authenticates) — both regimes were in the fit.
- `BF16`: the stage runs in bfloat16 (the GPU case): rows and inputs are bf16 on both sides.
"""

from __future__ import annotations

from verifier.tolerance import Thresholds

FP32 = Thresholds(
    min_exponent_agreement=0.96,
    min_row_exponent_agreement=0.9,
    max_mantissa_mean_ulp=3.1,
    ulp_k=1,
    max_frac_beyond_k=0.39,
    max_row_frac_beyond_k=0.55,
    scaled_k=1,
    max_scaled_frac_beyond_k=0.001,
    max_row_scaled_frac_beyond_k=0.001,
    max_rel_err=0.011,
    max_row_rel_err=0.013,
    chunk_max_ulp=1,
    chunk_max_bad=4,
    max_failing_chunk_frac=0.0,
    logit_tol=1e-3,
    mass_tol=1e-4,
)

BF16 = Thresholds(
    min_exponent_agreement=0.87,
    min_row_exponent_agreement=0.74,
    max_mantissa_mean_ulp=10.2,
    ulp_k=1,
    max_frac_beyond_k=1.0,
    max_row_frac_beyond_k=1.0,
    scaled_k=1,
    max_scaled_frac_beyond_k=0.001,
    max_row_scaled_frac_beyond_k=0.001,
    max_rel_err=0.03,
    max_row_rel_err=0.036,
    chunk_max_ulp=6,
    chunk_max_bad=4,
    max_failing_chunk_frac=0.0,
    logit_tol=1e-2,
    mass_tol=1e-3,
)

PROFILES: dict[str, Thresholds] = {"fp32": FP32, "bf16": BF16}
