"""Fixtures for the contracts tests: a real anvil node, a deployment on it, and boa contracts."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.client import Chain, dev_key
from contracts.deploy import DeployParams, deploy_all
from contracts.rpc import Signer
from veriplex.config import DEV_MNEMONIC

REPO = Path(__file__).resolve().parents[2]
ANVIL = REPO / "node_modules" / ".bin" / "anvil"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"anvil exited with {proc.returncode}")
        try:
            r = httpx.post(
                url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}, timeout=1.0
            )
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"anvil did not answer at {url} within {timeout}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="session")
def anvil_url() -> Iterator[str]:
    binary = str(ANVIL) if ANVIL.exists() else shutil.which("anvil")
    if binary is None:
        pytest.fail(f"anvil not found at {ANVIL}: run `npm install` (make setup)")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--silent", "--hardfork", "cancun"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        yield url
    finally:
        _stop(proc)


def dev_signer(index: int) -> Signer:
    return Signer.from_key(dev_key(index, DEV_MNEMONIC))


@pytest.fixture(scope="session")
def deployer() -> Signer:
    return dev_signer(0)


@pytest.fixture(scope="session")
def devnet_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded devnet, once `devnet.testing.running_devnet` exists (built in parallel)."""
    if importlib.util.find_spec("devnet.testing") is None:
        pytest.skip("devnet.testing.running_devnet does not exist yet")
    from devnet.testing import running_devnet

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


def mine(chain: Chain, blocks: int) -> None:
    """Advance a dev node by `blocks` empty blocks (evm_mine: anvil and the devnet)."""
    for _ in range(blocks):
        chain.w3.provider.make_request("evm_mine", [])


def fresh(chain: Chain, eth: int = 10) -> Signer:
    """A new account funded by the deployer (works on any node, whatever its dev accounts)."""
    from eth_account import Account

    signer = Signer(Account.create())
    chain.transfer(signer.address, eth * 10**18)
    return signer
