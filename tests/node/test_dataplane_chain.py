"""The chain-backed operator directory on a real anvil with the Veriplex contracts deployed: stages
accept a pipeline whose operators are registered and staked in the NodeRegistry, and refuse one that
names an operator the registry does not know.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from coincurve import PrivateKey

from contracts.client import Chain, dev_key
from contracts.node_registry import Hardware
from contracts.rpc import Signer
from node.dataplane.directory import ChainDirectory
from protocol.dataplane_errors import RemoteError
from protocol.frames import ErrorCode
from protocol.identity import address_of_key
from protocol.settings import DEV_MNEMONIC

pytestmark = pytest.mark.anvil
ANVIL = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "anvil"
PROMPT = list(range(5, 25))


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    from contracts.deploy import DeployParams, deploy_all

    binary = str(ANVIL) if ANVIL.exists() else shutil.which("anvil")
    if binary is None:
        pytest.fail(f"anvil not found at {ANVIL}: run `npm install` (make setup)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--silent", "--hardfork", "cancun",
                             "--mnemonic", DEV_MNEMONIC], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        manifest = tmp_path_factory.mktemp("deployment") / "manifest.json"
        deploy_all(url, dev_key(0, DEV_MNEMONIC), manifest, DeployParams())
        yield Chain.connect(url, manifest)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def register(chain: Chain, owner_index: int, operator: PrivateKey) -> None:
    owner = Signer.from_key(dev_key(owner_index, DEV_MNEMONIC))
    hw = Hardware("cpu", 1024, 1000, 10, 1000, "test")
    chain.node_registry.register(address_of_key(operator), f"http://127.0.0.1:{9000 + owner_index}",
                                 hw, 2 * 10**18, sender=owner)


def test_stages_accept_registered_operators_and_refuse_unknown_ones(chain, in_process_pipeline):
    async def main():
        p = in_process_pipeline([(0, 4), (4, 8)], chain_id=chain.chain_id)
        for i, key in enumerate(p.keys):
            register(chain, 3 + i, key)
        directory = ChainDirectory(chain, ttl_s=0)
        assert directory.operator_ok(address_of_key(p.keys[0]))
        assert not directory.operator_ok(address_of_key(PrivateKey(b"\x42" * 32)))
        p.directory = directory
        await p.start()
        try:
            gen = await p.client().generate(p.request(len(PROMPT), 4), PROMPT, step_timeout_s=20)
            # The same pipeline with stage 1's key swapped for one never registered is refused.
            stranger = PrivateKey(b"\x43" * 32)
            p.keys[1] = stranger
            p.servers[1].key, p.servers[1].address = stranger, address_of_key(stranger)
            with pytest.raises(RemoteError) as e:
                await p.client().generate(p.request(len(PROMPT), 4), PROMPT, step_timeout_s=20)
            return gen, e.value
        finally:
            await p.stop()

    gen, err = asyncio.run(main())
    assert len(gen.tokens) == 4
    assert err.code == ErrorCode.BAD_SIGNATURE and "not an active registered operator" in str(err)
