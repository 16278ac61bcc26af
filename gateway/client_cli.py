"""The paying client's commands: `veriplex client deposit|balance|withdraw` and
`veriplex client key create|revoke|list`.

A deposit funds requests; an API key is an EIP-712 spending authorization (client, gateway, cap,
expiry, nonce) signed with the client's wallet account, registered on chain in the same command so
it shows in `key list` and can be revoked, and printed as the `vpx_...` bearer token an OpenAI
client sends to the gateway. The token carries only the signed authorization, never the client's
private key. Expiry is counted in chain time (latest block timestamp).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from contracts.apikeys import ApiKey, SignedApiKey, sign_api_key
from contracts.client import Chain
from node.cli.chain import (
    NEGATIVE_AMOUNTS,
    BadValue,
    address_of,
    chain_errors,
    check_funds,
    connect,
    emit,
    format_eth,
    latest_timestamp,
    parse_duration,
    parse_eth,
    signer_of,
)
from node.wallet.cli import JSON, PASSWORD_FILE
from protocol.settings import Settings

ACCOUNT = click.option("--account", required=True, help="The client's wallet account.")


def balances(chain: Chain, address: str) -> dict[str, Any]:
    return {
        "address": address,
        "deposit_wei": chain.payments.deposit_of(address),
        "earnings_wei": chain.payments.balance_of(address),
        "wallet_wei": chain.balance(address),
    }


@click.group()
def client() -> None:
    """Deposit for requests and manage API keys."""


@client.command("deposit", context_settings=NEGATIVE_AMOUNTS)
@click.argument("amount")
@ACCOUNT
@PASSWORD_FILE
@JSON
@click.pass_obj
@chain_errors
def deposit_cmd(settings: Settings, amount: str, account: str, password_file: Path | None,
                as_json: bool) -> None:
    """Deposit AMOUNT ETH from ACCOUNT to pay for requests."""
    wei = parse_eth(amount)
    signer = signer_of(settings, account, password_file)
    chain = connect(settings, signer)
    check_funds(chain, signer.address, wei, "client")
    res = chain.payments.deposit(wei)
    b = balances(chain, signer.address)
    emit(as_json, {**b, "tx": res.tx_hash},
         f"deposited {format_eth(wei)}; deposit is now {format_eth(b['deposit_wei'])} "
         f"(tx {res.tx_hash})")


@client.command("balance")
@click.argument("name")
@JSON
@click.pass_obj
@chain_errors
def balance_cmd(settings: Settings, name: str, as_json: bool) -> None:
    """Show NAME's deposit (spendable by its keys), earnings and wallet coin."""
    chain = connect(settings)
    b = balances(chain, address_of(settings, name))
    emit(as_json, b,
         f"{b['address']}\ndeposit:  {format_eth(b['deposit_wei'])}\n"
         f"earnings: {format_eth(b['earnings_wei'])}\nwallet:   {format_eth(b['wallet_wei'])}")


@client.command("withdraw", context_settings=NEGATIVE_AMOUNTS)
@click.argument("amount")
@ACCOUNT
@PASSWORD_FILE
@JSON
@click.pass_obj
@chain_errors
def withdraw_cmd(settings: Settings, amount: str, account: str, password_file: Path | None,
                 as_json: bool) -> None:
    """Withdraw AMOUNT ETH (or "all") of ACCOUNT's unspent deposit."""
    wei = None if amount.strip().lower() == "all" else parse_eth(amount)
    signer = signer_of(settings, account, password_file)
    chain = connect(settings, signer)
    have = chain.payments.deposit_of(signer.address)
    if wei is None:
        if have == 0:
            raise click.ClickException(f"{signer.address} has no deposit to withdraw")
        wei = have
    if wei > have:
        raise click.ClickException(
            f"amount ({format_eth(wei)}) exceeds the deposit of {signer.address} "
            f"({format_eth(have)})")
    res = chain.payments.withdraw_deposit(wei)
    b = balances(chain, signer.address)
    emit(as_json, {**b, "tx": res.tx_hash, "withdrawn_wei": wei},
         f"withdrew {format_eth(wei)}; deposit is now {format_eth(b['deposit_wei'])} "
         f"(tx {res.tx_hash})")


@client.group("key")
def key() -> None:
    """API keys: signed spending authorizations for a gateway."""


def _used_nonces(chain: Chain, client_address: str) -> set[int]:
    start = chain.manifest.deploy_block
    pay = chain.payments
    used = {int(e.args["nonce"]) for e in
            pay.events("KeyRegistered", from_block=start, client=client_address)}
    used |= {int(e.args["nonce"]) for e in
             pay.events("KeyRevoked", from_block=start, client=client_address)}
    return used


def _default_gateway(chain: Chain) -> str:
    """The coordinator runs the gateway, so keys are for the Scheduler's coordinator."""
    return chain.scheduler.coordinator()


@key.command("create")
@ACCOUNT
@click.option("--cap", required=True, help="Most the gateway may charge under this key (ETH).")
@click.option("--expires", required=True, help="Lifetime: 30d, 12h, 1d12h, 90m, 3600s.")
@click.option("--gateway", default=None,
              help="Gateway address or account name (default: the Scheduler's coordinator).")
@click.option("--nonce", type=click.IntRange(min=0), default=None,
              help="Key nonce (default: the next unused one).")
@PASSWORD_FILE
@JSON
@click.pass_obj
@chain_errors
def key_create_cmd(settings: Settings, account: str, cap: str, expires: str, gateway: str | None,
                   nonce: int | None, password_file: Path | None, as_json: bool) -> None:
    """Sign and register an API key for ACCOUNT; prints the bearer token."""
    cap_wei = parse_eth(cap, "cap")
    lifetime = parse_duration(expires)
    gateway_address = address_of(settings, gateway) if gateway is not None else None
    signer = signer_of(settings, account, password_file)
    chain = connect(settings, signer)
    gateway_address = gateway_address or _default_gateway(chain)
    used = _used_nonces(chain, signer.address)
    if nonce is None:
        nonce = max(used, default=-1) + 1
    elif nonce in used:
        raise click.ClickException(f"nonce {nonce} of {signer.address} is already used")
    expiry = latest_timestamp(chain) + lifetime
    api_key = ApiKey(signer.address, gateway_address, cap_wei, expiry, nonce)
    payments = chain.payments.address
    sig = sign_api_key(api_key, bytes(signer.account.key), chain.chain_id, payments)
    signed = SignedApiKey(api_key, chain.chain_id, payments, sig)
    key_hash = chain.payments.register_key(signed)
    deposit = chain.payments.deposit_of(signer.address)
    token = signed.token()
    obj = {"api_key": token, "key_hash": "0x" + key_hash.hex(), "client": signer.address,
           "gateway": gateway_address, "cap_wei": cap_wei, "expiry": expiry,
           "expires_at": _iso(expiry), "nonce": nonce, "deposit_wei": deposit}
    human = token
    if deposit == 0:
        click.echo(f"note: {signer.address} has no deposit yet; requests will be refused until "
                   f"`veriplex client deposit AMOUNT --account {account}`", err=True)
    emit(as_json, obj, human)


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _key_rows(chain: Chain, client_address: str) -> list[dict[str, Any]]:
    now = latest_timestamp(chain)
    rows = []
    for ev in chain.payments.events("KeyRegistered", from_block=chain.manifest.deploy_block,
                                    client=client_address):
        h = bytes(ev.args["key_hash"])
        st = chain.payments.key_state(h)
        if st is None:
            continue
        rows.append({
            "key_hash": "0x" + h.hex(), "nonce": int(ev.args["nonce"]), "gateway": st.gateway,
            "cap_wei": st.cap_wei, "spent_wei": st.spent_wei, "expiry": st.expiry,
            "expires_at": _iso(st.expiry), "revoked": st.revoked, "expired": now > st.expiry,
        })
    return rows


@key.command("list")
@click.argument("name")
@JSON
@click.pass_obj
@chain_errors
def key_list_cmd(settings: Settings, name: str, as_json: bool) -> None:
    """List NAME's API keys with cap, spending and state."""
    chain = connect(settings)
    address = address_of(settings, name)
    rows = _key_rows(chain, address)
    if as_json:
        emit(True, {"client": address, "keys": rows}, "")
        return
    if not rows:
        click.echo(f"{address} has no API keys")
    for r in rows:
        state = "revoked" if r["revoked"] else "expired" if r["expired"] else "active"
        click.echo(f"nonce {r['nonce']:<4} {state:<8} spent {format_eth(r['spent_wei'])} of "
                   f"{format_eth(r['cap_wei'])}, expires {r['expires_at']}, key {r['key_hash']}")


@key.command("revoke")
@click.argument("key_id")
@ACCOUNT
@click.option("--unregistered", is_flag=True,
              help="Revoke nonce KEY_ID although no key registered on chain uses it (a key "
                   "signed elsewhere and never registered).")
@PASSWORD_FILE
@JSON
@click.pass_obj
@chain_errors
def key_revoke_cmd(settings: Settings, key_id: str, account: str, unregistered: bool,
                   password_file: Path | None, as_json: bool) -> None:
    """Revoke the API key KEY_ID (its nonce, or its 0x key hash) of ACCOUNT."""
    if not (key_id.startswith("0x") or key_id.isdigit()):
        raise BadValue(f"{key_id!r} is neither a nonce nor a 0x key hash")
    signer = signer_of(settings, account, password_file)
    chain = connect(settings, signer)
    rows = _key_rows(chain, signer.address)
    if key_id.startswith("0x"):
        match = [r for r in rows if r["key_hash"] == key_id.lower()]
        if not match:
            raise click.ClickException(f"{signer.address} has no API key {key_id}")
        nonce = int(match[0]["nonce"])
    else:
        nonce = int(key_id)
        if not unregistered and all(r["nonce"] != nonce for r in rows):
            known = ", ".join(str(r["nonce"]) for r in rows) or "none"
            raise click.ClickException(
                f"{signer.address} has no registered API key with nonce {nonce} (its nonces: "
                f"{known}); pass --unregistered to revoke a nonce signed elsewhere")
    res = chain.payments.revoke_key(nonce)
    emit(as_json, {"client": signer.address, "nonce": nonce, "tx": res.tx_hash},
         f"revoked API key nonce {nonce} of {signer.address} (tx {res.tx_hash})")
