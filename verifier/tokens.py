"""Token checks for the last stage: was each claimed token the one its logits and the request's
committed seed produce?

The sampling rule is the network's, defined once in `protocol.sampling` and summarised here. For the
token at sequence position `p`, from the logits row computed at position `p − 1`:

- greedy (temperature 0): argmax, lowest token id on ties;
- otherwise, in float32: `prob = softmax(logits / temperature)`; sort descending, stable (ties keep
  ascending token id); keep the shortest prefix whose cumulative mass reaches `top_p` (at least one
  token); draw `u = torch.rand(1)` from a CPU `torch.Generator` seeded with `step_seed(seed, p)`;
  pick the first kept token whose cumulative mass exceeds `u × kept mass`.

`step_seed(seed, p)` = keccak256("veriplex.sample.v1" ‖ u64 seed ‖ u64 p), first 8 bytes
big-endian, top bit cleared — per position, so any single token can be checked alone.

Recomputed logits carry benign noise, so checks tolerate it: greedy accepts a token whose logit is
within `logit_tol` of the maximum (an exact or near tie); sampling accepts the claimed token if an
order of near-tied tokens (logits within `logit_tol`) and a top-p cut and draw boundary within
`mass_tol` of the recomputed ones would have produced it. torch is
imported lazily (only sampling needs it, for the generator).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.sampling import Sampling, sample_token, sorted_mass, step_seed, uniform  # noqa: F401
from verifier.errors import TokenCheckError


def _row(logits: Any) -> np.ndarray:
    if type(logits).__module__.startswith("torch"):
        logits = logits.detach().cpu().float().numpy()
    row = np.asarray(logits, dtype=np.float32)
    if row.ndim != 1 or row.size == 0:
        raise TokenCheckError(f"want one row of logits (V,), got shape {row.shape}")
    if not np.isfinite(row).all():
        raise TokenCheckError("logits contain NaN or infinity")
    return row


def _sorted_mass(row: np.ndarray, spec: Sampling) -> tuple[np.ndarray, np.ndarray, int]:
    """Cumulative sorted probabilities, the sort order, and how many tokens top-p keeps."""
    import torch

    cum, order, keep = sorted_mass(torch.from_numpy(row), spec)
    return cum.numpy(), order.numpy(), keep


def _uniform(spec: Sampling, position: int) -> float:
    return uniform(spec, position)


def reproduce_token(logits: Any, spec: Sampling, position: int) -> int:
    """The token the network's rule picks at `position` from one row of logits (V,)."""
    return sample_token(_row(logits), spec, position)


def token_acceptable(logits: Any, token: int, spec: Sampling, position: int,
                     logit_tol: float, mass_tol: float) -> bool:
    """Could `token` be the rule's pick at `position` given logits known up to benign noise?

    Greedy: its logit is within `logit_tol` of the maximum. Sampling: noise can reorder tokens whose
    logits are within `logit_tol` of the claimed one's and shift cumulative masses by `mass_tol`, so
    the claimed token's interval in the sorted order starts anywhere between the mass of the tokens
    surely above it and the mass of those possibly above it; it is accepted if the draw's target
    `u × kept mass`, for any top-p cut within `mass_tol` of the recomputed one, can fall in it.
    """
    row = _row(logits)
    if not 0 <= token < row.size:
        return False
    if spec.greedy:
        return bool(row[token] >= row.max() - logit_tol)
    if token == reproduce_token(row, spec, position):
        return True
    cum, _, _ = _sorted_mass(row, spec)
    import torch

    p = torch.softmax(torch.from_numpy(row) / spec.temperature, dim=-1).numpy().astype(np.float64)
    lt = row[token]
    lo_min = float(p[row > lt + logit_tol].sum())  # mass surely sorted above the token
    lo_max = float(p[row >= lt - logit_tol].sum() - p[token])  # mass possibly sorted above it
    if lo_min >= spec.top_p + mass_tol:  # surely cut off by top-p
        return False
    u = _uniform(spec, position)
    first = int(np.searchsorted(cum, spec.top_p - mass_tol, side="left"))
    last = int(np.searchsorted(cum, spec.top_p + mass_tol, side="left"))
    for cut in range(min(first, cum.size - 1), min(last, cum.size - 1) + 1):
        target = u * float(cum[cut])
        if lo_min - mass_tol <= target < lo_max + float(p[token]) + mass_tol:
            return True
    return False


@dataclass(frozen=True)
class TokenVerdict:
    """Outcome of checking a run of tokens: the positions whose tokens the logits do not explain."""

    passed: bool
    checked: int
    mismatches: tuple[tuple[int, int, int], ...]  # (position, claimed, reproduced)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "checked": self.checked,
                "mismatches": [{"position": p, "claimed": c, "reproduced": r}
                               for p, c, r in self.mismatches]}


def check_tokens(logits: Any | Callable[[int], Any], tokens: Sequence[int], first_position: int,
                 spec: Sampling, logit_tol: float, mass_tol: float) -> TokenVerdict:
    """Check `tokens[i]` (at sequence position `first_position + i`) against `logits[i]`, the row
    computed at the position before it. `logits` is an (N, V) array / tensor or a callable i → row."""
    n = len(tokens)
    if callable(logits):
        get = logits
    else:
        if type(logits).__module__.startswith("torch"):
            logits = logits.detach().cpu().float().numpy()
        arr = np.asarray(logits)
        if arr.ndim != 2 or arr.shape[0] != n:
            raise TokenCheckError(f"want logits of shape ({n}, V) for {n} tokens, got {arr.shape}")
        def get(i: int) -> Any:
            return arr[i]
    if first_position < 1:
        raise TokenCheckError(f"first_position ({first_position}) must be >= 1: a token follows a row")
    bad = []
    for i, tok in enumerate(tokens):
        row, pos = get(i), first_position + i
        if not token_acceptable(row, int(tok), spec, pos, logit_tol, mass_tol):
            bad.append((pos, int(tok), reproduce_token(row, spec, pos)))
    return TokenVerdict(not bad, n, tuple(bad))
