"""Two kinds of evidence from one stage check: a proof-grade verdict and a statistical score.

A check compares a stage's claimed output rows with the verifier's recomputation (both as bf16 bit
patterns — what a stage commits). What it yields is kept in two separate kinds (DESIGN §5):

- **proof-grade** (`ProofLimits`, `proof_verdict`): limits that no benign run comes near — the worst
  row's relative error, the on-chain chunk rule on every chunk, NaN/inf. Another or smaller model,
  4-bit weights, skipped layers, forged or replayed rows fail them on one task; this verdict alone
  may convict (and slash) on one task.
- **statistical** (`Measurement.score`): how far the rows are overall, in units honest runs also
  produce, only less: the root-mean-square over rows of each row's relative error, divided by
  `n_layers ** depth_exponent` (noise grows with the stage's depth). A score is never a verdict: it
  becomes an e-value (`verifier.sprt`) that accumulates per operator.

Every statistic is normalized by the rows' own scale (relative errors per row), so one profile per
precision serves models of any width, depth and activation size. Per-row errors leave out the
`trim` largest-magnitude elements of the recomputed row from both norms: a few "massive activation"
channels (hundreds of times the row's RMS in trained models) would otherwise dominate the norm and
hide everything else; a cheat confined to those channels still moves the chunk rule.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from verifier.chunk_rule import chunk_bad_counts, worst_chunk_counts
from verifier.encoding import bf16_bits, bf16_to_float, keccak
from verifier.errors import ToleranceError
from verifier.sprt import EvidenceScale


@dataclass(frozen=True)
class ProofLimits:
    """Bounds no benign run comes near; crossing one is proof-grade evidence."""

    max_row_err: float = 0.25  # the worst row's relative error / layers ** depth_exponent
    max_score: float = 0.1  # the check's score (rms over rows, depth-normalized)
    chunk_max_ulp: int = 6  # the on-chain chunk rule's D (scale ulps) ...
    chunk_max_bad: int = 4  # ... and K (bad elements of 32): every chunk must pass
    trim: int = 4  # largest-|r| elements per row left out of the relative errors

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int | float) or v != v or v < 0:
                raise ToleranceError(f"proof limit {f.name} ({v!r}) must be a number >= 0")
        if self.chunk_max_bad > 32:
            raise ToleranceError(f"chunk_max_bad ({self.chunk_max_bad}) must be at most 32")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProofLimits:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ToleranceError(f"unknown proof limit fields: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class Measurement:
    """What one (claimed, recomputed) comparison measured."""

    positions: int
    hidden_size: int
    layers: int  # the stage's depth (layers recomputed)
    nonfinite: int  # NaN/inf values in the claimed rows
    row_rel_err: np.ndarray  # (T,) per-row trimmed relative error
    worst_chunk_bad: int  # most bad elements of a chunk under the chunk rule
    failing_chunks: int  # chunks over K
    rms_rel_err: float  # sqrt(mean(row_rel_err²))
    score: float  # rms_rel_err / layers ** depth_exponent
    row_score: float  # max(row_rel_err) / layers ** depth_exponent
    chunk_worst: tuple[int, ...] = ()  # worst chunk's bad count per D of `chunk_candidates`

    @property
    def max_row_rel_err(self) -> float:
        return float(self.row_rel_err.max())

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("row_rel_err", "chunk_worst")}
        d["max_row_rel_err"] = self.max_row_rel_err
        return d


def _as_bits(x: Any) -> np.ndarray:
    b = bf16_bits(x, finite=False)
    return b[None, :] if b.ndim == 1 else b


def row_rel_err(claimed_bits: np.ndarray, recomputed_bits: np.ndarray, trim: int) -> np.ndarray:
    """Per-row ‖c − r‖ / ‖r‖ over the bf16 values, leaving out each row's `trim` largest |r|
    elements; a non-finite claimed value makes its row infinitely far."""
    c = bf16_to_float(claimed_bits).astype(np.float64)
    r = bf16_to_float(recomputed_bits).astype(np.float64)
    bad = ~np.isfinite(c).all(axis=1)
    c = np.where(np.isfinite(c), c, 0.0)
    r = np.where(np.isfinite(r), r, 0.0)
    if 0 < trim < r.shape[1]:
        keep = np.argsort(np.abs(r), axis=1)[:, : r.shape[1] - trim]
        c, r = np.take_along_axis(c, keep, 1), np.take_along_axis(r, keep, 1)
    num = np.sqrt(((c - r) ** 2).sum(axis=1))
    den = np.sqrt((r**2).sum(axis=1))
    rel = np.where(den > 0, num / np.maximum(den, 1e-300), np.where(num > 0, np.inf, 0.0))
    return np.where(bad, np.inf, rel)


def measure(claimed: Any, recomputed: Any, layers: int, limits: ProofLimits,
            depth_exponent: float = 0.0, chunk_candidates: tuple[int, ...] = ()) -> Measurement:
    """Compare claimed rows with recomputed ones (T, d): float32 / bf16 tensors or uint16 bits.
    `chunk_candidates`: also record the worst chunk's bad count at each of these D (calibration)."""
    if layers < 1:
        raise ToleranceError(f"a stage has at least one layer, got layers={layers}")
    c, r = _as_bits(claimed), _as_bits(recomputed)
    if c.shape != r.shape:
        raise ToleranceError(f"claimed rows {c.shape} and recomputed rows {r.shape} differ in shape")
    if c.size == 0:
        raise ToleranceError("rows must be non-empty")
    rel = row_rel_err(c, r, limits.trim)
    counts = chunk_bad_counts(c, r, limits.chunk_max_ulp)
    rms = float(np.sqrt(np.mean(np.square(rel)))) if np.isfinite(rel).all() else float("inf")
    norm = float(layers) ** depth_exponent
    return Measurement(
        positions=c.shape[0], hidden_size=c.shape[1], layers=int(layers),
        nonfinite=int(((c & 0x7F80) == 0x7F80).sum()), row_rel_err=rel,
        worst_chunk_bad=int(counts.max()), failing_chunks=int((counts > limits.chunk_max_bad).sum()),
        rms_rel_err=rms, score=rms / norm, row_score=float(rel.max()) / norm,
        chunk_worst=worst_chunk_counts(c, r, chunk_candidates) if chunk_candidates else (),
    )


@dataclass(frozen=True)
class ProofVerdict:
    """Proof-grade outcome: `failed` only on evidence no benign run produces."""

    failed: bool
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"failed": self.failed, "reasons": list(self.reasons)}


def proof_verdict(m: Measurement, limits: ProofLimits) -> ProofVerdict:
    reasons = []
    if m.nonfinite:
        reasons.append(f"claimed rows hold {m.nonfinite} NaN or infinite values")
    if m.row_score > limits.max_row_err:
        worst = int(np.argmax(m.row_rel_err))
        reasons.append(f"row {worst} relative error {m.max_row_rel_err:.4g} over {m.layers} layer(s) "
                       f"(depth-normalized {m.row_score:.4g} > {limits.max_row_err:.4g})")
    if m.score > limits.max_score:
        reasons.append(f"rms relative error {m.rms_rel_err:.4g} over {m.layers} layer(s) "
                       f"(depth-normalized {m.score:.4g} > {limits.max_score:.4g})")
    if m.failing_chunks:
        reasons.append(f"{m.failing_chunks} chunk(s) fail the chunk rule (D={limits.chunk_max_ulp}, "
                       f"K={limits.chunk_max_bad}; worst {m.worst_chunk_bad} bad)")
    return ProofVerdict(bool(reasons), tuple(reasons))


# ── a profile: everything a check needs, for one serving precision ────────────────────────────
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Profile:
    """How checks are judged for one serving precision: the depth normalization, proof-grade
    limits, the statistical evidence scale and the token tolerances. `hash` names it on chain
    (ModelRegistry's profile hash)."""

    precision: str
    depth_exponent: float
    proof: ProofLimits
    evidence: EvidenceScale
    logit_tol: float
    mass_tol: float
    note: str = ""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ToleranceError(f"precision ({self.precision!r}) must be one of {PRECISIONS}")
        if not 0 <= self.depth_exponent <= 2:
            raise ToleranceError(f"depth_exponent ({self.depth_exponent}) must be in [0, 2]")
        if not self.logit_tol >= 0 or not self.mass_tol >= 0:
            raise ToleranceError(f"logit_tol ({self.logit_tol}) and mass_tol ({self.mass_tol}) must be >= 0")

    @property
    def chunk_rule(self) -> tuple[int, int]:
        """(D, K): the on-chain spot check's rule for this profile (`ModelRegistry.set_serving`)."""
        return self.proof.chunk_max_ulp, self.proof.chunk_max_bad

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "precision": self.precision, "depth_exponent": self.depth_exponent,
                "proof": self.proof.to_json(), "evidence": self.evidence.to_json(),
                "logit_tol": self.logit_tol, "mass_tol": self.mass_tol, "note": self.note}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Profile:
        known = {"version", "precision", "depth_exponent", "proof", "evidence", "logit_tol", "mass_tol", "note"}
        if set(d) - known:
            raise ToleranceError(f"unknown profile fields: {sorted(set(d) - known)}")
        if d.get("version") != 1:
            raise ToleranceError(f"profile version {d.get('version')!r} is not 1")
        try:
            return cls(d["precision"], float(d["depth_exponent"]), ProofLimits.from_json(d["proof"]),
                       EvidenceScale.from_json(d["evidence"]), float(d["logit_tol"]), float(d["mass_tol"]),
                       str(d.get("note", "")))
        except (KeyError, TypeError) as e:
            raise ToleranceError(f"malformed profile: {e!r}") from e

    def canonical(self) -> bytes:
        """The bytes the hash covers: sorted-key compact JSON, the note left out."""
        d = self.to_json()
        d.pop("note")
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @property
    def hash(self) -> bytes:
        return keccak(self.canonical())


@dataclass(frozen=True)
class Assessment:
    """One check's two kinds of evidence: the proof verdict and the statistical e-value."""

    measurement: Measurement
    proof: ProofVerdict
    evalue: float

    def to_json(self) -> dict[str, Any]:
        return {"proof": self.proof.to_json(), "evalue": self.evalue,
                "measurement": self.measurement.to_json()}


def assess(claimed: Any, recomputed: Any, layers: int, profile: Profile,
           chunk_candidates: tuple[int, ...] = ()) -> Assessment:
    """Measure a check, judge it proof-grade, and turn its score into an e-value."""
    m = measure(claimed, recomputed, layers, profile.proof, profile.depth_exponent, chunk_candidates)
    return Assessment(m, proof_verdict(m, profile.proof), profile.evidence.evalue(m.score))


FRAUD, SUSPECT, PASS = "fraud", "suspect", "pass"


def vote_kind(a: Assessment, suspect_level: float) -> str:
    """A committee member's vote from one assessment: FRAUD on proof-grade evidence (may slash),
    SUSPECT when the score is above the on-chain suspect level (`verifier.sprt.suspect_rule`:
    counted per operator, never slashes), else PASS. The token verdict is the caller's to add:
    claimed tokens the claimed rows' logits do not explain are proof-grade too."""
    if a.proof.failed:
        return FRAUD
    return SUSPECT if not a.measurement.score <= suspect_level else PASS
