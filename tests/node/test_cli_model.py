"""`veriplex model ...` end to end through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from node.cli.model import parse_stages
from node.runtime.models.hashing import model_hashes
from veriplex.cli import cli


def run(tmp_path: Path, *args: str):
    return CliRunner().invoke(cli, list(args), env={"VERIPLEX_HOME": str(tmp_path / "home")})


def test_model_hash_prints_the_registry_hashes(tiny_llama: Path, tmp_path: Path):
    r = run(tmp_path, "model", "hash", str(tiny_llama), "--json")
    assert r.exit_code == 0, r.output
    h = model_hashes(tiny_llama).as_hex()
    out = json.loads(r.output)
    assert out["weights_root"] == h["weights_root"] and out["tokenizer_hash"] == h["tokenizer_hash"]
    assert out["weights_root"].startswith("0x") and len(out["weights_root"]) == 66


def test_importing_a_hf_directory_copies_it_once_then_reuses_it(tiny_qwen2: Path, tmp_path: Path):
    r = run(tmp_path, "model", "import", str(tiny_qwen2))
    assert r.exit_code == 0, r.output
    out = tmp_path / "home" / "models" / tiny_qwen2.name
    assert f"path: {out}" in r.output
    assert f"weights_root: {model_hashes(tiny_qwen2).as_hex()['weights_root']}" in r.output
    assert model_hashes(out) == model_hashes(tiny_qwen2)
    again = run(tmp_path, "model", "import", str(tiny_qwen2))
    assert again.exit_code == 0 and "reusing" in again.output


def test_import_refuses_to_overwrite_a_foreign_directory(tiny_llama: Path, tmp_path: Path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    r = run(tmp_path, "model", "import", str(tiny_llama), "--out", str(foreign))
    assert r.exit_code == 1 and "is not a Veriplex import" in r.output
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_import_of_a_missing_source_is_a_one_line_error(tmp_path: Path):
    r = run(tmp_path, "model", "import", str(tmp_path / "nothing-here"))
    assert r.exit_code == 1
    assert "neither 'smollm2' nor an existing path" in r.output


def test_model_info_reports_the_layout_the_scheduler_plans_with(tiny_llama: Path, tmp_path: Path):
    r = run(tmp_path, "model", "info", str(tiny_llama))
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert (
        info["num_layers"] == 8
        and len(info["layer_bytes"]) == 8
        and info["tied_embeddings"] is True
    )


def test_generate_gives_the_same_text_on_one_or_three_stages(tiny_llama: Path, tmp_path: Path):
    one = run(tmp_path, "model", "generate", str(tiny_llama), "the stage", "--max-new-tokens", "8")
    three = run(
        tmp_path,
        "model",
        "generate",
        str(tiny_llama),
        "the stage",
        "--max-new-tokens",
        "8",
        "--stages",
        "0:3,3:5,5:8",
    )
    assert one.exit_code == 0 and three.exit_code == 0, one.output + three.output
    assert one.output == three.output and one.output.strip()


def test_stage_specs_split_evenly_or_must_tile_the_model():
    assert parse_stages("3", 30) == [(0, 10), (10, 20), (20, 30)]
    assert parse_stages("0:4,4:8", 8) == [(0, 4), (4, 8)]
    for bad in ("0:4,5:8", "1:8", "0:7", "x", "9"):
        with pytest.raises(click.BadParameter):
            parse_stages(bad, 8)


def test_another_source_replaces_an_import_only_with_force(
    tiny_llama: Path, tiny_qwen2: Path, tmp_path: Path
):
    out = tmp_path / "slot"
    assert run(tmp_path, "model", "import", str(tiny_llama), "--out", str(out)).exit_code == 0
    refused = run(tmp_path, "model", "import", str(tiny_qwen2), "--out", str(out))
    assert refused.exit_code == 1 and "use --force" in refused.output
    assert model_hashes(out) == model_hashes(tiny_llama)
    forced = run(tmp_path, "model", "import", str(tiny_qwen2), "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert model_hashes(out) == model_hashes(tiny_qwen2)
    assert not list(tmp_path.glob(".slot.partial-*")), "no temporary directory may be left behind"
