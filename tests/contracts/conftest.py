"""Fixtures for the contracts tests: a real anvil node, a deployment on it, and boa contracts."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.client import Chain, dev_key
from contracts.deploy import DeployParams, deploy_all
from contracts.rpc import Signer
from devnet.process import running_anvil
from protocol.settings import DEV_MNEMONIC
from tests.support.chain import mine  # noqa: F401  (re-exported to this package's tests)
from tests.support.contracts import dev_signer


@pytest.fixture(scope="session")
def anvil_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_anvil(tmp_path_factory.mktemp("anvil")) as anvil:
        yield anvil.url


@pytest.fixture(scope="session")
def deployer() -> Signer:
    return dev_signer(0)


@pytest.fixture(scope="session")
def devnet_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded devnet, once `devnet.process.running_devnet` exists (built in parallel)."""
    if importlib.util.find_spec("devnet.process") is None:
        pytest.skip("devnet.process.running_devnet does not exist yet")
    from devnet.process import running_devnet

    with running_devnet(tmp_path_factory.mktemp("devnet"), deploy=False) as handle:
        yield handle.url


@pytest.fixture(scope="session", params=[pytest.param("anvil", marks=pytest.mark.anvil), "devnet"])
def node_url(request: pytest.FixtureRequest) -> str:
    """Every client test runs against both nodes: the client must not care which."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture(scope="session")
def deployed(
    node_url: str, deployer: Signer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """One deployment per node and session; the slasher role is dev account 9."""
    manifest = tmp_path_factory.mktemp("deploy") / "manifest.json"
    params = DeployParams(slasher=dev_signer(9).address)
    deploy_all(
        rpc_url=node_url,
        private_key=dev_key(0, DEV_MNEMONIC),
        manifest_path=manifest,
        params=params,
    )
    return node_url, manifest


@pytest.fixture
def chain(deployed: tuple[str, Path], deployer: Signer) -> Chain:
    url, manifest = deployed
    return Chain.connect(url, manifest, signer=deployer)
