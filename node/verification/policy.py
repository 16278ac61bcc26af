"""What a verifier says, by policy: the pure decision from what it fetched and computed.

Policies (config `verification.agent_policy`, flag `--verifier-policy`):

- `honest` — re-executes; verdict = the check's two kinds of evidence (`jobs`: `verifier.evidence.
  assess` under the model's registered profile, then `vote_kind`): proof-grade evidence → FAIL
  naming a failing leaf, a score above the profile's suspect level only → SUSPECT (statistical:
  counted against the operator on chain, never slashes), else PASS; evidence = its own output rows (the
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
    verdict: bool | None  # True: no proof of fraud (PASS or SUSPECT); None: abstain (commit nothing)
    evidence: str  # "recomputed" | "claimed" | "forged" | "blank" | "none": which tree the output root is
    reason: str
    suspect: bool = False  # statistical evidence only: the contract's SUSPECT, not PASS
    no_input: bool = False  # the input stage did not serve its rows: the contract's NO_INPUT

    @property
    def kind(self) -> int:
        """The contract's VerdictKind (PASS 1, FAIL 2, SUSPECT 3, NO_INPUT 4); 0 when abstaining."""
        if self.verdict is None:
            return 0
        if self.no_input:
            return 4
        return 3 if self.suspect else (1 if self.verdict else 2)


def decide(policy: Policy, claimed: Claimed | None, recomputed: Recomputed | None,
           passed: bool | str | None, inputs_missing: bool = False) -> Decision:
    """The verdict and which evidence backs it. `passed` is the check's result: "pass", "suspect"
    or "fraud" (`verifier.evidence.vote_kind`), a bool (True: pass, False: fraud), or None when
    nothing was judged. `inputs_missing`: the input stage never served rows matching its root, so
    an honest member says so (NO_INPUT: the input stage must answer for it on chain) instead of
    abstaining, which would cost it its stake as a non-revealer."""
    if claimed is None:
        return Decision(False, "recomputed" if recomputed is not None else "blank",
                        "the stage's claimed rows are unavailable or do not match its root")
    if policy is Policy.LAZY:
        return Decision(True, "claimed", "lazy: vouched for the stage without computing")
    if policy is Policy.ACCUSE:
        return Decision(False, "forged", "accuse: accused the stage without computing")
    if recomputed is None and inputs_missing:
        return Decision(False, "blank", "no input: the input stage did not serve rows matching its "
                                        "committed root", no_input=True)
    if recomputed is None or passed is None:  # honest or silent, and no re-execution of its own
        return Decision(None, "none", "abstained: no re-execution of its own before the commit "
                                      "deadline, so no verdict (it never vouches for rows it did not check)")
    outcome = passed if isinstance(passed, str) else ("pass" if passed else "fraud")
    if outcome not in ("pass", "suspect", "fraud"):
        raise ValueError(f"unknown check outcome {passed!r}")
    if outcome == "suspect":
        return Decision(True, "recomputed", "suspect: no proof-grade evidence, score above the "
                                            "profile's suspect level", suspect=True)
    return Decision(outcome == "pass", "recomputed",
                    "check passed" if outcome == "pass" else "proof-grade evidence of fraud")
