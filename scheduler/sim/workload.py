"""Request streams for the simulator: Poisson arrivals, log-normal prompt and output lengths.

A `Workload` is a small frozen description (also accepted as JSON, see SCHEMAS.md); `draw()` turns
it into concrete arrival times and lengths with a seeded generator, so runs are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scheduler.errors import InvalidInput

MAX_REQUESTS = 1_000_000  # one simulation's stream; far above what the bench runs
MAX_TOKENS = 1 << 24  # prompt / output lengths


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Workload:
    requests: int = 400
    rate_per_s: float = 20.0  # mean arrivals per second (Poisson)
    prompt_mean: int = 256
    prompt_max: int = 1024
    output_mean: int = 64
    output_max: int = 256
    sigma: float = 0.6  # log-normal shape of both length distributions
    seed: int = 0

    def __post_init__(self) -> None:
        for name, hi in (("requests", MAX_REQUESTS), ("prompt_mean", MAX_TOKENS),
                         ("prompt_max", MAX_TOKENS), ("output_mean", MAX_TOKENS),
                         ("output_max", MAX_TOKENS)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
                raise InvalidInput(f"workload.{name}: must be an integer in [1, {hi:,}], got "
                                   f"{_short(v)}")
        for name in ("rate_per_s", "sigma"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not abs(v) < 1e300:
                raise InvalidInput(f"workload.{name}: expected a finite number, got {_short(v)}")
        if not self.rate_per_s > 0:
            raise InvalidInput(f"workload.rate_per_s: must be > 0, got {self.rate_per_s!r}")
        if not (0 <= self.sigma <= 3):
            raise InvalidInput(f"workload.sigma: must be in [0, 3], got {self.sigma!r}")
        if (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                or not 0 <= self.seed < 2**64):
            raise InvalidInput(f"workload.seed: must be an integer in [0, 2^64), got "
                               f"{_short(self.seed)}")

    @classmethod
    def from_dict(cls, d: Any) -> Workload:
        if not isinstance(d, dict):
            raise InvalidInput(f"workload: expected an object, got {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidInput(f"workload: unknown fields {sorted(unknown)}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise InvalidInput(f"workload: {exc}") from exc

    def draw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(arrival times s, prompt lengths, output lengths), each of length `requests`."""
        rng = np.random.default_rng(self.seed)
        gaps = rng.exponential(1.0 / self.rate_per_s, size=self.requests)
        arrivals = np.cumsum(gaps) - gaps[0]

        def lengths(mean: int, cap: int) -> np.ndarray:
            mu = np.log(mean) - self.sigma**2 / 2
            x = np.rint(rng.lognormal(mu, self.sigma, size=self.requests)).astype(np.int64)
            return np.clip(x, 1, cap)

        return arrivals, lengths(self.prompt_mean, self.prompt_max), \
            lengths(self.output_mean, self.output_max)
