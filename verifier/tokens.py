"""Token checks for the last stage: was each claimed token the one its logits and the request's
committed seed produce?

The sampling rule is the network's (the node's `sample_token` follows it; a test holds the two
together). For the token at sequence position `p`, from the logits row computed at position `p − 1`:

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

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from verifier.encoding import keccak
from verifier.errors import TokenCheckError

SEED_TAG = b"veriplex.sample.v1"


@dataclass(frozen=True)
class SamplingSpec:
    """A request's committed sampling parameters. temperature 0 = greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature != self.temperature or not 0.0 <= self.temperature <= 100.0:
            raise TokenCheckError(f"temperature ({self.temperature}) must be in [0, 100]")
        if not 0.0 < self.top_p <= 1.0:
            raise TokenCheckError(f"top_p ({self.top_p}) must be in (0, 1]")
        if not 0 <= self.seed < 2**64:
            raise TokenCheckError(f"seed ({self.seed}) must be in [0, 2**64)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def step_seed(seed: int, position: int) -> int:
    """The generator seed for the token at sequence position `position`."""
    if not 0 <= position < 2**64:
        raise TokenCheckError(f"position ({position}) must be in [0, 2**64)")
    digest = keccak(SEED_TAG + struct.pack(">QQ", seed, position))
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def _row(logits: Any) -> np.ndarray:
    if type(logits).__module__.startswith("torch"):
        logits = logits.detach().cpu().float().numpy()
    row = np.asarray(logits, dtype=np.float32)
    if row.ndim != 1 or row.size == 0:
        raise TokenCheckError(f"want one row of logits (V,), got shape {row.shape}")
    if not np.isfinite(row).all():
        raise TokenCheckError("logits contain NaN or infinity")
    return row


def _sorted_mass(row: np.ndarray, spec: SamplingSpec) -> tuple[np.ndarray, np.ndarray, int]:
    """Cumulative sorted probabilities, the sort order, and how many tokens top-p keeps."""
    import torch

    p = torch.softmax(torch.from_numpy(row) / spec.temperature, dim=-1)  # (V,) float32
    p_sorted, order = torch.sort(p, descending=True, stable=True)
    cum = torch.cumsum(p_sorted, dim=-1)
    keep = int(torch.searchsorted(cum, torch.tensor([spec.top_p]), right=False).item()) + 1
    return cum.numpy(), order.numpy(), min(keep, p.numel())


def _uniform(spec: SamplingSpec, position: int) -> float:
    import torch

    g = torch.Generator(device="cpu").manual_seed(step_seed(spec.seed, position))
    return float(torch.rand(1, generator=g, dtype=torch.float32).item())


def reproduce_token(logits: Any, spec: SamplingSpec, position: int) -> int:
    """The token the network's rule picks at `position` from one row of logits (V,)."""
    row = _row(logits)
    if spec.greedy:
        return int(np.argmax(row))
    import torch

    cum, order, keep = _sorted_mass(row, spec)
    kept = torch.from_numpy(cum[:keep])
    u = torch.tensor([_uniform(spec, position)], dtype=torch.float32)
    idx = int(torch.searchsorted(kept, u * kept[-1], right=True).item())
    return int(order[min(idx, keep - 1)])


def token_acceptable(logits: Any, token: int, spec: SamplingSpec, position: int,
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
                 spec: SamplingSpec, logit_tol: float, mass_tol: float) -> TokenVerdict:
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
