"""Fixtures for the wallet and operator/client CLI tests: a keystore home, password files, the
`veriplex` CLI run in-process through click's CliRunner, and a real anvil node with the Veriplex
contracts deployed by `contracts.deploy.deploy_all` (never a mocked chain)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account

from devnet.process import running_anvil
from protocol.settings import DEV_MNEMONIC
from tests.support.wallet import (
    PASSWORD,
    SLASHER_DEV_INDEX,
    Veriplex,
    write_secret,
)


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    return write_secret(tmp_path / "password.txt", PASSWORD)


@pytest.fixture
def vpx(tmp_path: Path) -> Veriplex:
    return Veriplex(home=tmp_path / "home")


@pytest.fixture(scope="session")
def anvil_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_anvil(tmp_path_factory.mktemp("anvil")) as anvil:
        yield anvil.url


@pytest.fixture(scope="session")
def deployment(anvil_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Veriplex contracts deployed once per session from dev account 0, with dev account
    `SLASHER_DEV_INDEX` as the verification role; the manifest path."""
    from contracts.client import dev_key
    from contracts.deploy import DeployParams, deploy_all

    manifest = tmp_path_factory.mktemp("deployment") / "manifest.json"
    slasher = Account.from_key(dev_key(SLASHER_DEV_INDEX, DEV_MNEMONIC)).address
    deploy_all(anvil_url, dev_key(0, DEV_MNEMONIC), manifest, DeployParams(slasher=slasher))
    return manifest


@pytest.fixture
def chain_vpx(tmp_path: Path, anvil_url: str, deployment: Path) -> Veriplex:
    """`veriplex` with its own fresh keystore home, pointed at anvil and the deployment."""
    return Veriplex(home=tmp_path / "home", rpc_url=anvil_url, manifest=deployment)
