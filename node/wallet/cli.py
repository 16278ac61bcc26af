"""`veriplex wallet new|import|list|show|sign|verify|change-password|remove`.

Every command prints a human line by default and one JSON object with `--json`. Passwords come
from `--password-file` or a hidden TTY prompt (confirmed when a new password is set); raw private
keys from `--private-key-file` or a hidden prompt: never argv. Errors are one line on stderr with
exit status 1 and leave the keystore directory as it was. `open_keystore` and `unlock` are the
helpers the chain-facing commands (`veriplex node|client|rewards`) use to get a signer.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from eth_account.signers.local import LocalAccount

from node.wallet.errors import BadSecret, SecretUnavailable, WalletError
from node.wallet.keystore import Keystore, parse_private_key
from node.wallet.messages import message_bytes, recover_signer, sign_message
from node.wallet.passwords import get_password, loosely_readable, prompt_secret, read_secret_file
from protocol.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

PASSWORD_FILE = click.option(
    "--password-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="File whose first line is the password (else a hidden prompt on the terminal).",
)
JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


def wallet_errors(fn: F) -> F:
    """Turn `WalletError`s into one-line click errors (exit status 1)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WalletError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def open_keystore(settings: Settings) -> Keystore:
    return Keystore(settings.keystore_dir, scrypt_n=settings.wallet.scrypt_n)


def password(password_file: Path | None, prompt: str = "password", confirm: bool = False,
             allow_empty: bool = True, option: str = "--password-file") -> str:
    if password_file is not None and loosely_readable(password_file):
        click.echo(f"warning: {password_file} is readable by other users (chmod 600 it)",
                   err=True)
    return get_password(password_file, prompt, confirm=confirm, allow_empty=allow_empty,
                        option=option)


def unlock(settings: Settings, name: str, password_file: Path | None) -> LocalAccount:
    """The account `name`, decrypted with the password from the file or the prompt."""
    ks = open_keystore(settings)
    ks.entry(name)  # unknown or corrupt: fail before asking for a password
    return ks.unlock(name, password(password_file, f"password for {name}"))


def emit(as_json: bool, obj: dict[str, Any], human: str) -> None:
    click.echo(json.dumps(obj, indent=2) if as_json else human)


@click.group()
def wallet() -> None:
    """Named accounts in Web3 Secret Storage v3 keystores (geth/foundry compatible)."""


@wallet.command("new")
@click.argument("name")
@PASSWORD_FILE
@JSON
@click.pass_obj
@wallet_errors
def new_cmd(settings: Settings, name: str, password_file: Path | None, as_json: bool) -> None:
    """Create a new random account NAME."""
    ks = open_keystore(settings)
    ks.check_free(name)  # bad or taken name: fail before asking for a password
    pw = password(password_file, "new password", confirm=True, allow_empty=False)
    entry = ks.create(name, pw)
    emit(as_json, entry.as_json(),
         f"created account {name!r} {entry.address}\nkeystore: {entry.path}")


@wallet.command("import")
@click.argument("name")
@click.option("--keystore", "keystore_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Import a v3 keystore file (geth, foundry); keeps its password.")
@click.option("--private-key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File holding a hex private key (else a hidden prompt).")
@PASSWORD_FILE
@JSON
@click.pass_obj
@wallet_errors
def import_cmd(settings: Settings, name: str, keystore_file: Path | None,
               private_key_file: Path | None, password_file: Path | None, as_json: bool) -> None:
    """Import an account as NAME from a keystore file or a raw private key.

    With --keystore the password (file or prompt) is that keystore's; otherwise it is the new
    password the key is encrypted under.
    """
    if keystore_file is not None and private_key_file is not None:
        raise click.UsageError("give either --keystore or --private-key-file, not both")
    ks = open_keystore(settings)
    ks.check_free(name)
    if keystore_file is not None:
        try:
            text = keystore_file.read_text()
        except FileNotFoundError:
            raise BadSecret(f"keystore file {keystore_file} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BadSecret(f"cannot read keystore file {keystore_file}: {exc}") from None
        pw = password(password_file, f"password of {keystore_file.name}")
        entry = ks.import_keystore(name, text, pw, str(keystore_file))
    else:
        if private_key_file is not None:
            if loosely_readable(private_key_file):
                click.echo(f"warning: {private_key_file} is readable by other users", err=True)
            key = parse_private_key(read_secret_file(private_key_file, "private key"))
        else:
            key = parse_private_key(prompt_secret("private key (hex)", option="--private-key-file"))
        pw = password(password_file, "new password", confirm=True, allow_empty=False)
        entry = ks.import_key(name, key, pw)
    emit(as_json, entry.as_json(),
         f"imported account {name!r} {entry.address}\nkeystore: {entry.path}")


@wallet.command("list")
@JSON
@click.pass_obj
@wallet_errors
def list_cmd(settings: Settings, as_json: bool) -> None:
    """List the accounts (name and address) and any unreadable files."""
    ks = open_keystore(settings)
    good, bad = ks.entries()
    if as_json:
        click.echo(json.dumps({
            "keystore_dir": str(ks.directory),
            "accounts": [{"name": e.name, "address": e.address} for e in good],
            "unreadable": [{"name": n, "error": err} for n, err in bad],
        }, indent=2))
        return
    if not good and not bad:
        click.echo(f"no accounts in {ks.directory}")
    width = max((len(e.name) for e in good), default=0)
    for e in good:
        click.echo(f"{e.name:<{width}}  {e.address or '(address unknown)'}")
    for _name, err in bad:
        click.echo(f"unreadable: {err}", err=True)


@wallet.command("show")
@click.argument("name")
@JSON
@click.pass_obj
@wallet_errors
def show_cmd(settings: Settings, name: str, as_json: bool) -> None:
    """Show NAME's address, file and key-derivation parameters (no password needed)."""
    e = open_keystore(settings).entry(name)
    params = " ".join(f"{k}={v}" for k, v in sorted(e.kdf_params.items()))
    emit(as_json, e.as_json(),
         f"name:     {e.name}\naddress:  {e.address or '(unknown)'}\nkeystore: {e.path}\nkdf:      {e.kdf} "
         f"{params}")


def _message(text: str | None, hex_data: str | None, message_file: Path | None) -> bytes:
    given = [x is not None for x in (text, hex_data, message_file)]
    if sum(given) != 1:
        raise click.UsageError("give the message once: as MESSAGE, --hex or --message-file")
    if message_file is not None:
        try:
            return message_file.read_bytes()
        except OSError as exc:
            raise BadSecret(f"cannot read message file {message_file}: {exc.strerror}") from None
    return message_bytes(text=text, hex_data=hex_data)


MESSAGE_OPTIONS = [
    click.argument("message", required=False),
    click.option("--hex", "hex_data", default=None, help="The message as 0x-hex bytes."),
    click.option("--message-file", type=click.Path(dir_okay=False, path_type=Path),
                 default=None, help="Sign/verify this file's exact bytes."),
]


def message_options(fn: F) -> F:
    for opt in reversed(MESSAGE_OPTIONS):
        fn = opt(fn)
    return fn


@wallet.command("sign")
@click.argument("name")
@message_options
@PASSWORD_FILE
@JSON
@click.pass_obj
@wallet_errors
def sign_cmd(settings: Settings, name: str, message: str | None, hex_data: str | None,
             message_file: Path | None, password_file: Path | None, as_json: bool) -> None:
    """Sign MESSAGE with NAME (EIP-191 personal_sign); prints the 65-byte signature."""
    data = _message(message, hex_data, message_file)
    account = unlock(settings, name, password_file)
    sig = sign_message(account, data)
    emit(as_json, {"address": account.address, "message_hex": "0x" + data.hex(),
                   "signature": sig}, sig)


@wallet.command("verify")
@click.argument("signature")
@message_options
@click.option("--signer", default=None,
              help="Expected signer (account name or address): exit 1 unless it signed.")
@JSON
@click.pass_obj
@wallet_errors
def verify_cmd(settings: Settings, signature: str, message: str | None, hex_data: str | None,
               message_file: Path | None, signer: str | None, as_json: bool) -> None:
    """Recover who signed MESSAGE (EIP-191) with SIGNATURE; with --signer, check it."""
    data = _message(message, hex_data, message_file)
    recovered = recover_signer(data, signature)
    expected = resolve_address(settings, signer) if signer is not None else None
    ok = expected is None or expected == recovered
    emit(as_json, {"signer": recovered, "expected": expected, "valid": ok}, recovered)
    if not ok:
        raise click.ClickException(f"signature is by {recovered}, not by {expected}")


@wallet.command("change-password")
@click.argument("name")
@PASSWORD_FILE
@click.option("--new-password-file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="File whose first line is the new password (else prompted).")
@JSON
@click.pass_obj
@wallet_errors
def change_password_cmd(settings: Settings, name: str, password_file: Path | None,
                        new_password_file: Path | None, as_json: bool) -> None:
    """Re-encrypt NAME under a new password."""
    ks = open_keystore(settings)
    ks.entry(name)
    old = password(password_file, f"current password for {name}")
    ks.unlock(name, old)  # a wrong password fails before the new one is asked for
    new = password(new_password_file, "new password", confirm=True, allow_empty=False,
                   option="--new-password-file")
    entry = ks.change_password(name, old, new)
    emit(as_json, entry.as_json(), f"changed the password of {name!r} ({entry.address})")


@wallet.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@JSON
@click.pass_obj
@wallet_errors
def remove_cmd(settings: Settings, name: str, yes: bool, as_json: bool) -> None:
    """Delete NAME's keystore file. Without a backup the key is gone for good."""
    ks = open_keystore(settings)
    path = ks.path(name)
    if not path.is_file():
        ks.remove(name)  # raises AccountNotFound
    if not yes:
        if not sys.stdin.isatty():
            raise SecretUnavailable(f"removing {name!r} needs confirmation: pass --yes")
        click.confirm(f"Delete {path}? The key cannot be recovered without a backup",
                      abort=True, err=True)
    removed = ks.remove(name)
    emit(as_json, {"name": name, "removed": str(removed)}, f"removed account {name!r} ({removed})")


def resolve_address(settings: Settings, name_or_address: str) -> str:
    """An address given as such, or the address of a stored account name."""
    from eth_utils import is_hex_address, to_checksum_address

    if name_or_address.startswith("0x"):
        if not is_hex_address(name_or_address):
            raise BadSecret(f"{name_or_address!r} is not a 20-byte hex address")
        return str(to_checksum_address(name_or_address))
    return open_keystore(settings).address(name_or_address)
