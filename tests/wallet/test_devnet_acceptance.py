"""The acceptance checks of issue 3 on the project's own chain: a real `veriplex devnet up` process
(its contracts deployed at start, its manifest found by default under VERIPLEX_HOME), driven by the
installed `veriplex` command in child processes with exactly the command forms the acceptance
checks use, blocks mined with `evm_mine`. The other wallet tests run the same commands on anvil;
this module proves the two-command story works without it. Bad input is checked to fail in one
line with a non-zero exit and to leave the chain exactly as it was (same head block)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
from eth_utils import keccak

from contracts.apikeys import SignedApiKey
from contracts.batch import Pipeline, Record, Stage
from contracts.client import Chain, dev_key
from contracts.manifest import Manifest
from contracts.rpc import Signer
from devnet.process import DevnetHandle, running_devnet
from protocol.settings import DEV_MNEMONIC
from tests.support.chain import ETH
from tests.support.wallet import Veriplex, rpc, write_secret


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetHandle]:
    with running_devnet(tmp_path_factory.mktemp("devnet-home")) as handle:
        yield handle


@pytest.fixture
def home_vpx(devnet: DevnetHandle) -> Veriplex:
    """`veriplex --rpc-url URL` with the devnet's own VERIPLEX_HOME: no --manifest given."""
    return Veriplex(home=devnet.manifest_path.parents[1], rpc_url=devnet.url)


def run(vpx: Veriplex, *args: str) -> str:
    proc = vpx.process(*args)
    assert proc.returncode == 0, f"veriplex {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def status(vpx: Veriplex, name: str) -> dict:
    return json.loads(run(vpx, "node", "status", name, "--json"))


def mine(url: str, blocks: int) -> None:
    for _ in range(blocks):
        rpc(url, "evm_mine")


def head(url: str) -> int:
    return int(rpc(url, "eth_blockNumber"), 16)


@pytest.mark.slow  # ~20 child processes of the installed command, ~30 s on 2 cores
def test_on_a_running_devnet_the_cli_alone_stakes_unbonds_withdraws_deposits_keys_and_claims(
        devnet, home_vpx, tmp_path):
    vpx, pw = home_vpx, str(write_secret(tmp_path / "pw", "devnet acceptance"))
    params = Manifest.load(devnet.manifest_path).params
    for name in ("owner1", "op1", "client1"):
        run(vpx, "wallet", "new", name, "--password-file", pw)
    owner = vpx.json("wallet", "show", "owner1")["address"]
    operator = vpx.json("wallet", "show", "op1")["address"]
    run(vpx, "devnet", "fund", "owner1", "10")
    run(vpx, "devnet", "fund", "client1", "3")

    # Operator: new wallet -> registered and staked -> unbond -> withdraw after the period.
    run(vpx, "node", "register", "--owner", "owner1", "--operator", "op1",
        "--endpoint", "http://127.0.0.1:9001", "--stake", "2.5", "--password-file", pw)
    st = status(vpx, "owner1")
    assert st["registered"] is True and st["operator"] == operator
    assert st["stake_wei"] == 5 * ETH // 2 and st["unbonding"] == 0 and st["active"] is True
    assert st["hardware"]["tflops"] > 0  # detected and measured, no flags given

    # Client: deposit, balance, an API key (the bearer token verifies against the client).
    run(vpx, "client", "deposit", "1.5", "--account", "client1", "--password-file", pw)
    balance = json.loads(run(vpx, "client", "balance", "client1", "--json"))
    assert balance["deposit_wei"] == 3 * ETH // 2
    token = run(vpx, "client", "key", "create", "--account", "client1", "--cap", "0.5",
                "--expires", "30d", "--password-file", pw).strip()
    signed = SignedApiKey.from_token(token)
    assert signed.key.client == balance["address"] and signed.key.cap_wei == ETH // 2
    assert signed.chain_id == devnet.chain_id

    # The gateway (the coordinator, dev account 0) settles one request served by the node; after
    # the verification window the owner claims its share with `rewards claim`.
    admin = Signer.from_key(dev_key(0, DEV_MNEMONIC))
    chain = Chain.connect(devnet.url, devnet.manifest_path, signer=admin)
    model_id = chain.model_registry.register_model(
        f"tiny-{secrets.token_hex(4)}", 4, 256, keccak(b"weights"), keccak(b"tokenizer"),
        10**12, 3 * 10**12)
    charge = chain.model_registry.model(model_id).charge(100, 20)
    # only bonded gateways settle (issue 14); a second bond in the session is a top-up
    chain.payments.bond_gateway(int(chain.payments.params()["min_gateway_bond"]))
    settled = chain.payments.settle_batch(
        [signed.key_hash], [Pipeline(model_id, (Stage(operator, 0, 4),))],
        [Record(secrets.randbits(64), 0, 0, 100, 20, charge, keccak(b"commitment"))])
    mine(devnet.url, params["verification_window_blocks"] + 1)
    chain.payments.release(settled.batch_id)
    earned = status(vpx, "owner1")["earnings_wei"]
    assert 0 < earned < charge
    claimed = json.loads(run(vpx, "rewards", "claim", "owner1", "--password-file", pw, "--json"))
    assert claimed["claimed_wei"] == earned and status(vpx, "owner1")["earnings_wei"] == 0

    run(vpx, "node", "unbond", "owner1", "--password-file", pw)
    st = status(vpx, "owner1")
    assert st["stake_wei"] == 0 and st["unbonding"] == 5 * ETH // 2
    early = vpx.process("node", "withdraw", "owner1", "--password-file", pw)
    assert early.returncode == 1 and early.stderr.startswith("Error: still unbonding")
    assert early.stderr.count("\n") == 1
    mine(devnet.url, st["blocks_until_withdrawable"])
    before = chain.balance(owner)
    run(vpx, "node", "withdraw", "owner1", "--password-file", pw)
    gas_bound = ETH // 100  # one withdraw transaction costs far less than 0.01 ETH here
    assert 5 * ETH // 2 - gas_bound < chain.balance(owner) - before <= 5 * ETH // 2
    st = status(vpx, "owner1")
    assert st["unbonding"] == 0 and st["stake_wei"] == 0


def test_bad_input_on_the_devnet_fails_in_one_line_and_mines_nothing(devnet, home_vpx, tmp_path):
    vpx = home_vpx
    pw = str(write_secret(tmp_path / "pw", "right password"))
    wrong = str(write_secret(tmp_path / "wrong", "wrong password"))
    for name in ("bad_owner", "bad_op", "bad_client"):
        vpx("wallet", "new", name, "--password-file", pw)
    vpx("devnet", "fund", "bad_owner", "5")
    vpx("devnet", "fund", "bad_client", "5")
    vpx("client", "deposit", "1", "--account", "bad_client", "--password-file", pw)
    vpx("client", "key", "create", "--account", "bad_client", "--cap", "1", "--expires", "1d",
        "--password-file", pw)
    register = ["node", "register", "--owner", "bad_owner", "--operator", "bad_op",
                "--endpoint", "http://127.0.0.1:9002"]
    key = ["client", "key", "create", "--account", "bad_client"]
    cases: list[tuple[list[str], str]] = [
        ([*register, "--stake", "0", "--password-file", pw], "stake (0) must be greater than zero"),
        ([*register, "--stake", "-1", "--password-file", pw],
         "stake (-1) must be greater than zero"),
        ([*register, "--stake", "2", "--password-file", wrong], "wrong password"),
        (["node", "register", "--owner", "nobody", "--operator", "bad_op", "--endpoint",
          "http://127.0.0.1:9002", "--stake", "2", "--password-file", pw],
         "no account named 'nobody'"),
        ([*register, "--stake", "0.5", "--password-file", pw], "registry: stake below minimum"),
        (["client", "deposit", "0", "--account", "bad_client", "--password-file", pw],
         "amount (0) must be greater than zero"),
        (["client", "deposit", "-2", "--account", "bad_client", "--password-file", pw],
         "amount (-2) must be greater than zero"),
        (["client", "deposit", "1", "--account", "nobody", "--password-file", pw],
         "no account named 'nobody'"),
        (["client", "deposit", "1", "--account", "bad_client", "--password-file", wrong],
         "wrong password"),
        (["client", "withdraw", "2", "--account", "bad_client", "--password-file", pw],
         "exceeds the deposit"),
        ([*key, "--cap", "0", "--expires", "1d", "--password-file", pw],
         "cap (0) must be greater than zero"),
        ([*key, "--cap", "1", "--expires", "0s", "--password-file", pw],
         "duration (0s) must be greater than zero"),
        ([*key, "--cap", "1", "--expires", "1d", "--nonce", "0", "--password-file", pw],
         "nonce 0 of"),  # a replayed nonce
        (["node", "unbond", "bad_owner", "--password-file", pw], "has no registered node"),
        (["devnet", "fund", "bad_owner", "0"], "amount (0) must be greater than zero"),
        (["devnet", "fund", "nobody", "1"], "no account named 'nobody'"),
        (["client", "balance", "nobody"], "no account named 'nobody'"),
    ]
    at = head(devnet.url)
    for args, message in cases:
        result = vpx(*args, ok=False)
        lines = [ln for ln in result.output.splitlines() if not ln.startswith("warning:")]
        assert result.exit_code in (1, 2) and len(lines) == 1, (args, result.output)
        assert lines[0].startswith("Error: ") and message in lines[0], (args, lines[0])
    assert head(devnet.url) == at  # nothing was mined: no transaction left the CLI
    assert vpx.json("node", "status", "bad_owner")["registered"] is False
    assert vpx.json("client", "balance", "bad_client")["deposit_wei"] == ETH
    assert [k["nonce"] for k in vpx.json("client", "key", "list", "bad_client")["keys"]] == [0]

