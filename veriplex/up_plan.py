"""What `veriplex up` gives each local worker to register: a simulated device-memory size.

All of `veriplex up`'s workers share one machine, so the memory each would detect (the machine's)
lets any of them hold the whole model and the scheduler would build one-stage pipelines. To show
real multi-stage pipelines, each *pipeline* worker registers a device memory sized so that it holds
about `1/stages` of the model's layers (plus the embedding or LM head) and never the whole model,
using the scheduler's own memory model (`scheduler.costs`: usable = VRAM × utilisation, minus the
KV reserve). A *verifier-only* worker registers a memory too small for any layer: the allocator
leaves it standby, so it is free to sit on verification committees. Everything else in the
hardware profile (device name, TFLOPS, memory bandwidth) is measured as an operator's would be.
"""

from __future__ import annotations

import math
from pathlib import Path

MIB = 1 << 20


class PlanError(ValueError):
    """The model cannot be split as asked (e.g. more stages than layers)."""


def model_spec(checkpoint: Path, name: str = "model"):  # type: ignore[no-untyped-def]
    """The scheduler's view of a checkpoint (the coordinator reads the same config.json)."""
    import json

    from scheduler.service.chain_io import spec_from_hf_config

    return spec_from_hf_config(json.loads((Path(checkpoint) / "config.json").read_text()), name)


def _budget(vram_mib: int, params) -> int:  # type: ignore[no-untyped-def]
    return int(vram_mib * MIB * params.memory_utilization) - params.kv_reserve_mib * MIB


def pipeline_vram_mib(spec, stages: int, params=None) -> int:  # type: ignore[no-untyped-def]
    """Least VRAM (MiB) whose weight budget holds ceil(layers / stages) layers plus the larger of
    the first/last stage extras (so `stages` such workers make one replica) — and, for
    `stages` ≥ 2, not the whole model."""
    from scheduler.model import Params

    params = params or Params()
    if not 1 <= stages <= spec.layers:
        raise PlanError(f"cannot split {spec.layers} layers into {stages} stages")
    extra = max(spec.extra_bytes(True, False), spec.extra_bytes(False, True))
    # Enough layers for an end stage with its embedding / LM head, and enough for the pool check
    # of the allocator (the stages' layer capacities together cover the model and its extras).
    k = max(math.ceil(spec.layers / stages) + math.ceil(extra / spec.layer_bytes),
            math.ceil((spec.layers + math.ceil(spec.extra_bytes(True, True) / spec.layer_bytes))
                      / stages))
    need = k * spec.layer_bytes
    vram = math.ceil((need + params.kv_reserve_mib * MIB) / params.memory_utilization / MIB)
    while _budget(vram, params) < need:
        vram += 1
    if stages >= 2 and _budget(vram, params) >= spec.total_bytes:
        raise PlanError(f"a {vram} MiB worker would hold the whole model; use fewer stages")
    return vram


def verifier_vram_mib(spec, params=None) -> int:  # type: ignore[no-untyped-def]
    """Largest VRAM (MiB) that holds no layer at any position: the allocator leaves it standby."""
    from scheduler.model import Params

    params = params or Params()
    least = min(spec.extra_bytes(True, False), spec.extra_bytes(False, True),
                spec.extra_bytes(False, False)) + spec.layer_bytes
    vram = max(1, math.floor((least + params.kv_reserve_mib * MIB) / params.memory_utilization / MIB))
    while vram > 1 and _budget(vram, params) >= least:
        vram -= 1
    return vram
