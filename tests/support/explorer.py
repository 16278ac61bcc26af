"""Helpers of the explorer tests (moved out of their conftest: fixtures stay there)."""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_utils import keccak

from contracts.apikeys import ApiKey, SignedApiKey, sign_api_key
from contracts.batch import Pipeline, Record, Stage
from contracts.client import Chain, dev_key
from contracts.manifest import Manifest
from contracts.node_registry import Hardware
from contracts.rpc import Rpc, Signer
from contracts.scheduler import AllocationEntry
from devnet.explorer.decode import Decoder
from devnet.explorer.indexer import Indexer, IndexerStatus
from devnet.explorer.models import make_engine
from devnet.process import DevnetHandle
from protocol.settings import DEV_MNEMONIC
from tests.support.chain import ETH

LAYERS = 4


@dataclass(frozen=True)
class Activity:
    """What the fixture did on chain, for tests to look for in the explorer."""

    devnet: DevnetHandle
    manifest: Manifest
    owner: str
    operator: str
    client: str
    gateway: str
    model_id: int
    epoch: int
    request_id: str
    settle_tx: str
    charge: int
    tokens_in: int
    tokens_out: int
    commitment_root: str
    batch_id: int


def make_activity(dn: DevnetHandle) -> Activity:
    manifest = Manifest.load(dn.manifest_path)
    admin = Signer.from_key(dev_key(0, DEV_MNEMONIC))  # deployer: coordinator and gateway
    owner = Signer.from_key(dev_key(1, DEV_MNEMONIC))
    client = Signer.from_key(dev_key(2, DEV_MNEMONIC))
    operator = Account.create().address
    chain = Chain.connect(dn.url, manifest, signer=admin)
    chain.node_registry.register(operator, "http://gpu-1.example:9000",
                                 Hardware("NVIDIA A100-SXM4-80GB", 81920, 312_000, 2039, 25_000,
                                          "eu-west"), 2 * ETH, sender=owner)
    model_id = chain.model_registry.register_model(
        f"tiny-{secrets.token_hex(3)}", LAYERS, 256, keccak(b"weights"), keccak(b"tokenizer"),
        10**12, 3 * 10**12)
    epoch = chain.scheduler.publish_epoch([AllocationEntry(model_id, 0, LAYERS, operator)],
                                          keccak(b"solver snapshot"))
    chain.payments.bond_gateway(int(chain.payments.params()["min_gateway_bond"]))  # admin
    chain.payments.deposit(ETH, sender=client)
    expiry = int(chain.rpc.w3.eth.get_block("latest")["timestamp"]) + 86_400
    key = ApiKey(client.address, admin.address, ETH // 2, expiry, 0)
    sig = sign_api_key(key, bytes(client.account.key), chain.chain_id, chain.payments.address)
    key_hash = chain.payments.register_key(
        SignedApiKey(key, chain.chain_id, chain.payments.address, sig), sender=client)
    tokens_in, tokens_out = 120, 40
    charge = chain.model_registry.model(model_id).charge(tokens_in, tokens_out)
    root = keccak(b"commitment " + secrets.token_bytes(8))
    settled = chain.payments.settle_batch(
        [key_hash], [Pipeline(model_id, (Stage(operator, 0, LAYERS),))],
        [Record(secrets.randbits(64), 0, 0, tokens_in, tokens_out, charge, root)])
    chain.rpc.mine(int(manifest.params["verification_window_blocks"]) + 1)
    chain.payments.release(settled.batch_id)
    settle_tx = chain.payments.events("BatchSettled")[-1].tx_hash
    return Activity(dn, manifest, owner.address.lower(), operator.lower(), client.address.lower(),
                    admin.address.lower(), model_id, epoch, "0x" + settled.request_ids[0].hex(),
                    settle_tx.lower(), charge, tokens_in, tokens_out, "0x" + root.hex(),
                    settled.batch_id)


@dataclass
class Explorer:
    engine: Any
    status: IndexerStatus
    indexer: Indexer
    rpc: Rpc


def make_explorer(rpc_url: str, db_url: str,
                  manifest: Manifest | list[Manifest] | None) -> Explorer:
    rpc = Rpc(rpc_url, timeout_s=5.0)
    engine = make_engine(db_url)
    status = IndexerStatus(rpc_url=rpc_url)
    return Explorer(engine, status, Indexer(rpc, engine, Decoder.load(manifest), status), rpc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "explorer"
