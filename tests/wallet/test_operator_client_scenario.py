"""The acceptance scenario of issue 3 with the installed `veriplex` command in child processes,
on a real anvil chain, using exactly the command forms the acceptance checks use: new wallets,
register and stake, status, unbond, mine past the period, withdraw; a client deposits and creates
an API key that a gateway can parse and verify."""

from __future__ import annotations

import json

import pytest

from contracts.apikeys import SignedApiKey
from contracts.manifest import Manifest
from tests.support.chain import ETH
from tests.support.wallet import rpc

pytestmark = pytest.mark.anvil


def run(vpx, *args: str) -> str:
    proc = vpx.process(*args)
    assert proc.returncode == 0, f"veriplex {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def test_operator_goes_from_new_wallet_to_staked_then_unbonds_and_withdraws(chain_vpx,
                                                                            password_file):
    vpx, pw = chain_vpx, str(password_file)
    run(vpx, "wallet", "new", "owner1", "--password-file", pw)
    run(vpx, "wallet", "new", "op1", "--password-file", pw)
    owner = vpx.json("wallet", "show", "owner1")["address"]  # in-process: not under test here
    operator = vpx.json("wallet", "show", "op1")["address"]
    assert vpx.fund("owner1", "5")["balance_wei"] == 5 * ETH

    run(vpx, "node", "register", "--owner", "owner1", "--operator", "op1",
        "--endpoint", "http://gpu1.example:9000", "--stake", "2.5", "--password-file", pw)
    status = json.loads(run(vpx, "node", "status", "owner1", "--json"))
    assert status["registered"] is True and status["operator"] == operator
    assert status["stake_wei"] == 5 * ETH // 2 and status["unbonding"] == 0
    assert status["active"] is True and status["hardware"]["tflops"] > 0  # detected, measured

    run(vpx, "node", "unbond", "owner1", "--password-file", pw)
    status = json.loads(run(vpx, "node", "status", "owner1", "--json"))
    assert status["stake_wei"] == 0 and status["unbonding"] == 5 * ETH // 2
    early = vpx.process("node", "withdraw", "owner1", "--password-file", pw)
    assert early.returncode == 1 and "still unbonding" in early.stderr
    assert early.stderr.count("\n") == 1 and "Traceback" not in early.stderr

    period = Manifest.load(vpx.manifest).params["unbonding_period_blocks"]
    rpc(vpx.rpc_url, "anvil_mine", hex(period))
    before = int(rpc(vpx.rpc_url, "eth_getBalance", owner, "latest"), 16)
    run(vpx, "node", "withdraw", "owner1", "--password-file", pw)
    after = int(rpc(vpx.rpc_url, "eth_getBalance", owner, "latest"), 16)
    gas_bound = ETH // 100  # one withdraw transaction costs far less than 0.01 ETH on anvil
    assert 5 * ETH // 2 - gas_bound < after - before <= 5 * ETH // 2
    status = vpx.json("node", "status", "owner1")
    assert status["unbonding"] == 0 and status["stake_wei"] == 0


def test_client_deposits_and_creates_an_api_key_the_gateway_can_verify(chain_vpx, password_file):
    vpx, pw = chain_vpx, str(password_file)
    run(vpx, "wallet", "new", "client1", "--password-file", pw)
    client = vpx.json("wallet", "show", "client1")["address"]
    vpx.fund("client1", "3")
    run(vpx, "client", "deposit", "1.25", "--account", "client1", "--password-file", pw)
    assert json.loads(run(vpx, "client", "balance", "client1", "--json"))["deposit_wei"] == \
        5 * ETH // 4

    token = run(vpx, "client", "key", "create", "--account", "client1", "--cap", "0.5",
                "--expires", "30d", "--password-file", pw).strip()
    signed = SignedApiKey.from_token(token)  # checks the client's EIP-712 signature
    assert signed.key.client == client and signed.key.cap_wei == ETH // 2
    keys = vpx.json("client", "key", "list", "client1")["keys"]
    assert [(k["nonce"], k["revoked"], k["cap_wei"]) for k in keys] == [(0, False, ETH // 2)]
    assert keys[0]["key_hash"] == "0x" + signed.key_hash.hex()
