"""`veriplex verify-stage` on files: exit 0 on honest work, 1 on cheats, 2 on bad files or arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from node.verification.stage_check import save_stage_files
from veriplex.cli import cli


def _invoke(models, layers, inp, claimed, *extra):
    args = ["verify-stage", "--model", str(models["served"]), "--layers", layers,
            "--input", str(inp), "--claimed", str(claimed), *extra]
    return CliRunner().invoke(cli, args)


@pytest.fixture(scope="module")
def files(tmp_path_factory, bench, requests_):
    """Each stage's files for the first (cached decode) request: {stage: (input, claimed, tokens)}."""
    req = requests_[0]
    root = tmp_path_factory.mktemp("verify-stage-files")
    out = {}
    for task in bench.tasks(req, rounded=False):
        out[task.stage] = save_stage_files(root / f"stage{task.stage}", task.x, task.claimed,
                                           task.tokens, first=task.stage == 0)
    return out


def test_honest_first_stage_passes_with_exit_0_and_a_human_verdict(models, files):
    inp, claimed, _ = files[0]
    r = _invoke(models, "0:4", inp, claimed)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("verdict: PASS") and "exponent agreement" in r.output


def test_honest_last_stage_with_tokens_passes_and_prints_json_statistics(models, files):
    inp, claimed, tokens = files[1]
    r = _invoke(models, "4:8", inp, claimed, "--tokens", str(tokens), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["passed"] and doc["profile"] == "fp32" and doc["layers"] == [4, 8]
    assert doc["rows"]["stats"]["positions"] == doc["positions"] and doc["tokens"]["checked"] > 0


def test_bf16_profile_recomputes_in_bf16_and_passes_rows_of_a_bf16_worker(models, files, tmp_path):
    from safetensors.torch import load_file

    from node.runtime.executor import StageExecutor
    from node.runtime.shard import load_shard

    inp, _, _ = files[0]
    worker = StageExecutor(load_shard(models["served"], 0, 4, "cpu", torch.bfloat16))
    rows = worker.run(load_file(str(inp))["input_ids"], logits="none").hidden
    claimed = tmp_path / "bf16.safetensors"
    save_file({"hidden": rows.contiguous()}, str(claimed))
    r = _invoke(models, "0:4", inp, claimed, "--profile", "bf16", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["profile"] == "bf16"


def test_forged_rows_fail_with_exit_1_and_reasons(models, files, tmp_path):
    inp, claimed, _ = files[1]
    from safetensors.torch import load_file

    h = load_file(str(claimed))["hidden"].clone()
    h[3] += torch.from_numpy(np.random.default_rng(0).standard_normal(h.shape[1]).astype(np.float32))
    forged = tmp_path / "forged.safetensors"
    save_file({"hidden": h}, str(forged))
    r = _invoke(models, "4:8", inp, forged, "--json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.output)
    assert not doc["passed"] and doc["rows"]["reasons"]


def test_random_tokens_fail_with_exit_1(models, files, tmp_path):
    inp, claimed, tokens = files[1]
    doc = json.loads(tokens.read_text())
    doc["tokens"] = [(t * 7 + 5) % 500 for t in doc["tokens"]]
    bad = tmp_path / "tokens.json"
    bad.write_text(json.dumps(doc))
    r = _invoke(models, "4:8", inp, claimed, "--tokens", str(bad))
    assert r.exit_code == 1, r.output
    assert "tokens: FAIL" in r.output


@pytest.mark.parametrize(("case", "needle"), [
    ("layers_outside", "invalid for a model of 8 layers"),
    ("layers_malformed", "A:B"),
    ("missing_input", "does not exist"),
    ("garbage_input", "not a readable safetensors"),
    ("wrong_tensor_name", "no tensor 'hidden'"),
    ("wrong_width", "shape (T, 256)"),
    ("row_count_mismatch", "rows but the input has"),
    ("ids_on_a_middle_stage", "no tensor 'hidden'"),
    ("tokens_not_json", "not JSON"),
    ("tokens_on_first_stage", "last stage"),
    ("tokens_too_many", "need logits rows"),
    ("bad_sampling", "top_p"),
    ("not_a_model", "not a checkpoint"),
])
def test_bad_input_exits_2_with_a_one_line_message(models, files, tmp_path, case, needle):
    inp0, claimed0, _ = files[0]
    inp, claimed, tokens = files[1]
    layers, extra = "4:8", []
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not safetensors at all")
    model = None
    if case == "layers_outside":
        layers = "4:9"
    elif case == "layers_malformed":
        layers = "4-8"
    elif case == "missing_input":
        inp = tmp_path / "nope.safetensors"
    elif case == "garbage_input":
        inp = garbage
    elif case == "wrong_tensor_name":
        save_file({"rows": torch.zeros(3, 256)}, str(garbage))
        inp = garbage
    elif case == "wrong_width":
        save_file({"hidden": torch.zeros(3, 255)}, str(garbage))
        inp = garbage
    elif case == "row_count_mismatch":
        save_file({"hidden": torch.zeros(3, 256)}, str(garbage))
        claimed = garbage
    elif case == "ids_on_a_middle_stage":
        inp = inp0
    elif case == "tokens_not_json":
        bad = tmp_path / "t.json"
        bad.write_text("{tokens: ")
        extra = ["--tokens", str(bad)]
    elif case == "tokens_on_first_stage":
        layers, inp, claimed, extra = "0:4", inp0, claimed0, ["--tokens", str(tokens)]
    elif case in ("tokens_too_many", "bad_sampling"):
        doc = json.loads(tokens.read_text())
        if case == "tokens_too_many":
            doc["tokens"] = doc["tokens"] * 20
        else:
            doc["sampling"]["top_p"] = 1.5
        bad = tmp_path / "t.json"
        bad.write_text(json.dumps(doc))
        extra = ["--tokens", str(bad)]
    elif case == "not_a_model":
        model = tmp_path
    args = ["verify-stage", "--model", str(model or models["served"]), "--layers", layers,
            "--input", str(inp), "--claimed", str(claimed), *extra]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
