"""The one typed config: defaults, TOML file, environment and CLI overrides, in that order."""

import pytest
from click.testing import CliRunner

from protocol.settings import ConfigError, load_settings
from veriplex.cli import cli


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VERIPLEX_HOME", str(tmp_path / "home"))
    for var in ("VERIPLEX_CONFIG", "VERIPLEX_CHAIN__RPC_URL", "VERIPLEX_DEVNET__PORT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


def test_defaults_resolve_paths_under_home(isolated_home):
    s = load_settings()
    assert s.home == isolated_home
    assert s.devnet_db == isolated_home / "devnet.sqlite"
    assert s.keystore_dir == isolated_home / "keystores"
    assert s.manifest_path(31337) == isolated_home / "deployments" / "31337.json"
    assert s.chain.rpc_url == "http://127.0.0.1:8545"


def test_toml_file_overrides_defaults_and_env_overrides_toml(tmp_path, monkeypatch):
    cfg = tmp_path / "veriplex.toml"
    cfg.write_text('[chain]\nrpc_url = "http://10.0.0.1:8545"\n[devnet]\nport = 9000\n')
    s = load_settings(cfg)
    assert s.chain.rpc_url == "http://10.0.0.1:8545"
    assert s.devnet.port == 9000
    monkeypatch.setenv("VERIPLEX_DEVNET__PORT", "9100")
    s = load_settings(cfg)
    assert s.devnet.port == 9100
    assert s.chain.rpc_url == "http://10.0.0.1:8545"


def test_explicit_overrides_win_and_keep_other_fields_of_the_section(tmp_path):
    cfg = tmp_path / "veriplex.toml"
    cfg.write_text("[chain]\ntimeout_s = 3.5\n")
    s = load_settings(cfg, chain={"rpc_url": "http://127.0.0.1:9999"})
    assert s.chain.rpc_url == "http://127.0.0.1:9999"
    assert s.chain.timeout_s == 3.5


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_invalid_value_names_the_field(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[devnet]\nport = 70000\n")
    with pytest.raises(ValueError, match="port"):
        load_settings(cfg)


def test_cli_reports_bad_config_as_a_usage_error_without_a_traceback(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[devnet]\nport = -1\n")
    result = CliRunner().invoke(cli, ["--config", str(cfg), "config"])
    assert result.exit_code == 2
    assert "invalid configuration" in result.output and "port" in result.output
    assert "Traceback" not in result.output


def test_cli_flags_override_everything_and_show_in_effective_config(tmp_path):
    result = CliRunner().invoke(cli, ["--rpc-url", "http://127.0.0.1:1234", "config"])
    assert result.exit_code == 0, result.output
    assert '"rpc_url": "http://127.0.0.1:1234"' in result.output


def test_cli_lists_every_package_group():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "devnet" in result.output and "contracts" in result.output
