"""Fixtures for the audit tests: a real devnet (`veriplex devnet up` subprocess) with a deployment
whose Verification samples every request, a `World` of staked nodes, a client and a gateway,
settled batches whose receipts `veriplex audit` checks (tests/audit/game.py), and the tiny model
served by a real 2-stage data plane (in-process stage servers on loopback TCP) for --recompute
and for receipts of an actual gateway."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from eth_utils import keccak

from contracts.client import Chain, dev_key
from contracts.deploy import DeployParams, deploy_all
from contracts.node_registry import Hardware
from contracts.rpc import Signer
from devnet.process import DevnetHandle, running_devnet
from protocol.settings import DEV_MNEMONIC

from .game import ETH, PARAMS, WINDOW, Batch, Plane, World, fresh, make_world, play, settle


@pytest.fixture(scope="session")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetHandle]:
    with running_devnet(tmp_path_factory.mktemp("audit-devnet"), deploy=False) as handle:
        yield handle


@pytest.fixture(scope="session")
def world(devnet: DevnetHandle, tmp_path_factory: pytest.TempPathFactory) -> World:
    manifest = tmp_path_factory.mktemp("audit-deploy") / "manifest.json"
    deploy_all(devnet.url, dev_key(0, DEV_MNEMONIC), manifest,
               DeployParams(verification_window_blocks=WINDOW, unbonding_period_blocks=2 * WINDOW,
                            verification=PARAMS))
    chain = Chain.connect(devnet.url, manifest, signer=Signer.from_key(dev_key(0, DEV_MNEMONIC)))
    return make_world(chain, manifest)


@pytest.fixture(scope="session")
def honest_batch(world: World) -> Batch:
    """Three honest requests in one batch; the first one's task has PASSED."""
    batch = settle(world, 3, seed=1)
    play(world, batch, 0)
    return batch


@pytest.fixture(scope="session")
def forged_batch(world: World) -> Batch:
    """One request whose stages forged their rows: convicted, slashed, the client refunded."""
    batch = settle(world, 1, forged=True, seed=2)
    play(world, batch, 0)
    return batch


@pytest.fixture(scope="session")
def plane(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    from node.runtime.models.tiny import build_tiny_model
    from tests.support.gateway import CHATML, DataPlane

    chain = world.chain
    model = build_tiny_model(tmp_path_factory.mktemp("audit-tiny"), arch="llama", seed=0)
    (model / "chat_template.jinja").write_text(CHATML)
    service_gateway = fresh(chain)
    dp = DataPlane(model, tmp_path_factory.mktemp("audit-store"),
                   [world.gateway.address, service_gateway.address],
                   chain_id=chain.chain_id).start()
    try:
        hw = Hardware("cpu", 1024, 1000, 10, 1000, "local")
        for st, key in zip(dp.stages(), dp.keys, strict=True):
            owner = fresh(chain, 3)
            chain.node_registry.register(st.operator, f"tcp://{st.host}:{st.port}", hw, ETH,
                                         sender=owner)
            op = Signer.from_key(key.secret)
            chain.transfer(op.address, ETH)
            world.operators.append(op)  # so `play` can sign for it if drawn into a committee
        model_id = chain.model_registry.register_model(
            f"audit-tiny-{time.time_ns()}", 8, 256, keccak(b"audit tiny weights"),
            keccak(b"audit tiny tokenizer"), 10**9, 2 * 10**9)
        info = chain.model_registry.model(model_id)
        assert info is not None
        yield Plane(dp, model, info, service_gateway)
    finally:
        dp.stop()


@pytest.fixture
def run_audit(devnet: DevnetHandle, tmp_path: Path) -> Callable[..., Result]:
    """`veriplex audit` in-process: writes the receipt (dict or text) to a file and runs the CLI
    against the devnet with an empty VERIPLEX_HOME (so only --rpc-url and the receipt guide it)."""

    def run(receipt: Any, *args: str, rpc_url: str | None = None) -> Result:
        from veriplex.cli import cli

        path = tmp_path / "receipt.json"
        path.write_text(receipt if isinstance(receipt, str) else json.dumps(receipt))
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        return CliRunner().invoke(
            cli, ["audit", str(path), "--rpc-url", rpc_url or devnet.url, *args],
            env={"VERIPLEX_HOME": str(home)}, catch_exceptions=False)

    return run
