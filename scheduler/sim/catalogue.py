"""Reference hardware, regions and model shapes for generated clusters and benchmarks.

GPU figures are vendor datasheet values (dense BF16/FP16 tensor TFLOPS without sparsity, memory
bandwidth) with a typical network link for the class of machine (datacenter 25 Gbit/s, consumer
1 Gbit/s). Apple M-series report unified memory; the solver's `memory_utilization` applies to all.
Region RTTs are typical public-cloud inter-region round trips in milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scheduler.errors import InvalidInput
from scheduler.model import ModelSpec


@dataclass(frozen=True)
class Gpu:
    name: str
    vram_mib: int
    tflops: float
    mem_bw_gbps: float
    net_mbps: float


GPUS: dict[str, Gpu] = {g.name: g for g in [
    Gpu("H200", 143_771, 989.0, 4_800.0, 25_000.0),
    Gpu("H100", 81_559, 989.0, 3_350.0, 25_000.0),
    Gpu("A100-80", 81_920, 312.0, 2_039.0, 25_000.0),
    Gpu("A100-40", 40_960, 312.0, 1_555.0, 10_000.0),
    Gpu("L40S", 46_068, 362.0, 864.0, 10_000.0),
    Gpu("RTX5090", 32_607, 209.0, 1_792.0, 1_000.0),
    Gpu("RTX4090", 24_564, 165.0, 1_008.0, 1_000.0),
    Gpu("RTX3090", 24_576, 71.0, 936.0, 1_000.0),
    Gpu("M2-Ultra", 196_608, 27.0, 800.0, 1_000.0),
    Gpu("M3-Max", 131_072, 14.0, 400.0, 1_000.0),
    Gpu("M4-Pro", 65_536, 9.0, 273.0, 1_000.0),
]}

MIXES: dict[str, dict[str, float]] = {
    "mixed": {"H100": 0.1, "A100-80": 0.1, "A100-40": 0.1, "L40S": 0.1, "RTX5090": 0.1,
              "RTX4090": 0.2, "RTX3090": 0.15, "M2-Ultra": 0.05, "M3-Max": 0.05, "H200": 0.05},
    "datacenter": {"H200": 0.2, "H100": 0.4, "A100-80": 0.25, "A100-40": 0.15},
    "consumer": {"RTX5090": 0.25, "RTX4090": 0.45, "RTX3090": 0.3},
    "apple": {"M2-Ultra": 0.3, "M3-Max": 0.4, "M4-Pro": 0.3},
}

_RTT = {
    ("us-east", "us-west"): 65, ("us-east", "eu-west"): 75, ("us-east", "eu-central"): 90,
    ("us-east", "ap-northeast"): 160, ("us-east", "ap-southeast"): 220, ("us-east", "sa-east"): 115,
    ("us-west", "eu-west"): 140, ("us-west", "eu-central"): 150, ("us-west", "ap-northeast"): 105,
    ("us-west", "ap-southeast"): 170, ("us-west", "sa-east"): 170,
    ("eu-west", "eu-central"): 20, ("eu-west", "ap-northeast"): 220, ("eu-west", "ap-southeast"): 170,
    ("eu-west", "sa-east"): 185, ("eu-central", "ap-northeast"): 230,
    ("eu-central", "ap-southeast"): 160, ("eu-central", "sa-east"): 200,
    ("ap-northeast", "ap-southeast"): 70, ("ap-northeast", "sa-east"): 260,
    ("ap-southeast", "sa-east"): 320,
}
REGIONS: tuple[str, ...] = tuple(sorted({r for pair in _RTT for r in pair}))
INTRA_RTT_MS = 1.0
INTER_REGION_MBPS = 1_000.0


def region_rtt_ms(a: str, b: str) -> float:
    if a == b:
        return INTRA_RTT_MS
    key = (a, b) if (a, b) in _RTT else (b, a)
    if key not in _RTT:
        raise InvalidInput(f"unknown region pair {a!r}, {b!r}; known regions: {', '.join(REGIONS)}")
    return float(_RTT[key])


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(name="smollm2-135m", layers=30, hidden=576, heads=9, kv_heads=3,
                              intermediate=1536, vocab=49152, tied_embeddings=True, model_id=1),
    "llama3-8b": ModelSpec(name="llama3-8b", layers=32, hidden=4096, heads=32, kv_heads=8,
                           intermediate=14336, vocab=128256, model_id=2),
    "llama3-70b": ModelSpec(name="llama3-70b", layers=80, hidden=8192, heads=64, kv_heads=8,
                            intermediate=28672, vocab=128256, model_id=3),
}


def parse_mix(text: str) -> dict[str, float]:
    """A preset name (`mixed`, `datacenter`, `consumer`, `apple`) or `GPU:weight,GPU:weight`."""
    if text in MIXES:
        return dict(MIXES[text])
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, w = part.strip().partition(":")
        if name not in GPUS:
            raise InvalidInput(f"unknown GPU {name!r} in --mix; known: {', '.join(GPUS)} "
                               f"or presets {', '.join(MIXES)}")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise InvalidInput(f"bad weight {w!r} for {name} in --mix") from None
        if not math.isfinite(weight) or weight < 0:
            raise InvalidInput(f"weight {w!r} for {name} in --mix must be a finite number >= 0")
        mix[name] = weight
    if not mix or sum(mix.values()) <= 0:
        raise InvalidInput(f"--mix {text!r} has no positive weights")
    return mix
