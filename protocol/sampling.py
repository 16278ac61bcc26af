"""THE sampling rule of the network: how the last stage picks each token, and how anyone reproduces it.

For the token at sequence position `p`, from the logits row computed at position `p − 1`:

- greedy (temperature 0): argmax, lowest token id on ties;
- otherwise, in float32 on CPU: `prob = softmax(logits / temperature)`; sort descending, stable (ties
  keep ascending token id); keep the shortest prefix whose cumulative mass reaches `top_p` (at least
  one token); draw `u = torch.rand(1)` from a CPU `torch.Generator` seeded with `step_seed(seed, p)`;
  pick the first kept token whose cumulative mass exceeds `u × kept mass`.

`step_seed(seed, p)` = keccak256("veriplex.sample.v1" ‖ u64 seed ‖ u64 p), first 8 bytes big-endian,
top bit cleared — per position, so any single token can be checked alone. The worker (`sample_token`)
and the verifier's token check (`verifier.tokens`) both call this module. torch is imported lazily:
loading the request types loads no torch.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from protocol.keccak import keccak

if TYPE_CHECKING:
    import torch

SEED_TAG = b"veriplex.sample.v1"


class Sampling(BaseModel):
    """A request's sampling parameters (signed into the request). temperature 0 = greedy."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    temperature: float = Field(0.0, ge=0.0, le=100.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int = Field(0, ge=0, lt=2**64)

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> None:
        # Positional like the dataclasses it replaced: Sampling(0.7, 0.9, 11).
        super().__init__(temperature=temperature, top_p=top_p, seed=seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def step_seed(seed: int, position: int) -> int:
    """The generator seed for the token at sequence position `position`."""
    if not 0 <= position < 2**64:
        raise ValueError(f"position ({position}) must be in [0, 2**64)")
    digest = keccak(SEED_TAG + struct.pack(">QQ", seed, position))
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def sorted_mass(row: torch.Tensor, sampling: Sampling) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Cumulative sorted probabilities, the sort order, and how many tokens top-p keeps."""
    import torch

    p = torch.softmax(row.detach().to("cpu", torch.float32) / sampling.temperature, dim=-1)  # (V,)
    p_sorted, order = torch.sort(p, descending=True, stable=True)
    cum = torch.cumsum(p_sorted, dim=-1)
    keep = int(torch.searchsorted(cum, torch.tensor([sampling.top_p]), right=False).item()) + 1
    return cum, order, min(keep, p.numel())


def uniform(sampling: Sampling, position: int) -> float:
    """The draw `u` in [0, 1) for `position`."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(step_seed(sampling.seed, position))
    return float(torch.rand(1, generator=g, dtype=torch.float32).item())


def sample_token(logits: Any, sampling: Sampling, position: int) -> int:
    """Pick the token at `position` from one row of logits (V,) — torch or numpy."""
    import torch

    row = logits if isinstance(logits, torch.Tensor) else torch.as_tensor(logits)
    if row.dim() != 1:
        raise ValueError(f"sample_token wants one row of logits (V,), got shape {tuple(row.shape)}")
    if sampling.greedy:
        if row.device.type == "cpu" and row.dtype in (torch.float32, torch.float64):
            # the same first-maximum index (NaN counts as the maximum in both), 7 µs instead of
            # torch's ~105 µs over a 49,152-token vocabulary: once per request per step
            return int(row.numpy().argmax())
        return int(torch.argmax(row).item())
    cum, order, keep = sorted_mass(row, sampling)
    kept = cum[:keep]
    u = torch.tensor([uniform(sampling, position)], dtype=torch.float32)
    idx = int(torch.searchsorted(kept, u * kept[-1], right=True).item())
    return int(order[min(idx, keep - 1)].item())
