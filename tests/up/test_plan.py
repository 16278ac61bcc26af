"""`veriplex up` sizes its workers' simulated device memory with the scheduler's own memory model:
pipeline workers make an S-stage replica (never one stage), verifier-only workers stay standby."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.allocate import allocate
from scheduler.model import NodeSpec, Snapshot
from veriplex.up import UpError, UpOptions
from veriplex.up_plan import PlanError, model_spec, pipeline_vram_mib, verifier_vram_mib


def plan(spec, vrams: list[int]):  # type: ignore[no-untyped-def]
    nodes = [NodeSpec(id=f"0x{i:040x}", region="local", vram_mib=v, tflops=0.2, mem_bw_gbps=50,
                      net_mbps=10_000) for i, v in enumerate(vrams)]
    return allocate(Snapshot(model=spec, nodes=tuple(nodes)))


@pytest.mark.parametrize("stages", [2, 3])
def test_pipeline_workers_form_one_replica_of_the_asked_stages_and_verifiers_stay_standby(
        chat_tiny: Path, stages: int) -> None:
    spec = model_spec(chat_tiny)
    p = plan(spec, [pipeline_vram_mib(spec, stages)] * stages + [verifier_vram_mib(spec)] * 2)
    assert len(p.replicas) == 1
    stages_ = p.replicas[0].stages
    assert len(stages_) == stages
    assert stages_[0].start == 0 and stages_[-1].end == spec.layers
    assert len(p.standby) == 2


def test_a_pipeline_worker_never_holds_the_whole_model(chat_tiny: Path) -> None:
    spec = model_spec(chat_tiny)
    p = plan(spec, [pipeline_vram_mib(spec, 2)] * 4)
    assert p.replicas and all(len(r.stages) >= 2 for r in p.replicas)


def test_more_stages_than_layers_is_refused_with_the_numbers(chat_tiny: Path) -> None:
    spec = model_spec(chat_tiny)
    with pytest.raises(PlanError, match=f"cannot split {spec.layers} layers into 99 stages"):
        pipeline_vram_mib(spec, 99)


def test_roles_leave_enough_pipeline_workers_or_say_why(tmp_path: Path) -> None:
    opts = UpOptions(data_dir=tmp_path, models_dir=tmp_path, workers=4, stages=2, perturbed=1)
    assert opts.roles() == (2, 2)
    assert UpOptions(data_dir=tmp_path, models_dir=tmp_path, workers=3).roles() == (2, 1)
    with pytest.raises(UpError, match="cannot fill a 2-stage pipeline"):
        UpOptions(data_dir=tmp_path, models_dir=tmp_path, workers=3, verifiers=2).roles()
    with pytest.raises(UpError, match="only 2 pipeline workers"):
        UpOptions(data_dir=tmp_path, models_dir=tmp_path, workers=4, perturbed=3).roles()
