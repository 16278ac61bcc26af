"""Fault injection for a cheating worker: `veriplex node serve --perturb-weights STD`.

Adds N(0, STD²) noise to every weight of the loaded shard, in place, from a generator seeded per
tensor by (seed, tensor name) — the same noise whatever range a node loads, run after run. The
worker then serves (and commits) outputs of a model that is not the registered one, which is what
the verification game must catch. For tests and demos only; the CLI prints a warning.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch


def perturb_shard(shard: Any, std: float, seed: int = 0) -> int:
    """Add seeded N(0, std²) noise to every parameter of `shard`; returns how many were changed."""
    if not std > 0 or std != std:
        raise ValueError(f"--perturb-weights STD ({std}) must be a positive number")
    n = 0
    with torch.no_grad():
        for name, t in sorted(shard.tensors().items()):
            s = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big") >> 1
            g = torch.Generator().manual_seed(s)
            noise = torch.randn(t.shape, generator=g, dtype=torch.float32) * std
            t.add_(noise.to(device=t.device, dtype=t.dtype))
            n += 1
    return n
