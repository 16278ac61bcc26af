"""What the chain-facing commands (`veriplex node|rewards|client|devnet fund`) share.

Parsing of coin amounts (whole-unit decimals, never floats) and durations; connecting to the chain
named by the settings (RPC URL, then the manifest for that chain id); unlocking a wallet account as
a transaction signer; and `chain_errors`, which turns every `contracts`/wallet error into one line
on stderr and exit status 1 (a revert shows its decoded reason, never a stack trace).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from contracts.client import Chain
from contracts.errors import ContractsError, Revert, RpcRejected
from contracts.manifest import Manifest, check_live
from contracts.rpc import Rpc, Signer
from node.wallet.cli import resolve_address, unlock
from node.wallet.errors import WalletError
from protocol.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
WEI_PER_ETH = 10**18
# Commands taking an AMOUNT argument let "-1" reach `parse_eth` (a clear "must be greater than
# zero") instead of failing as click's "no such option".
NEGATIVE_AMOUNTS = {"ignore_unknown_options": True}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}


class BadValue(click.BadParameter):
    """A refused value (amount, duration, endpoint, key id), shown as one `Error:` line without
    click's usage banner: the message already quotes the value and says what is wrong with it.
    Still a usage error (exit status 2)."""

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", file=file, err=file is None)


def parse_eth(text: str, what: str = "amount") -> int:
    """Wei in `text` ETH ("1", "0.25", "1e-3"); rejects zero, negatives and sub-wei digits."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise BadValue(f"{what} {text!r} is not a number (ETH, e.g. 1.5)") from None
    if not value.is_finite():
        raise BadValue(f"{what} {text!r} is not a finite number")
    if value <= 0:
        raise BadValue(f"{what} ({text}) must be greater than zero")
    wei = value * WEI_PER_ETH
    if wei != wei.to_integral_value():
        raise BadValue(f"{what} ({text}) has more than 18 decimals (below 1 wei)")
    return int(wei)


def format_eth(wei: int) -> str:
    """`wei` as ETH with no trailing zeros ("1.5 ETH")."""
    text = format(Decimal(wei) / WEI_PER_ETH, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} ETH"


def parse_duration(text: str) -> int:
    """Seconds in "30d", "12h", "1d12h", "90m", "3600s" or a bare number of seconds."""
    s = text.strip().lower()
    if s.isdigit():
        seconds = int(s)
    else:
        parts = re.findall(r"(\d+)([smhdw])", s)
        if not parts or "".join(n + u for n, u in parts) != s:
            raise BadValue(
                f"duration {text!r} is not like 30d, 12h, 1d12h, 90m or 3600s")
        seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise BadValue(f"duration ({text}) must be greater than zero")
    return seconds


def chain_errors(fn: F) -> F:
    """Every chain or wallet failure becomes one line and exit status 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Revert as exc:
            raise click.ClickException(f"transaction reverted: {exc.reason}") from None
        except RpcRejected as exc:
            hint = ""
            if "insufficient funds" in str(exc).lower():
                hint = (" (the signing account needs coin for gas; on a devnet: "
                        "veriplex devnet fund NAME AMOUNT)")
            raise click.ClickException(f"{exc}{hint}") from None
        except (ContractsError, WalletError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def manifest_for(settings: Settings, rpc: Rpc) -> Path:
    """The manifest to use: explicit, else the one for the node's chain id, else devnet.json."""
    if settings.chain.manifest is not None:
        return Path(settings.chain.manifest)
    per_chain = settings.manifest_path(rpc.chain_id)
    return per_chain if per_chain.is_file() else settings.manifest_path(None)


def connect(settings: Settings, signer: Signer | None = None) -> Chain:
    """A checked connection to the configured chain and deployment."""
    rpc = Rpc(settings.chain.rpc_url, timeout_s=settings.chain.timeout_s)
    manifest = Manifest.load(manifest_for(settings, rpc))
    check_live(rpc, manifest)
    return Chain(rpc, manifest, signer)


def signer_of(settings: Settings, name: str, password_file: Path | None) -> Signer:
    """Unlock wallet account `name` as a transaction signer."""
    return Signer(unlock(settings, name, password_file))


def address_of(settings: Settings, name_or_address: str) -> str:
    return resolve_address(settings, name_or_address)


def check_funds(chain: Chain, address: str, value_wei: int, who: str) -> None:
    """Fail early, and clearly, when `address` cannot pay `value_wei` (gas comes on top)."""
    have = chain.balance(address)
    if have < value_wei:
        raise click.ClickException(
            f"{who} {address} holds {format_eth(have)}, less than the {format_eth(value_wei)} "
            f"needed (on a devnet: veriplex devnet fund {address} AMOUNT)"
        )


def emit(as_json: bool, obj: dict[str, Any], human: str) -> None:
    click.echo(json.dumps(obj, indent=2, default=str) if as_json else human)


def latest_timestamp(chain: Chain) -> int:
    """Timestamp of the latest block (API keys expire in chain time, not the local clock)."""
    return chain.rpc.latest_timestamp()
