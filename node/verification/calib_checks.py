"""Benign and attacked stage checks measured on a `verify_lab.Lab`, for calibration, tests and bench.

`benign_checks` serves requests the legitimate ways (padded batches of 1–32 mixed-length requests,
one request at a time, chunked or whole prefills, 1 or 2 threads) and checks **many stages per
request** — every single layer, the stages of 2- and 3-stage pipelines, the whole model — each with
the verifier's one prefill from the stage's committed input (batched or not), plus the token check
on stages that end the model. Rows are computed once per request and sliced per stage, so ten
thousand checks cost a few hundred forward passes.

`attack_checks` runs each cheat of `ATTACKS` on honest inputs (`PROOF_ATTACKS` must fail on one
check, `STATISTICAL_ATTACKS` must accumulate) and measures it the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from node.verification.calib_lab import (
    Lab,
    Run,
    Skip,
    half_mlp,
    perturb_layer,
    prune_heads,
    quantize_layer,
    to_bf16,
)
from protocol.sampling import Sampling as SamplingSpec
from verifier.calibrate import D_CANDIDATES
from verifier.evidence import Measurement, Profile, ProofLimits, measure, proof_verdict
from verifier.tokens import check_tokens, reproduce_token

PROOF_ATTACKS = ("other_model", "smaller_model", "int4_all", "skip_layer", "early_exit",
                 "decode_only", "forged_row", "replayed_rows", "random_tokens", "draft_tokens",
                 "other_seed")
# int4_one (4-bit weights in one layer of the stage) is statistical: in bf16 an honest row whose
# massive activation the stage's last layers cancel carries its earlier noise at the massive
# value's scale (SmolLM2, 30 layers: 0.06-0.18 relative error, 16 of 32 elements of a chunk beyond
# 12 scale ulps), more than one 4-bit layer inside a 10-30-layer stage puts in any row (0.06-0.10);
# only the check's aggregate separates them (1.6x the worst honest rms over 30 layers), so it
# accumulates (its scores sit above the evidence scale's top level) instead of proving on one check.
STATISTICAL_ATTACKS = ("int4_one", "int8_one", "noise_1pct", "lower_precision", "pruned_head")
ATTACKS = PROOF_ATTACKS + STATISTICAL_ATTACKS
TOKEN_ATTACKS = ("random_tokens", "draft_tokens", "other_seed")
SAMPLED = SamplingSpec(0.7, 0.9, 1234)


@dataclass
class Check:
    """One stage check: what was checked, how it measured, and the token verdict where one ran."""

    model: str
    stage: tuple[int, int]
    how: str  # the worker's way (benign) or the attack
    m: Measurement
    tokens_ok: bool | None = None

    @property
    def layers(self) -> int:
        return self.stage[1] - self.stage[0]


def stage_sets(n_layers: int, singles: bool = True, pipelines: Sequence[int] = (2, 3)) -> list[tuple[int, int]]:
    """Every single layer, the stages of 2- and 3-stage pipelines, and the whole model."""
    out = [(i, i + 1) for i in range(n_layers)] if singles else []
    for k in pipelines:
        cuts = [round(j * n_layers / k) for j in range(k + 1)]
        out += [(cuts[j], cuts[j + 1]) for j in range(k)]
    out.append((0, n_layers))
    return sorted(set(out))


def _measure(claimed: torch.Tensor, rec: torch.Tensor, layers: int, limits: ProofLimits,
             kappa: float, candidates: bool = False) -> Measurement:
    return measure(to_bf16(claimed), to_bf16(rec), layers, limits, kappa, D_CANDIDATES if candidates else ())


def _tokens_ok(lab: Lab, rows: torch.Tensor, run: Run, tokens: Sequence[int], spec: SamplingSpec,
               profile: Profile | None) -> bool | None:
    if profile is None:
        return None
    logits = lab.logits_fp32(rows)[run.prompt_len - 1: run.prompt_len - 1 + len(tokens)]
    return check_tokens(logits, list(tokens), run.prompt_len, spec, profile.logit_tol, profile.mass_tol).passed


def _sampled(logits: torch.Tensor, first: int, spec: SamplingSpec) -> list[int]:
    return [reproduce_token(logits[i], spec, first + i) for i in range(logits.shape[0])]


def serve_mix(lab: Lab, rng: np.random.Generator, batch_sizes: Sequence[int], modes: Sequence[str],
              max_prompt: int, max_new: int) -> list[tuple[str, list[Run]]]:
    """Groups of honestly served requests: one padded batch per size, then one group per mode."""
    groups = []
    for b in batch_sizes:
        ps = [lab.prompt(rng, int(rng.integers(3, max_prompt + 1))) for _ in range(b)]
        groups.append((f"batched{b}", lab.serve(ps, [int(rng.integers(2, max_new + 1)) for _ in ps])))
    for i, mode in enumerate(modes):  # every other one on 2 threads (the default here is 1)
        ps = [lab.prompt(rng, int(rng.integers(3, max_prompt + 1))) for _ in range(2)]
        groups.append((f"{mode}-{2 if i % 2 else 1}threads",
                       lab.serve(ps, [int(rng.integers(2, max_new + 1)) for _ in ps], mode, 2 if i % 2 else 1)))
    return groups


@torch.inference_mode()
def benign_checks(lab: Lab, name: str, groups: Iterable[tuple[str, list[Run]]], limits: ProofLimits,
                  profile: Profile | None = None, singles: bool = True,
                  logit_pairs: list | None = None, pipelines: Sequence[int] = (2, 3),
                  window: int = 0) -> list[Check]:
    """Every stage of `stage_sets` of every served request, checked by the verifier; with `window`,
    also each run of `window` consecutive positions as a check of its own (a verifier checking a
    slice of a request: causal attention makes the first positions' rows those of a shorter
    prefill)."""
    kappa = profile.depth_exponent if profile else 0.0
    out: list[Check] = []
    L = lab.n_layers
    for g, (how, runs) in enumerate(groups):
        for a, b in stage_sets(L, singles, pipelines):
            recs = lab.recompute([lab.stage_input(r, a) for r in runs], a, b, batched=g % 2 == 1)
            for r, rec in zip(runs, recs, strict=True):
                lim = profile.proof if profile else limits
                m = _measure(r.rows[b], rec, b - a, lim, kappa, profile is None)
                for s in range(0, rec.shape[0] - window + 1, window) if window else ():
                    # a check of the positions [s, s + window) alone: causal, so the same rows
                    wm = _measure(r.rows[b][s:s + window], rec[s:s + window], b - a, lim, kappa, profile is None)
                    out.append(Check(name, (a, b), f"{how}@{s}", wm, None))
                tok = None
                if b == L:
                    spec = SAMPLED if (g + len(r.ids)) % 2 else SamplingSpec()
                    assert r.logits is not None
                    toks = r.tokens if spec.greedy else _sampled(r.logits, r.prompt_len, spec)
                    tok = _tokens_ok(lab, r.rows[L], r, toks, spec, profile)  # the claimed rows' logits
                    if logit_pairs is not None and a == 0:
                        n = len(r.tokens)
                        mine = lab.logits_fp32(r.rows[L])[r.prompt_len - 1: r.prompt_len - 1 + n]
                        logit_pairs.append((r.logits.numpy(), mine.numpy()))
                out.append(Check(name, (a, b), how, m, tok))
    return out


# ── attacks ───────────────────────────────────────────────────────────────────────────────────
def _edits(lab: Lab, attack: str, a: int, b: int) -> dict | None:
    mid = (a + b) // 2
    head_dim = lab.config.hidden_size // lab.config.num_attention_heads
    every = range(a, b)
    table: dict[str, Callable[[], dict]] = {
        "other_model": lambda: {i: perturb_layer(lab.layers[i], 0.01, i) for i in every},
        "smaller_model": lambda: {i: half_mlp(lab.layers[i]) for i in every},
        "int4_all": lambda: {i: quantize_layer(lab.layers[i], "int4") for i in every},
        "int4_one": lambda: {mid: quantize_layer(lab.layers[mid], "int4")},
        "int8_one": lambda: {mid: quantize_layer(lab.layers[mid], "int8")},
        "skip_layer": lambda: {mid: Skip()},
        "pruned_head": lambda: {mid: prune_heads(lab.layers[mid], [0], head_dim)},
    }
    return table[attack]() if attack in table else None


@torch.inference_mode()
def attack_checks(lab: Lab, name: str, attack: str, runs: Sequence[Run], stages: Sequence[tuple[int, int]],
                  profile: Profile, rng: np.random.Generator, lower: Lab | None = None) -> list[Check]:
    """`attack` on each (run, stage), the verifier judging with `profile`. `lower` is the model in
    the lower precision (lower_precision: bf16 where fp32 is registered, fp8 weights where bf16 is)."""
    out = []
    L = lab.n_layers
    for a, b in stages:
        if attack in TOKEN_ATTACKS and b != L:
            continue
        inputs = [lab.stage_input(r, a) for r in runs]
        recs = lab.recompute(inputs, a, b)
        edits = _edits(lab, attack, a, b)
        if edits is not None:
            claims = lab.recompute(inputs, a, b, edits=edits)
        elif attack == "lower_precision":
            if lower is not None:
                claims = [c.to(lab.dtype) for c in lower.recompute(inputs, a, b)]
            else:
                claims = lab.recompute(inputs, a, b, edits={i: quantize_layer(lab.layers[i], "fp8") for i in range(a, b)})
        elif attack in ("early_exit", "decode_only"):
            if attack == "early_exit":  # the stage's last third skipped on a quarter of the positions
                cut = b - max(1, (b - a) // 3)
                bad = lab.recompute(inputs, a, b, edits={i: Skip() for i in range(cut, b)})
            else:  # 4-bit weights in every layer, on generated positions only
                bad = lab.recompute(inputs, a, b, edits={i: quantize_layer(lab.layers[i], "int4") for i in range(a, b)})
            claims = []
            for r, x in zip(runs, bad, strict=True):
                c = r.rows[b].clone()
                if attack == "early_exit":
                    pick = torch.from_numpy(rng.random(c.shape[0]) < 0.25)
                    pick[int(rng.integers(0, c.shape[0]))] = True
                else:
                    pick = torch.arange(c.shape[0]) >= r.prompt_len - 1
                c[pick] = x[pick]
                claims.append(c)
        elif attack == "noise_1pct":
            claims = []
            for r in runs:
                h = r.rows[b].float()
                rms = h.pow(2).mean(1, keepdim=True).sqrt()
                g = torch.from_numpy(rng.standard_normal(tuple(h.shape)).astype(np.float32))
                claims.append((h + g * rms * 0.01).to(lab.dtype))
        elif attack == "forged_row":
            claims = []
            for r in runs:
                c = r.rows[b].clone()
                p = int(rng.integers(0, c.shape[0]))
                rms = c[p].float().pow(2).mean().sqrt()
                c[p] = (torch.from_numpy(rng.standard_normal(c.shape[1]).astype(np.float32)) * rms).to(c.dtype)
                claims.append(c)
        elif attack == "replayed_rows":
            claims = [runs[(i + 1) % len(runs)].rows[b] for i in range(len(runs))]
        else:  # token attacks: honest rows
            claims = [r.rows[b] for r in runs]
        for i, (r, rec, c) in enumerate(zip(runs, recs, claims, strict=True)):
            if c.shape != rec.shape:
                raise ValueError(f"{attack}: claimed {tuple(c.shape)} vs recomputed {tuple(rec.shape)}")
            m = _measure(c, rec, b - a, profile.proof, profile.depth_exponent)
            tok = None
            if b == L:
                n = len(r.tokens)
                spec, toks = SamplingSpec(), r.tokens
                worker = lab.logits_fp32(c)[r.prompt_len - 1: r.prompt_len - 1 + n]  # the cheat's own logits
                if attack == "random_tokens":
                    toks = [int(t) for t in rng.integers(0, lab.vocab, n)]
                elif attack == "draft_tokens":  # a self-speculative draft: the stage's second half skipped
                    drows = lab.recompute([inputs[i]], a, b, edits={j: Skip() for j in range((a + b + 1) // 2, b)})[0]
                    toks = [int(t) for t in lab.logits_fp32(drows)[r.prompt_len - 1: r.prompt_len - 1 + n].argmax(-1)]
                elif attack == "other_seed":
                    spec = SAMPLED
                    assert r.logits is not None
                    toks = _sampled(r.logits, r.prompt_len, SamplingSpec(SAMPLED.temperature, SAMPLED.top_p,
                                                                         SAMPLED.seed + 1))
                elif edits is not None or attack == "lower_precision":
                    toks = [int(t) for t in worker.argmax(-1)]  # the cheat's own greedy choices
                tok = _tokens_ok(lab, c, r, toks, spec, profile)  # against the claimed rows' logits
            out.append(Check(name, (a, b), attack, m, tok))
    return out


def failed(check: Check, profile: Profile) -> bool:
    """Proof-grade failure: rows beyond the proof limits, or tokens the logits do not explain."""
    return proof_verdict(check.m, profile.proof).failed or check.tokens_ok is False


class Clock:
    """Seconds since start, for progress lines."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0
