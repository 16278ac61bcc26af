"""`veriplex node serve` verifier flags: bad combinations and values are refused with a clear
message before anything is loaded or served."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from veriplex.cli import cli


def serve(tmp_path: Path, model: Path, *extra: str):
    key = tmp_path / "op.key"
    key.touch(mode=0o600)
    key.write_text("11" * 32)
    return CliRunner().invoke(cli, ["node", "serve", "--model", str(model), "--layers", "0:4",
                                    "--store-dir", str(tmp_path / "store"), "--operator-key-file",
                                    str(key), *extra],
                              env={"VERIPLEX_HOME": str(tmp_path / "home")})


def test_the_agent_needs_the_chain_directory(tmp_path, tiny_model):
    r = serve(tmp_path, tiny_model, "--directory", "static", "--allow", "0x" + "11" * 20, "--verify")
    assert r.exit_code != 0 and "the verifier agent needs the chain" in r.output


def test_an_unknown_policy_or_a_negative_perturbation_is_refused(tmp_path, tiny_model):
    r = serve(tmp_path, tiny_model, "--verifier-policy", "sloppy")
    assert r.exit_code == 2 and "'sloppy' is not one of" in r.output
    r = serve(tmp_path, tiny_model, "--perturb-weights", "-0.1")
    assert r.exit_code == 2 and "--perturb-weights" in r.output


def test_the_verifier_flags_are_documented_in_the_help(tmp_path, tiny_model):
    r = CliRunner().invoke(cli, ["node", "serve", "--help"])
    assert r.exit_code == 0
    for flag in ("--no-verify", "--verifier-policy", "--perturb-weights"):
        assert flag in r.output
