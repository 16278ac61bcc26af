"""Money through the CLI end to end on anvil: a client deposits and creates a key with the CLI, the
gateway (the coordinator's dev key, through the contracts client) settles a request served by a
CLI-registered node, the batch is released after the verification window, and the node's owner
collects with `veriplex rewards claim`."""

from __future__ import annotations

import secrets

import pytest
from eth_utils import keccak

from contracts.batch import Pipeline, Record, Stage
from contracts.client import Chain, dev_key
from contracts.manifest import Manifest
from contracts.rpc import Signer
from protocol.settings import DEV_MNEMONIC
from tests.support.chain import ETH
from tests.support.wallet import rpc

pytestmark = pytest.mark.anvil


def test_a_served_request_is_charged_to_the_key_and_claimed_by_the_operators_owner(
        chain_vpx, password_file, anvil_url, deployment):
    vpx, pw = chain_vpx, str(password_file)
    for name in ("own", "op", "cli"):
        vpx("wallet", "new", name, "--password-file", pw)
    vpx.fund("own", "5")
    vpx.fund("cli", "5")
    vpx("node", "register", "--owner", "own", "--operator", "op", "--endpoint", "http://n1:9000",
        "--stake", "2", "--password-file", pw, "--gpu", "NVIDIA A100-SXM4-80GB",
        "--vram-mib", "81920", "--tflops", "312", "--mem-bw-gbps", "2039")
    vpx("client", "deposit", "1", "--account", "cli", "--password-file", pw)
    key = vpx.json("client", "key", "create", "--account", "cli", "--cap", "0.5",
                   "--expires", "1d", "--password-file", pw)

    # The admin prices a model; the gateway (the coordinator: dev account 0) settles a request.
    admin = Signer.from_key(dev_key(0, DEV_MNEMONIC))
    chain = Chain.connect(anvil_url, deployment, signer=admin)
    assert key["gateway"] == admin.address
    model_id = chain.model_registry.register_model(
        f"tiny-{secrets.token_hex(4)}", 4, 256, keccak(b"weights"), keccak(b"tokenizer"),
        10**12, 3 * 10**12)
    charge = chain.model_registry.model(model_id).charge(120, 40)
    # only bonded gateways settle (issue 14); a second bond in the session is a top-up
    chain.payments.bond_gateway(int(chain.payments.params()["min_gateway_bond"]))
    operator = vpx.json("wallet", "show", "op")["address"]
    seq = secrets.randbits(64)  # request sequence numbers are per gateway, unique in the session
    settled = chain.payments.settle_batch(
        [bytes.fromhex(key["key_hash"][2:])],
        [Pipeline(model_id, (Stage(operator, 0, 4),))],
        [Record(seq, 0, 0, 120, 40, charge, keccak(b"commitment"))])
    assert settled.total_charge == charge

    assert vpx.json("client", "balance", "cli")["deposit_wei"] == ETH - charge
    listed = vpx.json("client", "key", "list", "cli")["keys"]
    assert [k["spent_wei"] for k in listed] == [charge]
    nothing_yet = vpx("rewards", "claim", "own", "--password-file", pw, ok=False)
    assert "nothing to claim" in nothing_yet.output  # escrowed until the window closes

    window = Manifest.load(deployment).params["verification_window_blocks"]
    rpc(anvil_url, "anvil_mine", hex(window + 1))
    chain.payments.release(settled.batch_id)
    earned = vpx.json("node", "status", "own")["earnings_wei"]
    assert 0 < earned < charge  # the protocol fee and verifier share come out of it
    claimed = vpx.json("rewards", "claim", "own", "--password-file", pw)
    assert claimed["claimed_wei"] == claimed["earnings_wei"] == earned
    assert vpx.json("node", "status", "own")["earnings_wei"] == 0

    back = vpx.json("client", "withdraw", "all", "--account", "cli", "--password-file", pw)
    assert back["withdrawn_wei"] == ETH - charge and back["deposit_wei"] == 0
