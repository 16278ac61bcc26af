"""What a verifier says, by policy: the pure decision from what it fetched and computed.

Policies (config `verification.agent_policy`, flag `--verifier-policy`):

- `honest` — re-executes; verdict = the tolerance test's; evidence = its own output rows (the
  COMMIT root of the server that re-executed). Without the claimed rows (the stage does not serve
  them, or they do not reproduce its root) it says FRAUD: a stage that cannot show its rows cannot
  open them either, and the contract then convicts it. Without inputs (the previous stage does not
  serve them) it cannot compute and falls back to the lazy answer.
- `lazy` — never computes. Its strongest play: fetch the stage's claimed rows (cheap I/O), say OK,
  and reveal the stage's own root as its output root, so its opened chunks are the stage's and can
  never contradict its verdict. It is paid like an honest verifier when the stage is honest, and
  when the stage cheats it sides against the honest members' agreeing evidence and is slashed
  "verdict against the outcome" (or escalates the task, where it loses the same way): it loses money
  in expectation whenever cheating stages exist. Without the claimed rows it says FRAUD (as honest).
- `accuse` — never computes and always says FRAUD. Its strongest play: evidence that really
  disagrees with the stage (the claimed rows nudged far outside the chunk rule), so it is never
  caught contradicting its own evidence; against an honest stage and honest peers it is slashed
  "verdict against the outcome".
- `silent` — computes and commits like `honest` but never reveals: slashed "verdict not revealed".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from verifier.merkle import StageCommitment


class Policy(enum.StrEnum):
    HONEST = "honest"
    LAZY = "lazy"
    ACCUSE = "accuse"
    SILENT = "silent"

    @property
    def computes(self) -> bool:
        """Whether the policy re-executes the stage."""
        return self in (Policy.HONEST, Policy.SILENT)

    @property
    def reveals(self) -> bool:
        return self is not Policy.SILENT


@dataclass(frozen=True)
class Claimed:
    """The checked stage's rows as fetched, proven against its committed root."""

    rows: torch.Tensor  # (P, d) float32
    tree: StageCommitment


@dataclass(frozen=True)
class Recomputed:
    """The verifier's own output: the rows its server computed and the root that server committed."""

    rows: torch.Tensor  # (P, d) float32
    tree: StageCommitment  # root == the server's COMMIT root


@dataclass(frozen=True)
class Decision:
    verdict: bool  # True: the stage's output is right
    evidence: str  # "recomputed" | "claimed" | "forged" | "blank": which tree the output root is
    reason: str


def decide(policy: Policy, claimed: Claimed | None, recomputed: Recomputed | None,
           passed: bool | None) -> Decision:
    """The verdict and which evidence backs it. `passed` is the tolerance test's result (None when
    nothing was judged)."""
    if claimed is None:
        return Decision(False, "recomputed" if recomputed is not None else "blank",
                        "the stage's claimed rows are unavailable or do not match its root")
    if policy is Policy.LAZY:
        return Decision(True, "claimed", "lazy: vouched for the stage without computing")
    if policy is Policy.ACCUSE:
        return Decision(False, "forged", "accuse: accused the stage without computing")
    if recomputed is None or passed is None:
        return Decision(True, "claimed", "inputs unavailable: fell back to the stage's own rows")
    return Decision(bool(passed), "recomputed",
                    "tolerance test passed" if passed else "tolerance test failed")
