"""The tolerance test (DESIGN §5.4): are claimed rows the recomputed ones up to floating-point noise?

Both sides are compared as bf16 bit patterns — what a stage commits — so the test is the same
whatever dtype the verifier computed in. Per element, with `c` claimed and `r` recomputed bits:

- *exponent agreement*: sign and 8-bit exponent equal (`c >> 7 == r >> 7`);
- *mantissa distance*: among exponent-equal elements, |mantissa(c) − mantissa(r)| in ulps;
- *ulp distance*: |key(c) − key(r)| where key orders bf16 patterns monotonically
  (key(x) = 0x8000 + (x & 0x7FFF) for x ≥ 0, 0x8000 − (x & 0x7FFF) for x < 0; ±0 share a key), so a
  value that crosses a binade boundary by rounding is 1 ulp away, not an exponent mismatch of
  consequence; NaN or infinity on either side counts as infinitely far.

- *scaled distance*: the difference in ulps of its chunk's largest element — the quantity of the
  contract's chunk rule (`verifier.chunk_rule`); an element more than D of those apart is "bad".

`judge` turns these, plus a relative-error summary (‖c − r‖₂ / ‖r‖₂ over everything and per row),
into a `Verdict` against `Thresholds`. Per-row statistics are there so forging a few rows among
thousands cannot hide in the averages, and `judge` also applies the chunk rule to every chunk, so an
honest "pass" is never contradicted by an on-chain spot check of any chunk. Threshold profiles live
in `verifier.profiles`, fitted by `verifier.calibrate` on benign pairs (README.md: how, and figures).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from verifier.chunk_rule import chunk_bad_mask
from verifier.encoding import CHUNK, bf16_bits, bf16_to_float
from verifier.errors import ToleranceError

FAR = 1 << 16  # ulp distance given to NaN / infinity: beyond any real distance (max 0xFF00)


def ordered_key(bits: np.ndarray) -> np.ndarray:
    """Monotone integer key of bf16 patterns (int32): consecutive representable values differ by 1."""
    b = np.asarray(bits, dtype=np.uint16).astype(np.int32)
    mag = b & 0x7FFF
    return np.where(b & 0x8000, 0x8000 - mag, 0x8000 + mag)


def _nonfinite(bits: np.ndarray) -> np.ndarray:
    return (bits & 0x7F80) == 0x7F80


def ulp_distance(claimed: np.ndarray, recomputed: np.ndarray) -> np.ndarray:
    """Elementwise ulp distance of two bf16 bit arrays (int32); NaN/inf on either side → `FAR`."""
    d = np.abs(ordered_key(claimed) - ordered_key(recomputed))
    return np.where(_nonfinite(claimed) | _nonfinite(recomputed), FAR, d)


# ── statistics and verdict ─────────────────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class Thresholds:
    """Limits of benign noise. Rates are fractions in [0, 1]; ulp figures are bf16 ulps."""

    min_exponent_agreement: float = 0.999  # fraction of elements with equal sign and exponent
    min_row_exponent_agreement: float = 0.99  # same, worst row
    max_mantissa_mean_ulp: float = 0.05  # mean |mantissa diff| among exponent-equal elements
    ulp_k: int = 1  # "beyond k ulps" is ulp distance > ulp_k
    max_frac_beyond_k: float = 0.001  # fraction of elements beyond k ulps
    max_row_frac_beyond_k: float = 0.02  # same, worst row
    max_rel_err: float = 0.005  # ‖c − r‖₂ / ‖r‖₂ over all rows
    max_row_rel_err: float = 0.02  # same, worst row
    scaled_k: int = 1  # "beyond k scale ulps" (the chunk rule's measure, at a finer level than D)
    max_scaled_frac_beyond_k: float = 0.001  # fraction of elements beyond scaled_k scale ulps
    max_row_scaled_frac_beyond_k: float = 0.02  # same, worst row
    chunk_max_ulp: int = 1  # D of the chunk rule, in scale ulps
    chunk_max_bad: int = 3  # K of the chunk rule
    max_failing_chunk_frac: float = 0.0  # chunks allowed to fail the chunk rule (0: none)
    logit_tol: float = 1e-3  # greedy: claimed token's logit may trail the max by this much
    mass_tol: float = 1e-4  # sampling: slack on cumulative probability boundaries

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int | float) or v != v or v < 0:
                raise ToleranceError(f"threshold {f.name} ({v!r}) must be a number >= 0")
        for name in ("min_exponent_agreement", "min_row_exponent_agreement", "max_frac_beyond_k",
                     "max_row_frac_beyond_k", "max_failing_chunk_frac", "max_scaled_frac_beyond_k",
                     "max_row_scaled_frac_beyond_k"):
            if getattr(self, name) > 1:
                raise ToleranceError(f"threshold {name} ({getattr(self, name)}) is a rate in [0, 1]")
        if self.chunk_max_bad > CHUNK:
            raise ToleranceError(f"chunk_max_bad ({self.chunk_max_bad}) must be at most {CHUNK}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Thresholds:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ToleranceError(f"unknown threshold fields: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class ToleranceStats:
    """What the tolerance test measured on one (claimed, recomputed) pair."""

    positions: int
    hidden_size: int
    elements: int
    nonfinite_claimed: int
    exponent_agreement: float
    min_row_exponent_agreement: float
    mantissa_mean_ulp: float
    mantissa_max_ulp: int
    ulp_k: int
    frac_beyond_k: float
    max_row_frac_beyond_k: float
    frac_unequal: float
    max_ulp: int
    rel_err: float
    max_row_rel_err: float
    scaled_k: int
    scaled_frac_beyond_k: float
    max_row_scaled_frac_beyond_k: float
    chunk_max_ulp: int
    worst_chunk_bad: int
    failing_chunk_frac: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """The outcome: `passed`, the statistics, and one reason per violated threshold."""

    passed: bool
    stats: ToleranceStats
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "stats": self.stats.to_json()}


def _rows(name: str, x: Any) -> np.ndarray:
    bits = bf16_bits(x, finite=False)
    if bits.ndim == 1:
        bits = bits[None, :]
    if bits.ndim != 2 or bits.size == 0:
        raise ToleranceError(f"{name} rows must be a non-empty (positions, hidden) array, got {bits.shape}")
    return bits


def statistics(claimed: Any, recomputed: Any, ulp_k: int = 1, scaled_k: int = 1,
               chunk_max_ulp: int = 1, chunk_max_bad: int = 3) -> ToleranceStats:
    """Measure claimed vs recomputed rows ((T, d) or (d,); floats, torch tensors or uint16 bf16 bits)."""
    c, r = _rows("claimed", claimed), _rows("recomputed", recomputed)
    if c.shape != r.shape:
        raise ToleranceError(f"claimed rows {c.shape} and recomputed rows {r.shape} differ in shape")
    t, d = c.shape
    bad = _nonfinite(c) | _nonfinite(r)
    exp_eq = ((c >> 7) == (r >> 7)) & ~bad
    mant = np.abs((c & 0x7F).astype(np.int32) - (r & 0x7F).astype(np.int32))
    mant_eq = mant[exp_eq]
    dist = ulp_distance(c, r)
    beyond = dist > ulp_k
    cf = np.where(bad, 0.0, bf16_to_float(c)).astype(np.float64)
    rf = np.where(bad, 0.0, bf16_to_float(r)).astype(np.float64)
    diff2 = np.where(bad, np.inf, (cf - rf) ** 2)
    row_err = np.sqrt(diff2.sum(axis=1)) / np.maximum(np.sqrt((rf**2).sum(axis=1)), 1e-30)
    tot_err = float(np.sqrt(diff2.sum()) / max(float(np.sqrt((rf**2).sum())), 1e-30))
    counts = chunk_bad_mask(c, r, chunk_max_ulp).sum(axis=2)  # (T, chunks); padding is never bad
    row_scaled = chunk_bad_mask(c, r, scaled_k).reshape(t, -1).sum(axis=1) / d
    return ToleranceStats(
        positions=t, hidden_size=d, elements=t * d,
        nonfinite_claimed=int(_nonfinite(c).sum()),
        exponent_agreement=float(exp_eq.mean()),
        min_row_exponent_agreement=float(exp_eq.mean(axis=1).min()),
        mantissa_mean_ulp=float(mant_eq.mean()) if mant_eq.size else 0.0,
        mantissa_max_ulp=int(mant_eq.max()) if mant_eq.size else 0,
        ulp_k=ulp_k,
        frac_beyond_k=float(beyond.mean()),
        max_row_frac_beyond_k=float(beyond.mean(axis=1).max()),
        frac_unequal=float((c != r).mean()),
        max_ulp=int(dist.max()),
        rel_err=tot_err,
        max_row_rel_err=float(row_err.max()),
        scaled_k=scaled_k,
        scaled_frac_beyond_k=float(row_scaled.mean()),
        max_row_scaled_frac_beyond_k=float(row_scaled.max()),
        chunk_max_ulp=chunk_max_ulp,
        worst_chunk_bad=int(counts.max()),
        failing_chunk_frac=float((counts > chunk_max_bad).mean()),
    )


def judge(claimed: Any, recomputed: Any, thresholds: Thresholds) -> Verdict:
    """Pass iff every statistic is within its threshold; `reasons` quote each violation."""
    th = thresholds
    s = statistics(claimed, recomputed, th.ulp_k, th.scaled_k, th.chunk_max_ulp, th.chunk_max_bad)
    reasons: list[str] = []
    if s.nonfinite_claimed:
        reasons.append(f"claimed rows hold {s.nonfinite_claimed} NaN or infinite values")

    def low(name: str, value: float, limit: float) -> None:
        if value < limit:
            reasons.append(f"{name} {value:.6g} < {limit:.6g}")

    def high(name: str, value: float, limit: float) -> None:
        if value > limit:
            reasons.append(f"{name} {value:.6g} > {limit:.6g}")

    low("exponent agreement", s.exponent_agreement, th.min_exponent_agreement)
    low("worst row exponent agreement", s.min_row_exponent_agreement, th.min_row_exponent_agreement)
    high("mean mantissa distance (ulp)", s.mantissa_mean_ulp, th.max_mantissa_mean_ulp)
    high(f"fraction beyond {th.ulp_k} ulp", s.frac_beyond_k, th.max_frac_beyond_k)
    high(f"worst row fraction beyond {th.ulp_k} ulp", s.max_row_frac_beyond_k, th.max_row_frac_beyond_k)
    high("relative error", s.rel_err, th.max_rel_err)
    high("worst row relative error", s.max_row_rel_err, th.max_row_rel_err)
    high(f"fraction beyond {th.scaled_k} scale ulp", s.scaled_frac_beyond_k,
         th.max_scaled_frac_beyond_k)
    high(f"worst row fraction beyond {th.scaled_k} scale ulp", s.max_row_scaled_frac_beyond_k,
         th.max_row_scaled_frac_beyond_k)
    high(f"fraction of chunks failing the chunk rule (D={th.chunk_max_ulp}, K={th.chunk_max_bad})",
         s.failing_chunk_frac, th.max_failing_chunk_frac)
    return Verdict(not reasons, s, tuple(reasons))
