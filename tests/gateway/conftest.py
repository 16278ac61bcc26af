"""Fixtures for the gateway tests: a real anvil with the Veriplex contracts, a priced tiny model
on the ModelRegistry, a 2-stage data-plane pipeline (in-process stage servers on loopback TCP, run
by a background event loop), funded clients with registered API keys, and the gateway itself
served by uvicorn in a thread (or as a `veriplex gateway run` child process)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_utils import keccak

from contracts.apikeys import create_api_key
from contracts.client import Chain, dev_key
from contracts.model_registry import ModelInfo
from contracts.rpc import Signer
from devnet.process import running_anvil
from protocol.settings import DEV_MNEMONIC
from tests.support.gateway import (
    CHATML,
    ETH,
    GATEWAY_DEV_INDEX,
    Client,
    DataPlane,
    ServedGateway,
    free_port,
    make_gateway,
    register_operators,
    rpc,
)


@pytest.fixture(scope="session")
def anvil_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_anvil(tmp_path_factory.mktemp("anvil")) as anvil:
        yield anvil.url


@pytest.fixture(scope="session")
def deployment(anvil_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from contracts.deploy import DeployParams, deploy_all

    manifest = tmp_path_factory.mktemp("deployment") / "manifest.json"
    deploy_all(anvil_url, dev_key(0, DEV_MNEMONIC), manifest, DeployParams())
    return manifest


@pytest.fixture(scope="session")
def gateway_signer() -> Signer:
    return Signer.from_key(dev_key(GATEWAY_DEV_INDEX, DEV_MNEMONIC))


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with a ChatML chat template added (the tiny tokenizer has none)."""
    from node.runtime.models.tiny import build_tiny_model

    d = build_tiny_model(tmp_path_factory.mktemp("tiny-chat"), arch="llama", seed=0)
    (d / "chat_template.jinja").write_text(CHATML)
    return d


@pytest.fixture(scope="session")
def model_info(anvil_url: str, deployment: Path) -> ModelInfo:
    admin = Chain.connect(anvil_url, deployment, signer=Signer.from_key(dev_key(0, DEV_MNEMONIC)))
    mid = admin.model_registry.register_model(
        f"tiny-chat-{secrets.token_hex(3)}", 8, 256, keccak(b"tiny weights"), keccak(b"tiny tok"),
        10**9, 3 * 10**9)
    info = admin.model_registry.model(mid)
    assert info is not None
    return info


@pytest.fixture(scope="session")
def dataplane(chat_model: Path, gateway_signer: Signer, anvil_url: str, deployment: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    dp = DataPlane(chat_model, tmp_path_factory.mktemp("stores"), [gateway_signer.address]).start()
    register_operators(anvil_url, deployment, dp)
    yield dp
    dp.stop()


@pytest.fixture
def new_client(anvil_url: str, deployment: Path, gateway_signer: Signer):
    """`new_client(deposit_wei=..., cap_wei=..., expires_in_s=...)`: a fresh funded account that
    deposited and registered an API key naming the gateway."""

    def make(deposit_wei: int = ETH // 10, cap_wei: int = ETH // 20,
             expires_in_s: int = 86_400) -> Client:
        key = "0x" + secrets.token_hex(32)
        addr = Account.from_key(key).address
        rpc(anvil_url, "anvil_setBalance", addr, hex(10 * ETH))
        signer = Signer.from_key(key)
        chain = Chain.connect(anvil_url, deployment, signer=signer)
        chain.payments.deposit(deposit_wei)
        signed = create_api_key(key, gateway_signer.address, cap_wei,
                                int(time.time()) + expires_in_s, secrets.randbits(32),
                                chain.chain_id, chain.payments.address)
        chain.payments.register_key(signed)
        return Client(addr, key, signed, deposit_wei)

    return make


@pytest.fixture
def gateway(anvil_url: str, deployment: Path, gateway_signer: Signer, chat_model: Path,
            model_info: ModelInfo, dataplane: DataPlane, tmp_path: Path) -> Iterator[ServedGateway]:
    gw = make_gateway(anvil_url, deployment, gateway_signer, chat_model, model_info,
                      dataplane.stages(), f"sqlite:///{tmp_path / 'gateway.sqlite'}")
    served = ServedGateway(gw, free_port()).start()
    yield served
    served.stop()
