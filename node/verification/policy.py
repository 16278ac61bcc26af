"""What a verifier says, by policy: the pure decision from what it fetched and computed.

Policies (config `verification.agent_policy`, flag `--verifier-policy`):

- `honest` — re-executes; verdict = the tolerance test's; evidence = its own output rows (the
  COMMIT root of the server that re-executed). Without the claimed rows (the stage does not serve
  them, or they do not reproduce its root) it says FRAUD: a stage that cannot show its rows cannot
  open them either, and the contract then convicts it. Without its own re-execution — the inputs
  (stage j-1's rows, stage 0's tokens) could not be fetched or proven, or the re-execution failed,
  every step retried with backoff until a few blocks before the commit deadline (`jobs`) — it
  ABSTAINS: it commits nothing that round. An honest member never vouches for rows it did not
  check. The alternatives, by the contract's `close_votes` / `finalize` / `_close`, are worse:
  * OK with the stage's own rows as evidence (what this used to do) is a false pass whenever the
    stage cheats: with a 2-member committee and one round, one OK against the other member's proven
    FRAUD is a split, and the task ends UNRESOLVED — the cheater keeps its stake.
  * FRAUD with a blank evidence tree is never "contradicting its own evidence" (blank rows do not
    agree with the stage), but it breaks the outcome both ways: against an honest stage it splits an
    honest PASS (escalation, UNRESOLVED, then a "verdict against the outcome" slash), and against a
    cheating stage its blank chunks disagree with the honest accusers' recomputed rows, so the
    accusers "do not agree" and the conviction is lost (UNRESOLVED again).
  * Committing and then not revealing or not opening costs the same slash as not committing.
  Abstaining leaves the outcome to the members that did check; its price is the member's own
  "verdict not revealed" slash (`verifier_slash_wei`) at `close_votes`, which is what it costs an
  operator whose node could not do the job it is staked for (and it is not paid a reward it did not
  earn). If every member abstains the task ends UNRESOLVED (or escalates), never PASSED.
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
    verdict: bool | None  # True: the stage's output is right; None: abstain (commit nothing)
    evidence: str  # "recomputed" | "claimed" | "forged" | "blank" | "none": which tree the output root is
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
    if recomputed is None or passed is None:  # honest or silent, and no re-execution of its own
        return Decision(None, "none", "abstained: no re-execution of its own before the commit "
                                      "deadline, so no verdict (it never vouches for rows it did not check)")
    return Decision(bool(passed), "recomputed",
                    "tolerance test passed" if passed else "tolerance test failed")
