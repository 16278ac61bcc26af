"""Calibration: fit `Thresholds` to benign noise with a margin, and report them on held-out pairs.

Input is pairs of rows that differ only by benign noise — the same stage computed two legitimate
ways (threads 1 vs 2, batch 1 vs 4, cached decode vs one prefill, eager vs sdpa attention, repeated
runs). Producing them needs a model, which is the caller's business; here everything is pure:

1. the chunk rule (D, K): for each candidate D (in scale ulps, see `verifier.chunk_rule`), take the
   worst per-row rate at which benign elements are more than D scale ulps apart, widen it by `margin`, and let K be the smallest count that 32 such
   elements exceed with probability at most `chunk_tail` (binomial) — and at least the worst benign
   count seen plus `slack`; D is the smallest candidate whose K is at most `max_chunk_bad`, so a
   chunk keeps room to catch a cheat;
2. every rate or error threshold is the worst benign figure widened by `margin` (for an upper
   bound: worst × margin + floor; for a lower bound on an agreement rate: 1 − ((1 − worst) ×
   margin + floor)), where `floor` keeps bit-identical calibration data from yielding a zero
   tolerance; whole-stage fractions of elements beyond k (ulps or scale ulps), which concentrate
   over tens of thousands of elements, use the smaller `rate_margin`;
3. token tolerances (`fit_token_tolerance`) from benign pairs of logits: `logit_tol` is twice the
   largest logit difference (both the claimed maximum and the runner-up may move) widened by
   `margin`; `mass_tol` is the largest L1 distance between the two softmax distributions (a bound
   on any cumulative-mass shift) widened by `margin`;
4. `evaluate` applies thresholds to other pairs (held-out benign ones, or attacks) and counts
   passes, with per-statistic worst cases for the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from verifier.chunk_rule import chunk_bad_counts, chunk_bad_mask
from verifier.encoding import CHUNK, bf16_bits
from verifier.errors import ToleranceError
from verifier.tolerance import Thresholds, ToleranceStats, judge, statistics

Pair = tuple[Any, Any]  # (claimed, recomputed)
D_CANDIDATES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # scale ulps


@dataclass(frozen=True)
class FitOptions:
    """How far thresholds sit from the worst benign figure."""

    margin: float = 4.0  # multiplicative widening of the worst benign deviation
    rate_margin: float = 2.0  # the same for whole-stage fractions, which concentrate over many elements
    rate_floor: float = 1e-3  # added to fraction thresholds (agreement and beyond-k rates)
    row_floor_elements: int = 4  # per-row fraction thresholds get at least this many elements / d
    err_floor: float = 1e-3  # added to relative-error thresholds
    ulp_floor: float = 0.02  # added to the mean mantissa distance threshold
    ulp_k: int = 1  # the statistics' "beyond k ulps" (1: beyond a rounding flip)
    scaled_k: int = 1  # the statistics' "beyond k scale ulps"
    chunk_tail: float = 1e-9  # chance an honest chunk fails the chunk rule, at the widened rate
    max_chunk_bad: int = 8  # the largest K accepted when choosing D
    slack: int = 1  # K is at least the worst benign count seen plus this
    logit_tol: float = 1e-3  # used when no logit pairs are given to fit_thresholds
    mass_tol: float = 1e-4
    token_floor: float = 1e-6  # added to fitted token tolerances

    def __post_init__(self) -> None:
        if self.margin < 1 or self.rate_margin < 1:
            raise ToleranceError(f"margin ({self.margin}) and rate_margin ({self.rate_margin}) must be >= 1")
        if not 0 <= self.max_chunk_bad < CHUNK:
            raise ToleranceError(f"max_chunk_bad ({self.max_chunk_bad}) must be in [0, {CHUNK})")
        if not 0 < self.chunk_tail < 1:
            raise ToleranceError(f"chunk_tail ({self.chunk_tail}) must be in (0, 1)")


def _bits(pairs: Iterable[Pair]) -> list[tuple[Any, Any]]:
    out = []
    for c, r in pairs:
        cb, rb = bf16_bits(c, finite=False), bf16_bits(r, finite=False)
        if cb.ndim == 1:
            cb, rb = cb[None, :], rb[None, :]
        if cb.shape != rb.shape:
            raise ToleranceError(f"pair shapes differ: {cb.shape} vs {rb.shape}")
        out.append((cb, rb))
    if not out:
        raise ToleranceError("calibration needs at least one benign pair")
    return out


def chunk_k(rate: float, tail: float) -> int:
    """Smallest k with P(Binomial(32, rate) > k) <= tail."""
    from scipy.stats import binom

    for k in range(CHUNK + 1):
        if binom.sf(k, CHUNK, min(rate, 1.0)) <= tail:
            return k
    return CHUNK


def fit_chunk_rule(pairs: Sequence[Pair], opts: FitOptions) -> tuple[int, int]:
    """(D, K) of the chunk rule from benign pairs."""
    bits = _bits(pairs)
    for d in D_CANDIDATES:
        rate = max(float((chunk_bad_mask(c, r, d).reshape(len(c), -1).sum(axis=1) / c.shape[1]).max())
                   for c, r in bits)
        seen = max(int(chunk_bad_counts(c, r, d).max()) for c, r in bits)
        k = max(chunk_k(rate * opts.margin + opts.rate_floor, opts.chunk_tail), seen + opts.slack)
        if k <= opts.max_chunk_bad:
            return d, k
    raise ToleranceError(
        f"benign pairs differ too much for any chunk rule: even at D={D_CANDIDATES[-1]} the chunk "
        f"rule would need K > {opts.max_chunk_bad} (are these pairs really benign?)"
    )


def fit_token_tolerance(logit_pairs: Sequence[Pair], opts: FitOptions | None = None,
                        temperature: float = 1.0) -> tuple[float, float]:
    """(logit_tol, mass_tol) from benign (claimed-side, recomputed) logits pairs of shape (N, V)."""
    import numpy as np

    o = opts or FitOptions()
    if not logit_pairs:
        raise ToleranceError("token calibration needs at least one pair of logits")
    if not temperature > 0:
        raise ToleranceError(f"temperature ({temperature}) must be > 0")
    max_diff = max_l1 = 0.0
    for a, b in logit_pairs:
        x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if x.shape != y.shape or x.ndim != 2:
            raise ToleranceError(f"logit pairs must be two (N, V) arrays of one shape; got {x.shape}, {y.shape}")
        max_diff = max(max_diff, float(np.abs(x - y).max()))
        px = np.exp((x - x.max(axis=1, keepdims=True)) / temperature)
        py = np.exp((y - y.max(axis=1, keepdims=True)) / temperature)
        px /= px.sum(axis=1, keepdims=True)
        py /= py.sum(axis=1, keepdims=True)
        max_l1 = max(max_l1, float(np.abs(px - py).sum(axis=1).max()))
    return 2 * max_diff * o.margin + o.token_floor, max_l1 * o.margin + o.token_floor


def fit_thresholds(pairs: Sequence[Pair], opts: FitOptions | None = None,
                   logit_pairs: Sequence[Pair] = ()) -> Thresholds:
    """Thresholds that every given benign pair passes with the margin of `opts`; token tolerances
    from `logit_pairs` when given (else `opts.logit_tol` / `opts.mass_tol`)."""
    o = opts or FitOptions()
    logit_tol, mass_tol = fit_token_tolerance(logit_pairs, o) if logit_pairs else (o.logit_tol, o.mass_tol)
    pairs = _bits(pairs)
    d, k = fit_chunk_rule(pairs, o)
    stats = [statistics(c, r, ulp_k=o.ulp_k, scaled_k=o.scaled_k, chunk_max_ulp=d, chunk_max_bad=k)
             for c, r in pairs]

    def up(vals: Iterable[float], floor: float, cap: float | None = None, margin: float = o.margin) -> float:
        v = max(vals) * margin + floor
        return min(v, cap) if cap is not None else v

    def agree(vals: Iterable[float], floor: float = o.rate_floor) -> float:
        return max(0.0, 1.0 - ((1.0 - min(vals)) * o.margin + floor))

    # A row has only d elements: a per-row rate floor below a few elements would fail a row for
    # one stray element, which benign noise does produce (seen on held-out pairs).
    row_floor = max(o.rate_floor, o.row_floor_elements / min(s.hidden_size for s in stats))

    return Thresholds(
        min_exponent_agreement=agree(s.exponent_agreement for s in stats),
        min_row_exponent_agreement=agree((s.min_row_exponent_agreement for s in stats), row_floor),
        max_mantissa_mean_ulp=up((s.mantissa_mean_ulp for s in stats), o.ulp_floor),
        ulp_k=o.ulp_k,
        max_frac_beyond_k=up((s.frac_beyond_k for s in stats), o.rate_floor, 1.0, o.rate_margin),
        max_row_frac_beyond_k=up((s.max_row_frac_beyond_k for s in stats), row_floor, 1.0),
        scaled_k=o.scaled_k,
        max_scaled_frac_beyond_k=up((s.scaled_frac_beyond_k for s in stats), o.rate_floor, 1.0,
                                    o.rate_margin),
        max_row_scaled_frac_beyond_k=up((s.max_row_scaled_frac_beyond_k for s in stats), row_floor, 1.0),
        max_rel_err=up((s.rel_err for s in stats), o.err_floor),
        max_row_rel_err=up((s.max_row_rel_err for s in stats), o.err_floor),
        chunk_max_ulp=d,
        chunk_max_bad=k,
        max_failing_chunk_frac=0.0,
        logit_tol=logit_tol,
        mass_tol=mass_tol,
    )


@dataclass
class Evaluation:
    """How a set of pairs fared against thresholds: passes, and the worst value of each statistic."""

    trials: int = 0
    passed: int = 0
    reasons: list[str] = field(default_factory=list)
    worst: dict[str, float] = field(default_factory=dict)

    @property
    def pass_rate(self) -> float:
        return self.passed / self.trials if self.trials else 0.0


_LOWER_IS_WORSE = {"exponent_agreement", "min_row_exponent_agreement"}


def evaluate(pairs: Iterable[Pair], thresholds: Thresholds) -> Evaluation:
    """Judge every pair; keep pass counts, distinct failure reasons and per-statistic worst values."""
    ev = Evaluation()
    for c, r in pairs:
        v = judge(c, r, thresholds)
        ev.trials += 1
        ev.passed += v.passed
        for reason in v.reasons:
            if reason not in ev.reasons:
                ev.reasons.append(reason)
        _merge_worst(ev.worst, v.stats)
    return ev


def _merge_worst(worst: dict[str, float], s: ToleranceStats) -> None:
    for name in ("exponent_agreement", "min_row_exponent_agreement", "mantissa_mean_ulp",
                 "mantissa_max_ulp", "frac_beyond_k", "max_row_frac_beyond_k", "frac_unequal",
                 "max_ulp", "rel_err", "max_row_rel_err", "scaled_frac_beyond_k",
                 "max_row_scaled_frac_beyond_k", "worst_chunk_bad", "failing_chunk_frac"):
        v = float(getattr(s, name))
        if name not in worst:
            worst[name] = v
        else:
            worst[name] = min(worst[name], v) if name in _LOWER_IS_WORSE else max(worst[name], v)


def clopper_pearson_upper(failures: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound on a failure rate (exact binomial, Clopper–Pearson)."""
    if trials <= 0 or not 0 <= failures <= trials:
        raise ToleranceError(f"need 0 <= failures ({failures}) <= trials ({trials}), trials > 0")
    if failures == trials:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(confidence, failures + 1, trials - failures))


# ── profiles: one per precision, fitted on benign measurements ────────────────────────────────
@dataclass(frozen=True)
class ProfileFit:
    """How a `Profile` sits relative to the benign measurements it is fitted on."""

    proof_margin: float = 3.0  # proof-grade bounds: worst benign (depth-normalized) × this
    chunk_slack: int = 2  # K is at least the worst benign chunk count at D plus this
    max_chunk_bad: int = 8  # the largest K accepted when choosing D
    tail_probs: tuple[float, ...] = (0.5, 0.2, 0.05, 0.01)  # levels at these benign quantiles ...
    top_level_margin: float = 1.5  # ... and one at the worst benign score × this
    tail_margin: float = 1.5  # null tails: 95 % upper bound of the exceed rate × this
    alt_tails: tuple[float, ...] = (0.95, 0.85, 0.7, 0.5, 0.3)  # the cheat the scale is tuned for
    trim: int = 4
    logit_margin: float = 4.0


def fit_depth_exponent(layers: Sequence[int], rms: Sequence[float]) -> float:
    """κ in rms ≈ c · layers^κ: least squares of log q90(rms | depth) on log depth, clipped to [0, 2]."""
    import numpy as np

    by: dict[int, list[float]] = {}
    for n, r in zip(layers, rms, strict=True):
        if r > 0 and r == r:
            by.setdefault(int(n), []).append(float(r))
    if len(by) < 2:
        return 0.0
    x = np.log([n for n in sorted(by)])
    y = np.log([float(np.quantile(by[n], 0.9)) for n in sorted(by)])
    return float(np.clip(np.polyfit(x, y, 1)[0], 0.0, 2.0))


def fit_profile(measurements: Sequence[Any], precision: str, fit: ProfileFit | None = None,
                logit_pairs: Sequence[Pair] = (), chunk_candidates: Sequence[int] = D_CANDIDATES,
                note: str = "") -> Any:
    """A `verifier.evidence.Profile` from benign `Measurement`s (taken with depth_exponent 0 and
    `chunk_candidates`) and benign logit pairs."""
    import numpy as np

    from verifier.evidence import Profile, ProofLimits
    from verifier.sprt import EvidenceScale

    f = fit or ProfileFit()
    if not measurements:
        raise ToleranceError("profile calibration needs benign measurements")
    layers = [m.layers for m in measurements]
    kappa = round(fit_depth_exponent(layers, [m.rms_rel_err for m in measurements]), 3)
    norm = np.array([float(n) ** kappa for n in layers])
    score = np.array([m.rms_rel_err for m in measurements]) / norm
    row = np.array([m.max_row_rel_err for m in measurements]) / norm
    # floor: bit-identical benign data (fp32 on one CPU) would otherwise give a zero bound
    floor = 2.0 ** -12  # 1/16 of a bf16 ulp, relative: below any compute precision cheat
    d_k = None
    for i, d in enumerate(chunk_candidates):
        worst = max(m.chunk_worst[i] for m in measurements)
        if worst + f.chunk_slack <= f.max_chunk_bad:
            d_k = (d, worst + f.chunk_slack)
            break
    if d_k is None:
        raise ToleranceError(f"no chunk rule D in {tuple(chunk_candidates)} keeps benign chunks under "
                             f"K = {f.max_chunk_bad}")
    proof = ProofLimits(max_row_err=float(max(row.max(), floor) * f.proof_margin),
                        max_score=float(max(score.max(), floor / 2) * f.proof_margin),
                        chunk_max_ulp=d_k[0], chunk_max_bad=d_k[1], trim=f.trim)
    n = len(score)
    levels, tails = [], []
    for p in f.tail_probs:
        t = float(np.quantile(score, 1 - p))
        if levels and t <= levels[-1]:
            continue
        levels.append(t)
        tails.append(min(1.0, clopper_pearson_upper(int((score > t).sum()), n) * f.tail_margin))
    top = float(max(score.max(), floor / 4) * f.top_level_margin)
    if not levels or top > levels[-1]:
        levels.append(top)
        tails.append(min(1.0, clopper_pearson_upper(int((score > top).sum()), n) * f.tail_margin))
    alt = list(f.alt_tails[-len(levels):])
    while True:  # merge bins (drop a level) until the e-values are nondecreasing: still valid, less power
        b, g = (1.0, *tails, 0.0), (1.0, *alt, 0.0)
        e = [(g[j] - g[j + 1]) / (b[j] - b[j + 1]) if b[j] > b[j + 1] else float("inf")
             for j in range(len(levels) + 1)]
        drop = next((j for j in range(len(e) - 1) if e[j + 1] < e[j]), None)
        if drop is None or len(levels) == 1:
            break
        k = max(drop, 0) if drop < len(levels) else len(levels) - 1
        del levels[k], tails[k], alt[k]
    scale = EvidenceScale(tuple(levels), tuple(tails), tuple(alt))
    if logit_pairs:
        logit_tol, mass_tol = fit_token_tolerance(logit_pairs, FitOptions(margin=f.logit_margin))
    else:
        logit_tol, mass_tol = FitOptions().logit_tol, FitOptions().mass_tol
    return Profile(precision, kappa, proof, scale, float(logit_tol), float(mass_tol), note)
