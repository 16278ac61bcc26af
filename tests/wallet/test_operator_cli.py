"""`veriplex node ...`, `rewards claim` and `devnet fund` against a real anvil chain: every bad
input fails in one line with a non-zero exit and leaves the chain as it was."""

from __future__ import annotations

import pytest

from contracts.client import Chain, dev_key
from contracts.rpc import Signer
from protocol.settings import DEV_MNEMONIC
from tests.support.chain import ETH
from tests.support.wallet import SLASHER_DEV_INDEX, write_secret

pytestmark = pytest.mark.anvil
HW_FLAGS = ["--gpu", "NVIDIA RTX 4090", "--vram-mib", "24564", "--tflops", "165.2",
            "--mem-bw-gbps", "1008", "--net-bw-mbps", "1000", "--region", "eu-central"]


@pytest.fixture
def owner(chain_vpx, password_file):
    """A funded owner account 'own' and an operator account 'op' in a fresh keystore."""
    chain_vpx("wallet", "new", "own", "--password-file", str(password_file))
    chain_vpx("wallet", "new", "op", "--password-file", str(password_file))
    chain_vpx.fund("own", "10")
    return "own"


def register(vpx, pw, stake="2", *extra, ok=True):
    return vpx("node", "register", "--owner", "own", "--operator", "op",
               "--endpoint", "http://10.0.0.7:9000", "--stake", stake,
               "--password-file", str(pw), *HW_FLAGS, *extra, ok=ok)


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if not line.startswith("warning:")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_zero_or_negative_stake_is_refused_before_anything_is_sent(chain_vpx, owner,
                                                                  password_file):
    for stake in ("0", "-1", "abc"):
        result = register(chain_vpx, password_file, stake, ok=False)
        assert result.exit_code != 0 and "stake" in result.output
    assert chain_vpx.json("node", "status", "own")["registered"] is False


def test_stake_below_the_minimum_shows_the_decoded_revert_reason(chain_vpx, owner, password_file):
    line = one_line_error(register(chain_vpx, password_file, "0.5", ok=False))
    assert line == "Error: transaction reverted: registry: stake below minimum"
    assert chain_vpx.json("node", "status", "own")["registered"] is False


def test_registering_twice_reverts_with_its_reason_and_keeps_the_first_stake(chain_vpx, owner,
                                                                            password_file):
    register(chain_vpx, password_file, "2")
    line = one_line_error(register(chain_vpx, password_file, "3", ok=False))
    assert line.endswith("registry: already registered")
    assert chain_vpx.json("node", "status", "own")["stake_wei"] == 2 * ETH


def test_wrong_password_or_unknown_owner_registers_nothing(chain_vpx, owner, tmp_path):
    wrong = write_secret(tmp_path / "wrong.txt", "nope")
    line = one_line_error(register(chain_vpx, wrong, ok=False))
    assert line == "Error: wrong password for account 'own'"
    result = chain_vpx("node", "register", "--owner", "ghost", "--operator", "op",
                       "--endpoint", "http://h:1", "--stake", "1", "--password-file", str(wrong),
                       *HW_FLAGS, ok=False)
    assert "no account named 'ghost'" in one_line_error(result)
    assert chain_vpx.json("node", "status", "own")["registered"] is False


def test_an_owner_without_enough_coin_is_told_how_much_it_holds(chain_vpx, password_file):
    chain_vpx("wallet", "new", "own", "--password-file", str(password_file))
    chain_vpx("wallet", "new", "op", "--password-file", str(password_file))
    line = one_line_error(register(chain_vpx, password_file, "1", ok=False))
    assert "holds 0 ETH, less than the 1 ETH needed" in line


def test_bad_endpoints_and_hardware_flags_are_refused(chain_vpx, owner, password_file):
    for endpoint in ("gpu1:9000", "ftp://x", "http://", "http://h/" + "p" * 300):
        result = chain_vpx("node", "register", "--owner", "own", "--operator", "op",
                           "--endpoint", endpoint, "--stake", "1",
                           "--password-file", str(password_file), *HW_FLAGS, ok=False)
        assert result.exit_code != 0 and "endpoint" in result.output, endpoint
    result = register(chain_vpx, password_file, "1", "--gpu", "G" * 65, ok=False)
    assert result.exit_code != 0 and "gpu name" in result.output
    result = register(chain_vpx, password_file, "1", "--vram-mib", "0", ok=False)
    assert result.exit_code != 0
    assert chain_vpx.json("node", "status", "own")["registered"] is False


def test_register_without_hardware_flags_sends_the_detected_profile(chain_vpx, owner,
                                                                   password_file):
    chain_vpx("node", "register", "--owner", "own", "--operator", "op",
              "--endpoint", "http://10.0.0.7:9000", "--stake", "1",
              "--password-file", str(password_file), "--region", "test-lab")
    hw = chain_vpx.json("node", "status", "own")["hardware"]
    detected = chain_vpx.json("node", "hardware")
    assert hw["gpu"] == detected["gpu"] and hw["vram_mib"] == detected["vram_mib"]
    assert hw["tflops"] > 0 and hw["mem_bw_gbps"] > 0 and hw["region"] == "test-lab"


def test_status_by_operator_name_finds_the_owner_and_unknown_nodes_read_unregistered(
        chain_vpx, owner, password_file):
    register(chain_vpx, password_file, "2")
    by_owner = chain_vpx.json("node", "status", "own")
    by_operator = chain_vpx.json("node", "status", "op")
    assert by_operator["owner"] == by_owner["owner"] and by_operator["registered"]
    stranger = chain_vpx.json("node", "status", "0x" + "ab" * 20)
    assert stranger["registered"] is False and stranger["stake_wei"] == 0
    human = chain_vpx("node", "status", "own").stdout
    assert "stake:      2 ETH" in human and "NVIDIA RTX 4090" in human


def test_stake_tops_up_and_partial_unbond_leaves_the_rest_staked(chain_vpx, owner, password_file):
    pw = str(password_file)
    register(chain_vpx, password_file, "2")
    assert chain_vpx.json("node", "stake", "own", "1.5", "--password-file", pw)["stake_wei"] == \
        35 * ETH // 10
    out = chain_vpx.json("node", "unbond", "own", "--amount", "0.5", "--password-file", pw)
    assert out["stake_wei"] == 3 * ETH and out["unbonding"] == ETH // 2
    assert out["blocks_until_withdrawable"] > 0 and out["withdrawable"] is False
    too_much = chain_vpx("node", "unbond", "own", "--amount", "100", "--password-file", pw,
                         ok=False)
    assert one_line_error(too_much).endswith("registry: amount exceeds stake")


def test_unbond_and_withdraw_refuse_clearly_when_there_is_nothing_to_do(chain_vpx, owner,
                                                                       password_file):
    pw = str(password_file)
    line = one_line_error(chain_vpx("node", "unbond", "own", "--password-file", pw, ok=False))
    assert "has no registered node" in line
    register(chain_vpx, password_file, "1")
    line = one_line_error(chain_vpx("node", "withdraw", "own", "--password-file", pw, ok=False))
    assert "nothing unbonding" in line


def test_only_the_owner_rotates_the_operator(chain_vpx, owner, password_file):
    pw = str(password_file)
    register(chain_vpx, password_file, "1")
    new_op = chain_vpx.json("wallet", "new", "op2", "--password-file", pw)["address"]
    as_operator = chain_vpx("node", "rotate-operator", "op", "--operator", "op2",
                            "--password-file", pw, ok=False)
    line = one_line_error(as_operator)
    assert "has no registered node (it is the operator key of node" in line
    out = chain_vpx.json("node", "rotate-operator", "own", "--operator", "op2",
                         "--password-file", pw)
    assert out["operator"] == new_op and out["old_operator"] != new_op
    assert chain_vpx.json("node", "status", "op2")["owner"] == out["owner"]


def test_rewards_claim_pays_a_provers_credit_and_refuses_when_there_is_none(
        chain_vpx, owner, password_file, anvil_url, deployment):
    pw = str(password_file)
    register(chain_vpx, password_file, "2")
    prover = chain_vpx.json("wallet", "new", "prover", "--password-file", pw)["address"]
    chain_vpx.fund("prover", "1")
    nothing = chain_vpx("rewards", "claim", "prover", "--password-file", pw, ok=False)
    assert "nothing to claim" in one_line_error(nothing)
    # The verification role (a dev account here) slashes the node; half goes to the prover.
    slasher = Signer.from_key(dev_key(SLASHER_DEV_INDEX, DEV_MNEMONIC))
    chain = Chain.connect(anvil_url, deployment, signer=slasher)
    owner_address = chain_vpx.json("node", "status", "own")["owner"]
    chain.node_registry.slash(owner_address, ETH, prover, "test fault")
    credit = chain.node_registry.credit_of(prover)
    assert credit > 0
    before = chain.balance(prover)
    out = chain_vpx.json("rewards", "claim", "prover", "--password-file", pw)
    assert out["claimed_wei"] == credit and out["credits_wei"] == credit
    assert chain.node_registry.credit_of(prover) == 0
    gas_bound = ETH // 100
    assert credit - gas_bound < chain.balance(prover) - before <= credit


def test_devnet_fund_sends_coin_to_a_wallet_name_and_refuses_other_chains(chain_vpx,
                                                                          password_file):
    address = chain_vpx.json("wallet", "new", "c", "--password-file", str(password_file))["address"]
    out = chain_vpx.fund("c", "0.75")
    assert out["to"] == address and out["balance_wei"] == 3 * ETH // 4
    assert chain_vpx.fund(address, "0.25")["balance_wei"] == ETH
    for bad in ("0", "-2"):
        assert chain_vpx.fund("c", bad, ok=False).exit_code != 0
    refused = chain_vpx.fund("c", "1", ok=False, devnet_chain_id=5)
    assert refused.exit_code == 1 and "is not the devnet" in refused.output


def test_an_unreachable_rpc_or_missing_manifest_is_one_clear_line(chain_vpx, tmp_path):
    anvil = chain_vpx.rpc_url
    chain_vpx.rpc_url = "http://127.0.0.1:9"
    line = one_line_error(chain_vpx("node", "status", "0x" + "ab" * 20, ok=False))
    assert "cannot reach the JSON-RPC node at http://127.0.0.1:9" in line
    chain_vpx.rpc_url, chain_vpx.manifest = anvil, tmp_path / "none.json"
    line = one_line_error(chain_vpx("client", "balance", "0x" + "ab" * 20, ok=False))
    assert f"no deployment manifest at {tmp_path / 'none.json'}" in line


def test_the_operator_key_updates_the_endpoint_and_hardware_but_cannot_unbond(chain_vpx, owner,
                                                                             password_file):
    pw = str(password_file)
    register(chain_vpx, password_file, "2")
    broke = chain_vpx("node", "update", "op", "--endpoint", "http://h:2", "--password-file", pw,
                      ok=False)
    assert "needs coin for gas" in one_line_error(broke)
    chain_vpx.fund("op", "0.1")
    out = chain_vpx.json("node", "update", "op", "--endpoint", "https://n1.example:443",
                         "--vram-mib", "49140", "--region", "us-west", "--password-file", pw)
    assert out["endpoint"] == "https://n1.example:443" and len(out["txs"]) == 2
    assert out["hardware"]["vram_mib"] == 49_140 and out["hardware"]["region"] == "us-west"
    assert out["hardware"]["gpu"] == "NVIDIA RTX 4090"  # fields not given are kept
    owner_address = chain_vpx.json("node", "status", "own")["owner"]
    for args in (["unbond", "op"], ["withdraw", "op"], ["stake", "op", "1"]):
        line = one_line_error(chain_vpx("node", *args, "--password-file", pw, ok=False))
        assert f"has no registered node (it is the operator key of node {owner_address}" in line
    assert chain_vpx.json("node", "status", "own")["stake_wei"] == 2 * ETH
    nothing = chain_vpx("node", "update", "op", "--password-file", pw, ok=False)
    assert nothing.exit_code != 0 and "nothing to update" in nothing.output
    stranger = chain_vpx.json("wallet", "new", "x", "--password-file", pw)["address"]
    line = one_line_error(chain_vpx("node", "update", "x", "--endpoint", "http://h:1",
                                    "--password-file", pw, ok=False))
    assert f"{stranger} neither owns nor operates a registered node" in line
