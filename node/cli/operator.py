"""The operator's commands: `veriplex node register|status|stake|unbond|withdraw|rotate-operator|
update|hardware`, `veriplex rewards claim`, and `veriplex devnet fund` (registered by the devnet group).

A node is named by its owner account (the cold key that stakes and withdraws); the operator (hot
key on the GPU box) is given by wallet name or address and never needs its password here. Amounts
are ETH with decimals; every transaction is signed locally with a wallet account unlocked from
`--password-file` or a prompt. Chain state is read back after each transaction so the output shows
what the chain now holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click

from contracts.client import Chain, dev_key
from contracts.node_registry import NodeInfo
from contracts.rpc import Signer
from node.cli.chain import (
    NEGATIVE_AMOUNTS,
    BadValue,
    address_of,
    chain_errors,
    check_funds,
    connect,
    emit,
    format_eth,
    parse_eth,
    signer_of,
)
from node.wallet.cli import JSON, PASSWORD_FILE
from protocol.settings import Settings

ENDPOINT_MAX = 256  # the registry's String[256]


def _endpoint(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise BadValue(f"endpoint {url!r} must be an http(s) URL with a host",
                       param_hint="--endpoint")
    if len(url.encode()) > ENDPOINT_MAX:
        raise BadValue(f"endpoint is {len(url.encode())} bytes, at most {ENDPOINT_MAX}",
                       param_hint="--endpoint")
    return url


def node_state(chain: Chain, owner: str) -> dict[str, Any]:
    """Everything `node status --json` prints about the node owned by `owner`."""
    reg = chain.node_registry
    info = reg.node(owner)
    block = chain.block_number()
    ready = info.unbond_ready_block
    withdrawable = info.unbonding_wei > 0 and block >= ready
    state: dict[str, Any] = {
        "owner": info.owner,
        "registered": info.registered,
        "operator": info.operator if info.registered else None,
        "endpoint": info.endpoint if info.registered else None,
        "hardware": {
            "gpu": info.hardware.gpu,
            "vram_mib": info.hardware.vram_mib,
            "tflops": info.hardware.tflops_milli / 1000,
            "mem_bw_gbps": info.hardware.mem_bw_gbps,
            "net_bw_mbps": info.hardware.net_bw_mbps,
            "region": info.hardware.region,
        } if info.registered else None,
        "stake_wei": info.stake_wei,
        "unbonding": info.unbonding_wei,
        "unbonding_wei": info.unbonding_wei,
        "unbond_ready_block": ready if info.unbonding_wei else None,
        "withdrawable": withdrawable,
        "blocks_until_withdrawable": max(0, ready - block) if info.unbonding_wei else None,
        "jailed": info.jailed_until > block,
        "jailed_until": info.jailed_until or None,
        "active": reg.is_active(info.operator) if info.registered else False,
        "slashed_total_wei": info.slashed_total_wei,
        "registered_block": info.registered_block or None,
        "min_stake_wei": reg.params().min_stake_wei,
        "credits_wei": reg.credit_of(owner),
        "earnings_wei": chain.payments.balance_of(owner),
        "block": block,
    }
    return state


def _human_state(s: dict[str, Any]) -> str:
    if not s["registered"]:
        return f"{s['owner']}: not registered"
    hw = s["hardware"]
    lines = [
        f"owner:      {s['owner']}",
        f"operator:   {s['operator']}",
        f"endpoint:   {s['endpoint']}",
        f"hardware:   {hw['gpu']}, {hw['vram_mib']} MiB, {hw['tflops']} TFLOPS, "
        f"{hw['mem_bw_gbps']} GB/s, net {hw['net_bw_mbps']} Mbit/s, {hw['region']}",
        f"stake:      {format_eth(s['stake_wei'])} (minimum {format_eth(s['min_stake_wei'])})",
        f"active:     {'yes' if s['active'] else 'no'}{' (jailed)' if s['jailed'] else ''}",
    ]
    if s["unbonding_wei"]:
        when = ("withdrawable now" if s["withdrawable"] else
                f"withdrawable at block {s['unbond_ready_block']} "
                f"({s['blocks_until_withdrawable']} blocks from now)")
        lines.append(f"unbonding:  {format_eth(s['unbonding_wei'])}, {when}")
    if s["credits_wei"] or s["earnings_wei"]:
        lines.append(f"to claim:   {format_eth(s['credits_wei'] + s['earnings_wei'])}")
    return "\n".join(lines)


def _owner_of(chain: Chain, address: str) -> str:
    """`address` itself if it owns a node, else the owner it is (or was) operator for."""
    if chain.node_registry.node(address).registered:
        return address
    return chain.node_registry.owner_of_operator(address) or address


def _require_owner(chain: Chain, address: str) -> NodeInfo:
    """`address`'s node; refuses, before any transaction, a signer that owns no node, naming the
    owner to use when the signer is a node's operator (the hot key never stakes, unbonds or
    withdraws)."""
    info = chain.node_registry.node(address)
    if info.registered:
        return info
    owner = chain.node_registry.owner_of_operator(address)
    hint = (f" (it is the operator key of node {owner}; sign with that owner's account)"
            if owner else "")
    raise click.ClickException(f"{address} has no registered node{hint}")


def _tx_line(verb: str, tx_hash: str) -> str:
    return f"{verb} (tx {tx_hash})"


@click.group()
def node() -> None:
    """Register, stake and manage a worker node on chain."""


@node.command("register")
@click.option("--owner", required=True, help="Wallet account that owns and stakes (cold key).")
@click.option("--operator", required=True,
              help="Operator (hot key): wallet account name or address.")
@click.option("--endpoint", required=True, help="Public URL of the node's data plane.")
@click.option("--stake", "stake", required=True, help="Stake in ETH (at least the minimum).")
@click.option("--gpu", default=None, help="Override the detected GPU (or CPU) name.")
@click.option("--vram-mib", type=click.IntRange(min=1), default=None,
              help="Override detected device memory (MiB).")
@click.option("--tflops", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Override measured dense TFLOPS.")
@click.option("--mem-bw-gbps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Override measured memory bandwidth (GB/s).")
@click.option("--net-bw-mbps", type=click.IntRange(min=0), default=None,
              help="Override the network bandwidth (Mbit/s).")
@click.option("--region", default=None, help="Region label, e.g. eu-west (default: unknown).")
@PASSWORD_FILE
@JSON
@click.pass_obj
@chain_errors
def register_cmd(settings: Settings, owner: str, operator: str, endpoint: str, stake: str,
                 gpu: str | None, vram_mib: int | None, tflops: float | None,
                 mem_bw_gbps: float | None, net_bw_mbps: int | None, region: str | None,
                 password_file: Path | None, as_json: bool) -> None:
    """Register OWNER's node with OPERATOR as hot key, ENDPOINT and a stake."""
    from node.runtime.hardware import resolve

    stake_wei = parse_eth(stake, "stake")
    url = _endpoint(endpoint)
    operator_address = address_of(settings, operator)
    try:
        profile = resolve({"gpu": gpu, "vram_mib": vram_mib, "tflops": tflops,
                           "mem_bw_gbps": mem_bw_gbps, "net_bw_mbps": net_bw_mbps,
                           "region": region})
    except ValueError as exc:
        raise BadValue(str(exc)) from None
    signer = signer_of(settings, owner, password_file)
    chain = connect(settings, signer)
    check_funds(chain, signer.address, stake_wei, "owner")
    res = chain.node_registry.register(operator_address, url, profile.to_chain(), stake_wei)
    state = node_state(chain, signer.address)
    emit(as_json, {**state, "tx": res.tx_hash, "gas_used": res.gas_used},
         _tx_line(f"registered node {signer.address} with operator {operator_address}, "
                  f"stake {format_eth(stake_wei)}", res.tx_hash) + "\n" + _human_state(state))
    if profile.net_bw_mbps == 0:  # after the outcome, so a refusal stays one line
        click.echo("note: no interface reports its link speed; registered network bandwidth 0 "
                   "(correct it with `veriplex node update NAME --net-bw-mbps N`)", err=True)


@node.command("status")
@click.argument("name")
@JSON
@click.pass_obj
@chain_errors
def status_cmd(settings: Settings, name: str, as_json: bool) -> None:
    """Show the node owned by NAME (an account name or address; an operator finds its owner)."""
    chain = connect(settings)
    state = node_state(chain, _owner_of(chain, address_of(settings, name)))
    emit(as_json, state, _human_state(state))


@node.command("stake", context_settings=NEGATIVE_AMOUNTS)
@click.argument("name")
@click.argument("amount")
@PASSWORD_FILE
@JSON
@click.pass_obj
@chain_errors
def stake_cmd(settings: Settings, name: str, amount: str, password_file: Path | None,
              as_json: bool) -> None:
    """Add AMOUNT ETH to the stake of NAME's node."""
    wei = parse_eth(amount)
    signer = signer_of(settings, name, password_file)
    chain = connect(settings, signer)
    _require_owner(chain, signer.address)
    check_funds(chain, signer.address, wei, "owner")
    res = chain.node_registry.add_stake(wei)
    state = node_state(chain, signer.address)
    emit(as_json, {**state, "tx": res.tx_hash},
         _tx_line(f"added {format_eth(wei)}; stake is now {format_eth(state['stake_wei'])}",
                  res.tx_hash))


@node.command("unbond")
@click.argument("name")
@click.option("--amount", default=None, help="ETH to unbond (default: the whole stake).")
@PASSWORD_FILE
@JSON
@click.pass_obj
@chain_errors
def unbond_cmd(settings: Settings, name: str, amount: str | None, password_file: Path | None,
               as_json: bool) -> None:
    """Start unbonding NAME's stake; withdraw it after the unbonding period."""
    wei = parse_eth(amount) if amount is not None else None
    signer = signer_of(settings, name, password_file)
    chain = connect(settings, signer)
    info = _require_owner(chain, signer.address)
    if wei is None:
        if info.stake_wei == 0:
            raise click.ClickException(f"node {signer.address} has no stake left to unbond")
        wei = info.stake_wei
    res = chain.node_registry.request_unbond(wei)
    state = node_state(chain, signer.address)
    emit(as_json, {**state, "tx": res.tx_hash},
         _tx_line(f"unbonding {format_eth(wei)}; withdrawable at block "
                  f"{state['unbond_ready_block']}", res.tx_hash))


@node.command("withdraw")
@click.argument("name")
@PASSWORD_FILE
@JSON
@click.pass_obj
@chain_errors
def withdraw_cmd(settings: Settings, name: str, password_file: Path | None, as_json: bool) -> None:
    """Withdraw NAME's unbonded stake once the unbonding period has passed."""
    signer = signer_of(settings, name, password_file)
    chain = connect(settings, signer)
    _require_owner(chain, signer.address)
    before = node_state(chain, signer.address)
    if not before["unbonding_wei"]:
        raise click.ClickException(f"node {signer.address} has nothing unbonding")
    if not before["withdrawable"]:
        raise click.ClickException(
            f"still unbonding: {format_eth(before['unbonding_wei'])} is withdrawable at block "
            f"{before['unbond_ready_block']} ({before['blocks_until_withdrawable']} blocks from now)"
        )
    res = chain.node_registry.withdraw()
    amount = int(res.event("UnbondedWithdrawn").args["amount"])
    state = node_state(chain, signer.address)
    emit(as_json, {**state, "tx": res.tx_hash, "withdrawn_wei": amount},
         _tx_line(f"withdrew {format_eth(amount)} to {signer.address}", res.tx_hash))


@node.command("rotate-operator")
@click.argument("name")
@click.option("--operator", required=True, help="New operator: wallet account name or address.")
@PASSWORD_FILE
@JSON
@click.pass_obj
@chain_errors
def rotate_cmd(settings: Settings, name: str, operator: str, password_file: Path | None,
               as_json: bool) -> None:
    """Replace the operator (hot key) of NAME's node; only the owner can."""
    new = address_of(settings, operator)
    signer = signer_of(settings, name, password_file)
    chain = connect(settings, signer)
    _require_owner(chain, signer.address)
    res = chain.node_registry.rotate_operator(new)
    ev = res.event("OperatorRotated")
    state = node_state(chain, signer.address)
    emit(as_json, {**state, "tx": res.tx_hash, "old_operator": ev.args["old_operator"]},
         _tx_line(f"operator {ev.args['old_operator']} -> {new}", res.tx_hash))


@node.command("update")
@click.argument("name")
@click.option("--endpoint", default=None, help="New public URL of the node's data plane.")
@click.option("--hardware", "redetect", is_flag=True,
              help="Re-detect and publish the hardware profile (flags below override).")
@click.option("--gpu", default=None)
@click.option("--vram-mib", type=click.IntRange(min=1), default=None)
@click.option("--tflops", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--mem-bw-gbps", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--net-bw-mbps", type=click.IntRange(min=0), default=None)
@click.option("--region", default=None)
@PASSWORD_FILE
@JSON
@click.pass_obj
@chain_errors
def update_cmd(settings: Settings, name: str, endpoint: str | None, redetect: bool, gpu: str | None,
               vram_mib: int | None, tflops: float | None, mem_bw_gbps: float | None,
               net_bw_mbps: int | None, region: str | None, password_file: Path | None,
               as_json: bool) -> None:
    """Update the endpoint and/or hardware profile, signed by NAME: the owner or the operator
    (the hot key on the GPU box may do this; it can never move funds)."""
    from node.runtime.hardware import resolve

    overrides = {"gpu": gpu, "vram_mib": vram_mib, "tflops": tflops,
                 "mem_bw_gbps": mem_bw_gbps, "net_bw_mbps": net_bw_mbps, "region": region}
    wants_hw = redetect or any(v is not None for v in overrides.values())
    if endpoint is None and not wants_hw:
        raise click.UsageError("nothing to update: give --endpoint and/or --hardware/--gpu/...")
    url = _endpoint(endpoint) if endpoint is not None else None
    signer = signer_of(settings, name, password_file)
    chain = connect(settings, signer)
    owner = _owner_of(chain, signer.address)
    info = chain.node_registry.node(owner)
    if not info.registered:
        raise click.ClickException(f"{signer.address} neither owns nor operates a registered node")
    txs = []
    if url is not None:
        txs.append(chain.node_registry.set_endpoint(owner, url).tx_hash)
    if wants_hw:
        if not redetect:  # flags alone amend the profile on chain, nothing is measured
            hw = info.hardware
            base = {"gpu": hw.gpu, "vram_mib": hw.vram_mib, "tflops": hw.tflops_milli / 1000,
                    "mem_bw_gbps": float(hw.mem_bw_gbps), "net_bw_mbps": hw.net_bw_mbps,
                    "region": hw.region}
            overrides = {k: (v if v is not None else base[k]) for k, v in overrides.items()}
        try:
            profile = resolve(overrides)
        except ValueError as exc:
            raise BadValue(str(exc)) from None
        txs.append(chain.node_registry.set_hardware(owner, profile.to_chain()).tx_hash)
    state = node_state(chain, owner)
    emit(as_json, {**state, "txs": txs},
         f"updated node {owner} (tx {', '.join(txs)})\n" + _human_state(state))


@node.command("hardware")
@JSON
def hardware_cmd(as_json: bool) -> None:
    """Detect and measure this machine's profile (what `register` sends without flags)."""
    from node.runtime.hardware import detect

    p = detect()
    emit(as_json, p.as_json(),
         f"{p.gpu}: {p.vram_mib} MiB, {p.tflops} TFLOPS, {p.mem_bw_gbps} GB/s, "
         f"net {p.net_bw_mbps} Mbit/s")


@click.group()
def rewards() -> None:
    """Earnings of operators, verifiers and provers."""


@rewards.command("claim")
@click.argument("name")
@PASSWORD_FILE
@JSON
@click.pass_obj
@chain_errors
def claim_cmd(settings: Settings, name: str, password_file: Path | None, as_json: bool) -> None:
    """Send NAME's credited earnings (served requests, verifications, proven faults) to it."""
    signer = signer_of(settings, name, password_file)
    chain = connect(settings, signer)
    earnings = chain.payments.balance_of(signer.address)
    credits = chain.node_registry.credit_of(signer.address)
    if earnings == 0 and credits == 0:
        raise click.ClickException(f"nothing to claim for {signer.address}")
    txs = []
    if earnings:
        txs.append(chain.payments.withdraw().tx_hash)
    if credits:
        txs.append(chain.node_registry.claim().tx_hash)
    total = earnings + credits
    emit(as_json, {"address": signer.address, "earnings_wei": earnings, "credits_wei": credits,
                   "claimed_wei": total, "txs": txs},
         f"claimed {format_eth(total)} to {signer.address} (tx {', '.join(txs)})")


@click.command("fund", context_settings=NEGATIVE_AMOUNTS)
@click.argument("target")
@click.argument("amount")
@click.option("--from-account", "from_index", type=click.IntRange(min=0), default=0,
              show_default=True, help="Index of the dev account (configured mnemonic) to pay from.")
@JSON
@click.pass_obj
@chain_errors
def devnet_fund(settings: Settings, target: str, amount: str, from_index: int, as_json: bool) -> None:
    """Send AMOUNT ETH from a dev account to TARGET (wallet name or address). Devnets only."""
    from contracts.rpc import Rpc

    wei = parse_eth(amount)
    to = address_of(settings, target)
    rpc = Rpc(settings.chain.rpc_url, timeout_s=settings.chain.timeout_s)  # no manifest needed
    if rpc.chain_id != settings.devnet.chain_id:
        raise click.ClickException(
            f"chain {rpc.chain_id} is not the devnet (chain id {settings.devnet.chain_id}): "
            f"refusing to spend from the well-known dev keys"
        )
    sender = Signer.from_key(dev_key(from_index, settings.devnet.mnemonic))
    have = rpc.balance(sender.address)
    if have < wei:
        raise click.ClickException(
            f"dev account {from_index} ({sender.address}) holds {format_eth(have)}, "
            f"less than {format_eth(wei)}"
        )
    receipt = rpc.transact(sender, to, b"", wei, gas=21_000)
    balance = rpc.balance(to)
    tx = "0x" + bytes(receipt["transactionHash"]).hex()
    emit(as_json, {"to": to, "amount_wei": wei, "balance_wei": balance, "tx": tx},
         f"sent {format_eth(wei)} to {to}; balance {format_eth(balance)} (tx {tx})")
