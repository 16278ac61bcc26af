"""`veriplex calibrate` on a tiny checkpoint: writes a profile whose hash it prints, never tighter
than the shipped one of that precision."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from node.cli.calibrate import calibrate
from node.verification.calib_lab import tiny_model
from verifier.evidence import Profile
from verifier.profiles import SHIPPED


def test_calibrate_writes_a_profile_named_by_the_printed_hash(tmp_path):
    torch.set_num_threads(1)
    ckpt = tmp_path / "tiny"
    tiny_model("mistral", 3, layers=3, hidden=64, heads=2, kv_heads=1, mlp=128).save_pretrained(ckpt)
    out = tmp_path / "profile.json"
    res = CliRunner().invoke(calibrate, ["--model", str(ckpt), "--precision", "bf16", "--requests", "4",
                                         "--out", str(out)])
    assert res.exit_code == 0, res.output
    prof = Profile.from_json(json.loads(out.read_text()))
    assert f"profile hash: 0x{prof.hash.hex()}" in res.output
    base = SHIPPED["bf16"]
    assert prof.precision == "bf16" and prof.logit_tol >= base.logit_tol
    assert prof.proof.chunk_max_ulp >= base.proof.chunk_max_ulp


def test_calibrate_refuses_a_directory_without_a_model(tmp_path):
    res = CliRunner().invoke(calibrate, ["--model", str(tmp_path), "--out", str(tmp_path / "p.json")])
    assert res.exit_code != 0 and "--model" in res.output
