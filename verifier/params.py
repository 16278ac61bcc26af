"""The verification game's equilibrium margin: does cheating lose money in expectation?

Pure arithmetic over the deployed parameters (read from chain by `verifier.cli`). A stage operator
that skips or fakes its compute saves `gain` per request: the part of the charge it would have
spent on compute — charge (from registry prices, for a stated request size) × the operators'
share after the protocol fee and the verifier pool × its stage's share of the pipeline
(`1 / stages`, equal stages assumed) × `compute_cost_fraction` (the share of an operator's
revenue that is compute cost). It is caught with probability `p_stage · detection` — the request
sampled (`sample_bps`), its stage drawn (`1 / stages`), the check finding it (`detection`) — and
then loses `stage_slash` (its payment for the request is refunded too, which this bound ignores,
so the margin is conservative). Honest serving is an equilibrium when
`margin = p_stage · detection · stage_slash − gain > 0` (DESIGN §5.6).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from verifier.errors import VerifierError

BPS = 10_000


class ParamsError(VerifierError, ValueError):
    """Inputs to the margin that make no sense (a probability outside [0, 1], no stages...)."""


@dataclass(frozen=True)
class MarginInputs:
    sample_bps: int
    stage_slash_wei: int
    protocol_fee_bps: int
    verifier_share_bps: int
    stages: int
    charge_wei: int
    detection: float = 0.99
    compute_cost_fraction: float = 0.5

    def validate(self) -> None:
        if not 0 <= self.sample_bps <= BPS:
            raise ParamsError(f"sample_bps ({self.sample_bps}) must be within 0..{BPS}")
        if self.stages < 1:
            raise ParamsError(f"stages ({self.stages}) must be >= 1")
        if not 0.0 <= self.detection <= 1.0:
            raise ParamsError(f"detection ({self.detection}) must be within [0, 1]")
        if not 0.0 <= self.compute_cost_fraction <= 1.0:
            raise ParamsError(
                f"compute_cost_fraction ({self.compute_cost_fraction}) must be within [0, 1]"
            )
        if self.charge_wei < 0 or self.stage_slash_wei < 0:
            raise ParamsError(
                f"charge_wei ({self.charge_wei}) and stage_slash_wei ({self.stage_slash_wei}) "
                f"must be >= 0"
            )
        if self.protocol_fee_bps + self.verifier_share_bps > BPS:
            raise ParamsError(
                f"protocol_fee_bps + verifier_share_bps ({self.protocol_fee_bps} + "
                f"{self.verifier_share_bps}) must not exceed {BPS}"
            )


@dataclass(frozen=True)
class Margin:
    inputs: MarginInputs
    p_sample: float  # chance a request is checked
    p_stage: float  # chance a given stage of it is the one checked
    expected_penalty_wei: float  # p_stage · detection · stage_slash
    gain_wei: float  # compute the cheating stage saves on one request
    margin_wei: float

    @property
    def positive(self) -> bool:
        return self.margin_wei > 0

    @property
    def break_even_sample_bps(self) -> float:
        """The least sample rate (bps) at which the margin is positive, other inputs fixed."""
        per_bps = self.inputs.detection * self.inputs.stage_slash_wei / self.inputs.stages / BPS
        return float("inf") if per_bps == 0 else self.gain_wei / per_bps

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": asdict(self.inputs),
            "p_sample": self.p_sample,
            "p_stage": self.p_stage,
            "expected_penalty_wei": self.expected_penalty_wei,
            "gain_wei": self.gain_wei,
            "margin_wei": self.margin_wei,
            "positive": self.positive,
            "break_even_sample_bps": self.break_even_sample_bps,
        }


def equilibrium_margin(inp: MarginInputs) -> Margin:
    """p_stage · detection · slash − gain, for one request of `inp.charge_wei`."""
    inp.validate()
    p_sample = inp.sample_bps / BPS
    p_stage = p_sample / inp.stages
    penalty = p_stage * inp.detection * inp.stage_slash_wei
    operators_share = (BPS - inp.protocol_fee_bps - inp.verifier_share_bps) / BPS
    gain = inp.charge_wei * operators_share / inp.stages * inp.compute_cost_fraction
    return Margin(inp, p_sample, p_stage, penalty, gain, penalty - gain)
