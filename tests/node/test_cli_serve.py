"""`veriplex node serve` argument checks: the operator key must come from exactly one safe place."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from veriplex.cli import cli


def serve(tmp_path: Path, model: Path, *extra: str):
    return CliRunner().invoke(cli, ["node", "serve", "--model", str(model), "--store-dir",
                                    str(tmp_path / "store"), *extra],
                              env={"VERIPLEX_HOME": str(tmp_path / "home")})


def test_serve_needs_exactly_one_operator_key_source(tmp_path, tiny_llama):
    r = serve(tmp_path, tiny_llama, "--layers", "0:4")
    assert r.exit_code != 0 and "exactly one of --operator (wallet) or --operator-key-file" in r.output


def test_serve_refuses_a_key_file_others_can_read(tmp_path, tiny_llama):
    key = tmp_path / "op.key"
    key.write_text("11" * 32)
    key.chmod(0o644)
    r = serve(tmp_path, tiny_llama, "--layers", "0:4", "--operator-key-file", str(key))
    assert r.exit_code != 0 and "readable by others (mode 644)" in r.output
    assert "11" * 32 not in r.output  # the key itself is never echoed


def test_serve_rejects_an_empty_layer_range(tmp_path, tiny_llama):
    r = serve(tmp_path, tiny_llama, "--layers", "4:4")
    assert r.exit_code != 0 and "layer range [4, 4) is empty" in r.output


def test_static_directory_needs_an_allow_list(tmp_path, tiny_llama):
    key = tmp_path / "op.key"
    key.touch(mode=0o600)
    key.write_text("11" * 32)
    r = serve(tmp_path, tiny_llama, "--layers", "0:4", "--operator-key-file", str(key),
              "--directory", "static")
    assert r.exit_code != 0 and "--directory static needs at least one --allow" in r.output
