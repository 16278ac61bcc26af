"""Statistical evidence that accumulates per operator: a sequential test with a lifetime bound.

One check's score (`verifier.evidence.Measurement.score`) is honest noise or a cheat's footprint;
no single score convicts. It becomes an **e-value** — a number whose expectation under honest play
is at most 1 — and an operator's e-values multiply (Wald's SPRT as a test martingale):

- `EvidenceScale` bins the score at levels t_1 < … < t_m. The profile states, per level, an upper
  bound β_j on the chance an honest check scores above t_j (benign tails, widened) and a target
  γ_j for a cheat (the alternative). A score in bin j is worth e_j = (γ_j − γ_{j+1}) / (β_j −
  β_{j+1}) (β_0 = γ_0 = 1, β_{m+1} = γ_{m+1} = 0); e is required nondecreasing. Then for *any*
  honest score distribution whose tails are within the β's, E[e] = e_0 + Σ_j (e_j − e_{j−1})
  P(S > t_j) ≤ Σ_j e_j (β_j − β_{j+1}) = Σ_j (γ_j − γ_{j+1}) = 1. The γ's set only the power.
- `Ledger` keeps each operator's log-wealth W (sum of log e, floored at −b so an operator that
  was honest for long cannot bank credit against a later cheat). By Ville's inequality a process
  of E ≤ 1 steps started at log-wealth w reaches h with probability ≤ e^{−(h − w)}; it starts at 0
  once and restarts from −b at most once per check, so over a lifetime of N checks
  P(honest operator ejected) ≤ e^{−h} + N·e^{−(h + b)}. `SprtParams.for_bound(α, N)` picks
  h = ln(2/α), b = ln N, which makes that exactly α.
- Consequences are graduated (`Standing`): W ≥ ln(1/α_flag) → FLAGGED (sample this operator more
  often); W ≥ h → JAILED (ejected through the verification game). Never a slash: slashing needs a
  proof-grade verdict (`verifier.evidence.proof_verdict`).

`suspect_rule` maps the same evidence onto the verification contract's hook: a V_SUSPECT vote per
check whose score passes a level; on chain a CUSUM per operator (SUSPECTED adds w =
`SUSPECT_WEIGHT`, PASSED takes 1 off, floored at 0) jails at w·T (T = `suspect_threshold`). An
honest excursion starts only with a suspicion (chance ≤ β per check), so over N checks
P(honest jailed) ≤ N·β·h(w), h the chance that the walk from w reaches w·T before 0 (solved
exactly, a banded linear system). Among the levels that keep this ≤ α it picks the one that jails
the alternative (a cheat scoring above the level with chance γ, drift γ(w + 1) − 1) in the fewest
expected checks.

Assumption, stated: honest checks' scores are independent given the past (fresh requests, fresh
noise) and each one's tails are within the β's — what calibration on benign noise (with margins and
confidence bounds) supports; `bench/verify.py` measures the false-alarm side on held-out data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import Any

from contracts.verification import SUSPECT_WEIGHT
from verifier.errors import ToleranceError


@dataclass(frozen=True)
class EvidenceScale:
    """Score levels, honest tail bounds β (≥ the real ones) and cheat tails γ (the alternative)."""

    levels: tuple[float, ...]
    null_tails: tuple[float, ...]
    alt_tails: tuple[float, ...]

    def __post_init__(self) -> None:
        m = len(self.levels)
        if m == 0 or len(self.null_tails) != m or len(self.alt_tails) != m:
            raise ToleranceError(f"levels ({m}), null_tails ({len(self.null_tails)}) and alt_tails "
                                 f"({len(self.alt_tails)}) must be non-empty and of one length")
        if any(b <= a for a, b in zip(self.levels, self.levels[1:], strict=False)):
            raise ToleranceError(f"levels must increase: {self.levels}")
        for name, t in (("null_tails", self.null_tails), ("alt_tails", self.alt_tails)):
            seq = (1.0, *t, 0.0)
            if any(not 0 <= x <= 1 for x in t) or any(b > a for a, b in zip(seq, seq[1:], strict=False)):
                raise ToleranceError(f"{name} must be non-increasing probabilities in [0, 1]: {t}")
        if any(x <= 0 for x in self.null_tails):
            raise ToleranceError(f"null_tails must be > 0 (an honest tail bound of 0 claims too much): "
                                 f"{self.null_tails}")
        e = self.evalues
        if any(b < a for a, b in zip(e, e[1:], strict=False)):
            raise ToleranceError(f"the e-values per bin must be nondecreasing, got {e}: choose alt_tails "
                                 f"whose ratio to null_tails grows with the level")

    @property
    def evalues(self) -> tuple[float, ...]:
        """e per bin: bin 0 is score ≤ t_1, bin j is t_j < score ≤ t_{j+1}, bin m is score > t_m."""
        b = (1.0, *self.null_tails, 0.0)
        g = (1.0, *self.alt_tails, 0.0)
        return tuple((g[j] - g[j + 1]) / (b[j] - b[j + 1]) if b[j] > b[j + 1] else math.inf
                     for j in range(len(self.levels) + 1))

    def evalue(self, score: float) -> float:
        """The e-value of one check's score (NaN counts as the top bin)."""
        j = sum(1 for t in self.levels if not score <= t)
        return self.evalues[j]

    def honest_mean_bound(self) -> float:
        """Σ e_j (β_j − β_{j+1}): the bound on E[e] under honest play — 1 up to rounding."""
        b = (1.0, *self.null_tails, 0.0)
        return sum(e * (b[j] - b[j + 1]) for j, e in enumerate(self.evalues))

    def to_json(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "null_tails": list(self.null_tails),
                "alt_tails": list(self.alt_tails)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EvidenceScale:
        return cls(tuple(d["levels"]), tuple(d["null_tails"]), tuple(d["alt_tails"]))


@dataclass(frozen=True)
class SprtParams:
    """Boundaries of the per-operator log-wealth: flag, jail (eject) and the floor."""

    flag_at: float  # ln(1 / α_flag)
    jail_at: float  # h
    floor: float  # b: log-wealth never goes below −b
    alpha: float  # the lifetime false-ejection bound these give ...
    lifetime_checks: int  # ... over this many checks of one operator

    @classmethod
    def for_bound(cls, alpha: float = 1e-6, lifetime_checks: int = 1_000_000,
                  flag_alpha: float = 1e-2) -> SprtParams:
        if not 0 < alpha < 1 or not 0 < flag_alpha < 1 or lifetime_checks < 1:
            raise ToleranceError(f"need 0 < alpha ({alpha}), flag_alpha ({flag_alpha}) < 1 and "
                                 f"lifetime_checks ({lifetime_checks}) >= 1")
        return cls(math.log(1 / flag_alpha), math.log(2 / alpha), math.log(lifetime_checks), alpha,
                   lifetime_checks)

    def false_ejection_bound(self) -> float:
        """e^{−h} + N·e^{−(h+b)}: P(an honest operator is ever jailed in `lifetime_checks`)."""
        return math.exp(-self.jail_at) + self.lifetime_checks * math.exp(-(self.jail_at + self.floor))

    def to_json(self) -> dict[str, Any]:
        return {"flag_at": self.flag_at, "jail_at": self.jail_at, "floor": self.floor,
                "alpha": self.alpha, "lifetime_checks": self.lifetime_checks,
                "false_ejection_bound": self.false_ejection_bound()}


class Standing(Enum):
    OK = "ok"
    FLAGGED = "flagged"  # sample more often
    JAILED = "jailed"  # ejected: the statistical evidence crossed the lifetime-bounded boundary


@dataclass
class OperatorEvidence:
    log_wealth: float = 0.0
    checks: int = 0
    standing: Standing = Standing.OK
    jailed_after: int | None = None  # checks it took


@dataclass
class Ledger:
    """Per-operator accumulated statistical evidence (pure state; the caller persists it)."""

    scale: EvidenceScale
    params: SprtParams
    operators: dict[str, OperatorEvidence] = field(default_factory=dict)

    def record(self, operator: str, score: float) -> Standing:
        """Add one check's score; returns the operator's standing after it."""
        ev = self.operators.setdefault(operator, OperatorEvidence())
        if ev.standing is Standing.JAILED:
            return ev.standing
        e = self.scale.evalue(score)
        ev.checks += 1
        ev.log_wealth = max(ev.log_wealth + (math.log(e) if e > 0 else -math.inf), -self.params.floor)
        if ev.log_wealth >= self.params.jail_at:
            ev.standing, ev.jailed_after = Standing.JAILED, ev.checks
        elif ev.log_wealth >= self.params.flag_at:
            ev.standing = Standing.FLAGGED
        else:
            ev.standing = Standing.OK
        return ev.standing

    def sample_multiplier(self, operator: str, flagged: float = 4.0) -> float:
        """How much more often to sample this operator's requests (FLAGGED: `flagged`×)."""
        ev = self.operators.get(operator)
        return flagged if ev is not None and ev.standing is Standing.FLAGGED else 1.0


def checks_to_jail(scale: EvidenceScale, params: SprtParams, scores: list[float]) -> int | None:
    """How many of `scores` (in order) one operator takes to be jailed; None if it never is."""
    led = Ledger(scale, params)
    for s in scores:
        if led.record("x", s) is Standing.JAILED:
            return led.operators["x"].jailed_after
    return None


# ── the contract's count-based hook ─────────────────────────────────────────────────────────
@dataclass(frozen=True)
class SuspectRule:
    """Vote V_SUSPECT when a check's score is above `level` (honest tail ≤ `tail`); the contract's
    CUSUM (+`weight` per SUSPECTED, −1 per PASSED) jails at `weight * count`. P(honest jailed in
    `lifetime_checks` checks) ≤ `bound`; a cheat above the level with chance `alt_tail` is jailed
    after about `checks_to_jail` checks (inf when its drift is not upward). `level` inf: never
    vote SUSPECT (no level is safe at that threshold)."""

    level: float
    tail: float
    count: int
    lifetime_checks: int
    bound: float
    weight: int = SUSPECT_WEIGHT
    alt_tail: float = 0.0
    checks_to_jail: float = math.inf

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "tail": self.tail, "count": self.count, "weight": self.weight,
                "lifetime_checks": self.lifetime_checks, "bound": self.bound,
                "alt_tail": self.alt_tail, "checks_to_jail": self.checks_to_jail}


def cusum_excursion(beta: float, weight: int, count: int) -> float:
    """P(an excursion of the contract's CUSUM, which starts at `weight` after a suspicion, reaches
    `weight * count` before falling back to 0), a suspicion having chance `beta` per check."""
    import numpy as np
    from scipy.linalg import solve_banded

    top = weight * count
    if weight >= top:
        return 1.0
    # h(s), s = 1 .. top-1: h(s) = β h(s+w) + (1-β) h(s-1); h(0) = 0, h(≥ top) = 1.
    n = top - 1
    ab = np.zeros((weight + 2, n))  # rows: upper diagonals w..1, main, lower 1
    ab[weight, :] = 1.0  # main diagonal
    ab[0, weight:] = -beta  # the +w neighbour (column j = i + w)
    ab[weight + 1, :-1] = -(1 - beta)  # the -1 neighbour (column j = i - 1)
    rhs = np.zeros(n)
    rhs[np.arange(1, n + 1) + weight >= top] = beta  # jumps past the top: h = 1
    h = solve_banded((1, weight), ab, rhs)
    return float(min(1.0, max(0.0, h[weight - 1])))


def cusum_bound(beta: float, weight: int, count: int, lifetime_checks: int) -> float:
    """P(an honest operator is jailed within `lifetime_checks` checks) ≤ this (each excursion
    starts with a suspicion: at most N·β of them expected)."""
    return min(1.0, lifetime_checks * beta * cusum_excursion(beta, weight, count))


def suspect_rule(scale: EvidenceScale, alpha: float = 1e-6, lifetime_checks: int = 100_000,
                 threshold: int | None = None, weight: int = SUSPECT_WEIGHT,
                 max_count: int = 64) -> SuspectRule:
    """The vote level (one of the scale's) for the contract's CUSUM with `threshold` (the deployed
    `suspect_threshold`; None: also choose it, up to `max_count`) that keeps an honest operator's
    lifetime chance of being jailed ≤ `alpha` and jails the scale's alternative fastest. With a
    threshold no level keeps safe, the rule never votes SUSPECT (level inf)."""
    return _suspect_rule(scale, alpha, lifetime_checks, threshold, weight, max_count)


@lru_cache(maxsize=64)
def _suspect_rule(scale: EvidenceScale, alpha: float, lifetime_checks: int, threshold: int | None,
                  weight: int, max_count: int) -> SuspectRule:
    best: SuspectRule | None = None
    counts = [threshold] if threshold is not None else range(1, max_count + 1)
    for t, beta, gamma in zip(scale.levels, scale.null_tails, scale.alt_tails, strict=True):
        for k in counts:
            bound = cusum_bound(beta, weight, k, lifetime_checks)
            if bound <= alpha:
                drift = gamma * (weight + 1) - 1
                eta = weight * k / drift if drift > 0 else math.inf
                rule = SuspectRule(t, beta, k, lifetime_checks, bound, weight, gamma, eta)
                if best is None or (rule.checks_to_jail, rule.count) < (best.checks_to_jail, best.count):
                    best = rule
                break
    if best is not None:
        return best
    if threshold is not None:
        return SuspectRule(math.inf, 0.0, threshold, lifetime_checks, 0.0, weight)
    raise ToleranceError(f"no level keeps {lifetime_checks} honest checks under {alpha} with a "
                         f"threshold of at most {max_count}")
