"""`veriplex client deposit|balance|withdraw` and `client key create|revoke|list` against a real
anvil chain with the Payments contract deployed."""

from __future__ import annotations

import pytest

from contracts.apikeys import SignedApiKey
from contracts.client import Chain
from tests.support.chain import ETH
from tests.support.wallet import rpc

pytestmark = pytest.mark.anvil


@pytest.fixture
def client(chain_vpx, password_file):
    """A client account 'cli' funded with 5 ETH; yields (vpx, password file as str)."""
    chain_vpx("wallet", "new", "cli", "--password-file", str(password_file))
    chain_vpx.fund("cli", "5")
    return chain_vpx, str(password_file)


def error_line(result) -> str:
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    return result.output.strip().splitlines()[-1]


def test_deposit_then_partial_and_full_withdrawal(client):
    vpx, pw = client
    assert vpx.json("client", "deposit", "2", "--account", "cli",
                    "--password-file", pw)["deposit_wei"] == 2 * ETH
    out = vpx.json("client", "withdraw", "0.5", "--account", "cli", "--password-file", pw)
    assert out["withdrawn_wei"] == ETH // 2 and out["deposit_wei"] == 3 * ETH // 2
    out = vpx.json("client", "withdraw", "all", "--account", "cli", "--password-file", pw)
    assert out["withdrawn_wei"] == 3 * ETH // 2 and out["deposit_wei"] == 0
    balance = vpx.json("client", "balance", "cli")
    assert balance["deposit_wei"] == 0 and 4 * ETH < balance["wallet_wei"] < 5 * ETH


def test_bad_deposit_and_withdrawal_amounts_fail_clearly_and_change_nothing(client):
    vpx, pw = client
    vpx("client", "deposit", "1", "--account", "cli", "--password-file", pw)
    for amount in ("0", "-1", "1e-19"):
        result = vpx("client", "deposit", amount, "--account", "cli", "--password-file", pw,
                     ok=False)
        assert result.exit_code == 2 and "amount" in result.output, amount
        assert len(result.output.strip().splitlines()) == 1, result.output  # no usage banner
    assert "less than the 100 ETH needed" in error_line(
        vpx("client", "deposit", "100", "--account", "cli", "--password-file", pw, ok=False))
    assert "exceeds the deposit" in error_line(
        vpx("client", "withdraw", "2", "--account", "cli", "--password-file", pw, ok=False))
    assert vpx.json("client", "balance", "cli")["deposit_wei"] == ETH


def test_withdraw_all_with_no_deposit_is_refused(client):
    vpx, pw = client
    line = error_line(vpx("client", "withdraw", "all", "--account", "cli", "--password-file", pw,
                          ok=False))
    assert "has no deposit to withdraw" in line


def test_a_created_key_is_a_bearer_token_for_the_coordinators_gateway_expiring_in_chain_time(
        client, anvil_url, deployment):
    vpx, pw = client
    vpx("client", "deposit", "1", "--account", "cli", "--password-file", pw)
    out = vpx.json("client", "key", "create", "--account", "cli", "--cap", "0.1",
                   "--expires", "1d12h", "--password-file", pw)
    head = rpc(anvil_url, "eth_getBlockByNumber", "latest", False)
    signed = SignedApiKey.from_token(out["api_key"])
    chain = Chain.connect(anvil_url, deployment)
    assert signed.key.gateway == chain.scheduler.coordinator() == out["gateway"]
    assert signed.payments == chain.payments.address and signed.chain_id == chain.chain_id
    assert 0 <= int(head["timestamp"], 16) + 129_600 - out["expiry"] <= 5  # seconds of drift
    state = chain.payments.key_state(signed.key_hash)
    assert state is not None and state.cap_wei == ETH // 10 and not state.revoked


def test_keys_get_increasing_nonces_and_revoked_keys_show_as_revoked(client):
    vpx, pw = client
    first = vpx.json("client", "key", "create", "--account", "cli", "--cap", "1", "--expires",
                     "1h", "--password-file", pw)
    second = vpx.json("client", "key", "create", "--account", "cli", "--cap", "2", "--expires",
                      "2h", "--password-file", pw)
    assert (first["nonce"], second["nonce"]) == (0, 1)
    vpx("client", "key", "revoke", "0", "--account", "cli", "--password-file", pw)
    vpx("client", "key", "revoke", second["key_hash"], "--account", "cli", "--password-file", pw)
    keys = vpx.json("client", "key", "list", "cli")["keys"]
    assert [(k["nonce"], k["revoked"]) for k in keys] == [(0, True), (1, True)]
    again = vpx("client", "key", "revoke", "0", "--account", "cli", "--password-file", pw,
                ok=False)
    assert error_line(again) == "Error: transaction reverted: payments: key revoked"
    third = vpx.json("client", "key", "create", "--account", "cli", "--cap", "1", "--expires",
                     "1h", "--password-file", pw)
    assert third["nonce"] == 2


def test_bad_key_parameters_are_refused_and_register_nothing(client):
    vpx, pw = client
    for args in (["--cap", "0", "--expires", "1d"], ["--cap", "-1", "--expires", "1d"],
                 ["--cap", "1", "--expires", "0s"], ["--cap", "1", "--expires", "soon"]):
        result = vpx("client", "key", "create", "--account", "cli", *args,
                     "--password-file", pw, ok=False)
        assert result.exit_code != 0 and "Traceback" not in result.output, args
    vpx("client", "key", "create", "--account", "cli", "--cap", "1", "--expires", "1h",
        "--nonce", "7", "--password-file", pw)
    reused = vpx("client", "key", "create", "--account", "cli", "--cap", "1", "--expires", "1h",
                 "--nonce", "7", "--password-file", pw, ok=False)
    assert "nonce 7" in error_line(reused) and "already used" in error_line(reused)
    assert [k["nonce"] for k in vpx.json("client", "key", "list", "cli")["keys"]] == [7]
    unknown = vpx("client", "key", "revoke", "0x" + "00" * 32, "--account", "cli",
                  "--password-file", pw, ok=False)
    assert "has no API key" in error_line(unknown)


def test_revoking_a_nonce_no_registered_key_uses_needs_the_unregistered_flag(client):
    vpx, pw = client
    vpx("client", "key", "create", "--account", "cli", "--cap", "1", "--expires", "1h",
        "--password-file", pw)
    typo = vpx("client", "key", "revoke", "3", "--account", "cli", "--password-file", pw,
               ok=False)
    assert "has no registered API key with nonce 3 (its nonces: 0)" in error_line(typo)
    assert typo.exit_code == 1
    account = vpx.json("wallet", "show", "cli")["address"]
    chain = Chain.connect(vpx.rpc_url, vpx.manifest)

    def revoked_nonces() -> list[int]:
        return [int(e.args["nonce"]) for e in chain.payments.events(
            "KeyRevoked", from_block=chain.manifest.deploy_block, client=account)]

    assert revoked_nonces() == []
    vpx("client", "key", "revoke", "3", "--unregistered", "--account", "cli",
        "--password-file", pw)
    assert revoked_nonces() == [3]
    assert [k["revoked"] for k in vpx.json("client", "key", "list", "cli")["keys"]] == [False]


def test_a_key_for_an_explicit_gateway_account(client, password_file):
    vpx, pw = client
    gw = vpx.json("wallet", "new", "gw", "--password-file", pw)["address"]
    out = vpx.json("client", "key", "create", "--account", "cli", "--cap", "1", "--expires",
                   "10m", "--gateway", "gw", "--password-file", pw)
    assert out["gateway"] == gw == SignedApiKey.from_token(out["api_key"]).key.gateway
