"""Global options work before or after the subcommand, as with `cast`: `--rpc-url`, `--manifest`,
`--keystore-dir`, `--config` and `--json`; a subcommand's own option of the same name wins."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from veriplex.cli import cli


def _config(args: list[str]) -> dict:
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def test_rpc_url_manifest_and_keystore_dir_after_the_subcommand_equal_them_before(
        tmp_path: Path) -> None:
    opts = ["--rpc-url", "http://10.0.0.7:8545", "--manifest", str(tmp_path / "m.json"),
            "--keystore-dir", str(tmp_path / "ks")]
    before, after = _config(opts + ["config"]), _config(["config"] + opts)
    assert before == after
    assert after["chain"]["rpc_url"] == "http://10.0.0.7:8545"
    assert after["wallet"]["keystore_dir"] == str(tmp_path / "ks")


def test_an_option_after_the_subcommand_overrides_the_one_before() -> None:
    got = _config(["--rpc-url", "http://a:1", "config", "--rpc-url", "http://b:2"])
    assert got["chain"]["rpc_url"] == "http://b:2"


def test_global_json_reaches_a_nested_command_and_keystore_dir_follows_it(tmp_path: Path) -> None:
    ks = tmp_path / "ks"
    runner = CliRunner()
    a = runner.invoke(cli, ["--json", "wallet", "list", "--keystore-dir", str(ks)])
    b = runner.invoke(cli, ["wallet", "list", "--json", "--keystore-dir", str(ks)])
    assert a.exit_code == b.exit_code == 0, a.output + b.output
    assert json.loads(a.output) == json.loads(b.output)
    assert json.loads(a.output)["keystore_dir"] == str(ks)


def test_global_json_is_refused_by_a_command_without_json_output() -> None:
    out = CliRunner().invoke(cli, ["--json", "devnet", "up", "--help"])
    assert out.exit_code == 2 and "has no --json output" in out.output


def test_a_subcommands_own_rpc_url_is_left_to_it() -> None:
    from veriplex.cli import LazyGroup

    explorer = LazyGroup.get_command(cli, None, "explorer")  # type: ignore[arg-type]
    assert explorer is not None
    rpc = [p for p in explorer.params if "--rpc-url" in p.opts]
    assert len(rpc) == 1 and not getattr(rpc[0], "hidden", False)
