"""`veriplex node serve` verifier flags: bad combinations and values are refused with a clear
message before anything is loaded or served; the agent's state directory is per operator."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from coincurve import PrivateKey

from protocol.identity import address_of_key
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


def test_the_agents_state_directory_is_one_per_operator_under_a_shared_home_unless_configured(tmp_path):
    from node.build import agent_state_dir
    from node.verification.state import AgentState
    from protocol.settings import load_settings

    keys = [bytes([k]) * 32 for k in (1, 2)]
    shared = load_settings(home=tmp_path / "home")
    dirs = [agent_state_dir(shared, k) for k in keys]
    assert dirs[0] != dirs[1] and all(d.parent == tmp_path / "home" / "verifier" for d in dirs)
    assert dirs[0].name == address_of_key(PrivateKey(keys[0])).lower()
    states = [AgentState(d) for d in dirs]  # two nodes of one home, side by side
    assert all(s.votes() == [] for s in states)
    mine = tmp_path / "mine"
    configured = load_settings(home=tmp_path / "home", verification={"agent_state_dir": str(mine)})
    assert agent_state_dir(configured, keys[0]) == agent_state_dir(configured, keys[1]) == mine
