"""`veriplex contracts build|deploy|check` end to end (deploy and check against anvil)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from veriplex.cli import cli


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("VERIPLEX_HOME", str(tmp_path / "home"))
    return CliRunner()


def test_build_lists_every_contract_with_its_hash(runner):
    res = runner.invoke(cli, ["contracts", "build", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    from contracts.deploy import DEPLOY_ORDER

    assert set(data) == set(DEPLOY_ORDER)
    assert all(len(v["hash"]) == 64 and v["bytecode_bytes"] > 0 for v in data.values())


@pytest.mark.anvil
def test_deploy_from_a_dev_account_writes_a_manifest_that_check_accepts(
    runner, anvil_url, tmp_path
):
    manifest = tmp_path / "m.json"
    base = ["--rpc-url", anvil_url, "--manifest", str(manifest)]
    res = runner.invoke(cli, [*base, "contracts", "deploy", "--dev-account", "3", "--json"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.output)
    assert printed == json.loads(manifest.read_text())
    from contracts.deploy import DEPLOY_ORDER

    assert printed["chain_id"] == 31337 and set(printed["contracts"]) == set(DEPLOY_ORDER)
    res = runner.invoke(cli, [*base, "contracts", "check"])
    assert res.exit_code == 0 and "live on chain 31337" in res.output


@pytest.mark.anvil
def test_deploy_from_a_keystore_with_a_password_file(runner, anvil_url, tmp_path):
    from eth_account import Account

    from contracts.client import dev_key
    from protocol.settings import DEV_MNEMONIC

    keystore = tmp_path / "deployer.json"
    keystore.write_text(
        json.dumps(Account.encrypt(dev_key(4, DEV_MNEMONIC), "pw", kdf="scrypt", iterations=2**10))
    )
    pw = tmp_path / "pw.txt"
    pw.write_text("pw\n")
    manifest = tmp_path / "m.json"
    base = [
        "--rpc-url",
        anvil_url,
        "--manifest",
        str(manifest),
        "contracts",
        "deploy",
        "--keystore",
        str(keystore),
    ]
    res = runner.invoke(cli, [*base, "--password-file", str(pw)])  # no timelock: refused
    assert res.exit_code == 2 and "needs --timelock-blocks N > 0" in res.output
    assert not manifest.exists()
    base += ["--timelock-blocks", "50"]
    res = runner.invoke(cli, [*base, "--password-file", str(pw)])
    assert res.exit_code == 0, res.output
    assert (
        json.loads(manifest.read_text())["deployer"]
        == Account.from_key(dev_key(4, DEV_MNEMONIC)).address
    )
    from contracts.client import Chain

    chain = Chain.connect(anvil_url, manifest)
    assert chain.verification.timelock() == 50  # owner changes wait, as asked
    pw.write_text("wrong")
    res = runner.invoke(cli, [*base, "--password-file", str(pw)])
    assert res.exit_code != 0 and "cannot unlock keystore" in res.output


def test_deploy_to_an_unreachable_node_fails_in_one_line(runner, tmp_path):
    res = runner.invoke(
        cli,
        [
            "--rpc-url",
            "http://127.0.0.1:9",
            "--manifest",
            str(tmp_path / "m.json"),
            "contracts",
            "deploy",
            "--dev-account",
            "0",
        ],
    )
    assert res.exit_code != 0
    assert "cannot reach the JSON-RPC node at http://127.0.0.1:9" in res.output
    assert "Traceback" not in res.output


def test_deploy_needs_exactly_one_key_source(runner, tmp_path):
    res = runner.invoke(cli, ["contracts", "deploy"])
    assert res.exit_code == 2 and "exactly one of" in res.output
