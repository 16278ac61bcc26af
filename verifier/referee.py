"""The referee of a contested check: both claims judged by their distance to an fp32 recomputation.

When a stage and a verifier disagree (a verifier says the stage's rows fail; the stage says the
verifier's recomputation is wrong), anyone can recompute the stage in float32 on a CPU from the
committed inputs — deterministic enough to be a reference for either precision: an honest bf16
computation sits within bf16 noise of it, an honest fp32 one much closer. The referee measures each
claim against that reference with the registered profile (`verifier.evidence.measure`) and rules:

- a claim **within** the profile's proof-grade limits of the reference is upheld;
- the stage is **guilty** only if its claim is beyond the limits and the verifier's is within
  (proof-grade: the stage's rows are not what the committed inputs give);
- the verifier is **wrong** if the stage's claim is within the limits (whatever the verifier said);
- neither within: both are far from the reference — inconclusive, escalate (a second referee or a
  larger committee); `closer` says which claim is nearer.

The recomputation is the caller's (it needs the model: `node/verification/calib_lab.Lab.recompute` or
the node's executor in float32); this module is pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from verifier.evidence import Measurement, Profile, measure, proof_verdict

STAGE_GUILTY, VERIFIER_WRONG, INCONCLUSIVE = "stage_guilty", "verifier_wrong", "inconclusive"


@dataclass(frozen=True)
class Ruling:
    outcome: str  # STAGE_GUILTY | VERIFIER_WRONG | INCONCLUSIVE
    stage: Measurement  # the stage's claim vs the reference
    verifier: Measurement  # the verifier's claim vs the reference
    stage_within: bool
    verifier_within: bool

    @property
    def closer(self) -> str:
        return "stage" if self.stage.score <= self.verifier.score else "verifier"

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "closer": self.closer, "stage_within": self.stage_within,
                "verifier_within": self.verifier_within, "stage": self.stage.to_json(),
                "verifier": self.verifier.to_json()}


def referee(stage_rows: Any, verifier_rows: Any, reference_rows: Any, layers: int, profile: Profile) -> Ruling:
    """Rule on a contested check of `layers` layers: rows (T, d) of the stage's claim, of the
    verifier's recomputation and of the fp32 reference, judged with the registered `profile`."""
    s = measure(stage_rows, reference_rows, layers, profile.proof, profile.depth_exponent)
    v = measure(verifier_rows, reference_rows, layers, profile.proof, profile.depth_exponent)
    s_in, v_in = not proof_verdict(s, profile.proof).failed, not proof_verdict(v, profile.proof).failed
    outcome = VERIFIER_WRONG if s_in else (STAGE_GUILTY if v_in else INCONCLUSIVE)
    return Ruling(outcome, s, v, s_in, v_in)
