"""Named accounts stored as Web3 Secret Storage v3 keystore files (scrypt), one file per account.

The directory holds `<name>.json` files in the exact format geth, foundry (`cast wallet`) and
eth-account read and write, so a file can be copied in or out and used by any of them. Files are
created 0600 inside a 0700 directory, written to a temporary file first and then linked or renamed
into place, so a crash or a concurrent writer never leaves half a keystore or overwrites another
account. Private keys exist in memory only between `unlock` and the caller's use; nothing here
prints, logs or stores them unencrypted.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_keyfile.exceptions import EthKeyfileException
from eth_utils import is_hex_address, to_checksum_address

from node.wallet.errors import (
    AccountExists,
    AccountNotFound,
    BadAccountName,
    BadSecret,
    CorruptKeystore,
    WrongPassword,
)

SUFFIX = ".json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Ceilings on a keystore's key-derivation cost: 16x geth's standard scrypt (n=2^18, r=8: 256 MiB)
# still opens; a hostile file cannot make an unlock eat the machine.
MAX_SCRYPT_MEMORY = 4 * 2**30
MAX_SCRYPT_WORK = 2**18 * 8 * 16
MAX_PBKDF2_ROUNDS = 10_000_000
FILE_MODE = 0o600
DIR_MODE = 0o700


def check_name(name: str) -> str:
    """Return `name` if it can name an account (and a file), else raise `BadAccountName`."""
    if not NAME_RE.fullmatch(name) or name.endswith(SUFFIX) or name.lower().startswith("0x"):
        raise BadAccountName(
            f"invalid account name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit (not 0x: that reads as an address)"
        )
    return name


@dataclass(frozen=True)
class AccountEntry:
    """What can be known about a stored account without its password."""

    name: str
    address: str | None  # None when the file has no (valid) "address" field
    path: Path
    kdf: str
    kdf_params: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "path": str(self.path),
                "kdf": self.kdf, "kdf_params": self.kdf_params}


def parse_keystore(text: str, source: str) -> dict[str, Any]:
    """Parse and structurally check v3 keystore JSON; raise `CorruptKeystore` naming `source`."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CorruptKeystore(f"{source} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise CorruptKeystore(f"{source} is not a keystore (a JSON object was expected)")
    keys = {str(k).lower(): v for k, v in data.items()}
    if keys.get("version") != 3:
        raise CorruptKeystore(
            f"{source} is not a Web3 Secret Storage v3 keystore (version {keys.get('version')!r})"
        )
    crypto = keys.get("crypto")
    required = ("cipher", "ciphertext", "cipherparams", "kdf", "kdfparams", "mac")
    if not isinstance(crypto, dict) or any(k not in crypto for k in required):
        raise CorruptKeystore(f"{source} lacks the crypto fields of a v3 keystore")
    if crypto["kdf"] not in ("scrypt", "pbkdf2"):
        raise CorruptKeystore(f"{source} uses unsupported kdf {crypto['kdf']!r}")
    if crypto["cipher"] != "aes-128-ctr":
        raise CorruptKeystore(f"{source} uses unsupported cipher {crypto['cipher']!r}")
    _check_kdf_cost(crypto["kdf"], crypto["kdfparams"], source)
    return data


def _check_kdf_cost(kdf: str, params: Any, source: str) -> None:
    """Refuse parameters that would take minutes or gigabytes to derive (a hostile file)."""
    if not isinstance(params, dict):
        raise CorruptKeystore(f"{source} has malformed kdfparams")
    try:
        if kdf == "scrypt":
            n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
            memory = 128 * n * r
            if n < 2 or n & (n - 1) or r < 1 or p < 1:
                raise CorruptKeystore(f"{source} has invalid scrypt parameters n={n} r={r} p={p}")
            if memory > MAX_SCRYPT_MEMORY or n * r * p > MAX_SCRYPT_WORK:
                raise CorruptKeystore(
                    f"{source} asks for scrypt n={n} r={r} p={p} "
                    f"({memory // 2**20} MiB): beyond what this wallet will derive"
                )
        else:
            c = int(params["c"])
            if not 1 <= c <= MAX_PBKDF2_ROUNDS:
                raise CorruptKeystore(f"{source} asks for {c} pbkdf2 rounds "
                                      f"(1..{MAX_PBKDF2_ROUNDS} accepted)")
    except (KeyError, TypeError, ValueError):
        raise CorruptKeystore(f"{source} has malformed {kdf} parameters") from None


def _address_of(data: dict[str, Any]) -> str | None:
    raw = data.get("address")
    if not isinstance(raw, str):
        return None
    candidate = raw if raw.startswith("0x") else "0x" + raw
    return to_checksum_address(candidate) if is_hex_address(candidate) else None


def decrypt(data: dict[str, Any], password: str, source: str) -> LocalAccount:
    """Open a parsed keystore; `WrongPassword` on a MAC mismatch, `CorruptKeystore` otherwise."""
    try:
        key = Account.decrypt(data, password)
    except EthKeyfileException as exc:
        if "MAC mismatch" in str(exc):
            raise WrongPassword(f"wrong password for {source}") from None
        raise CorruptKeystore(f"{source} cannot be decrypted: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        if "MAC mismatch" in str(exc):
            raise WrongPassword(f"wrong password for {source}") from None
        raise CorruptKeystore(f"{source} cannot be decrypted: {type(exc).__name__}") from None
    try:
        account: LocalAccount = Account.from_key(key)
    except ValueError:
        raise CorruptKeystore(f"{source} holds an invalid private key") from None
    stored = _address_of(data)
    if stored is not None and stored != account.address:
        raise CorruptKeystore(
            f"{source} says address {stored} but its key is for {account.address}"
        )
    return account


def parse_private_key(text: str) -> bytes:
    """32-byte key from hex text (with or without 0x, surrounding whitespace ignored)."""
    raw = text.strip().removeprefix("0x").removeprefix("0X")
    if len(raw) != 64 or not re.fullmatch(r"[0-9a-fA-F]{64}", raw):
        raise BadSecret("a private key must be 64 hex digits (optionally 0x-prefixed)")
    key = bytes.fromhex(raw)
    try:
        Account.from_key(key)
    except ValueError:
        raise BadSecret("the private key is out of range for secp256k1") from None
    return key


class Keystore:
    """The keystore directory: create, import, list, unlock, re-encrypt and remove accounts."""

    def __init__(self, directory: Path, scrypt_n: int = 2**18) -> None:
        self.directory = Path(directory).expanduser()
        self.scrypt_n = scrypt_n

    # -------------------------------------------------------------- reading
    def path(self, name: str) -> Path:
        return self.directory / f"{check_name(name)}{SUFFIX}"

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in self.directory.glob(f"*{SUFFIX}")
                      if p.is_file() and NAME_RE.fullmatch(p.name[: -len(SUFFIX)]))

    def _load(self, name: str) -> tuple[Path, dict[str, Any]]:
        path = self.path(name)
        try:
            text = path.read_text()
        except FileNotFoundError:
            known = ", ".join(self.names()) or "none"
            raise AccountNotFound(
                f"no account named {name!r} in {self.directory} (accounts: {known})"
            ) from None
        except OSError as exc:
            raise CorruptKeystore(f"cannot read {path}: {exc.strerror}") from None
        return path, parse_keystore(text, f"account {name!r} ({path})")

    def entry(self, name: str) -> AccountEntry:
        path, data = self._load(name)
        crypto = {str(k).lower(): v for k, v in data.items()}["crypto"]
        params = {k: v for k, v in crypto["kdfparams"].items() if k != "salt"}
        return AccountEntry(name, _address_of(data), path, str(crypto["kdf"]), params)

    def entries(self) -> tuple[list[AccountEntry], list[tuple[str, str]]]:
        """Readable accounts, and (name, problem) for files that are not valid keystores."""
        good, bad = [], []
        for name in self.names():
            try:
                good.append(self.entry(name))
            except (CorruptKeystore, AccountNotFound) as exc:
                bad.append((name, str(exc)))
        return good, bad

    def find_address(self, address: str) -> str | None:
        """Name of the stored account with `address`, if any."""
        target = to_checksum_address(address)
        for entry in self.entries()[0]:
            if entry.address == target:
                return entry.name
        return None

    def address(self, name: str) -> str:
        """Address of `name` from its file (no password needed)."""
        entry = self.entry(name)
        if entry.address is None:
            raise CorruptKeystore(
                f"account {name!r} ({entry.path}) has no address field; import the file with "
                f"`veriplex wallet import NAME --keystore FILE` to record it"
            )
        return entry.address

    def unlock(self, name: str, password: str) -> LocalAccount:
        path, data = self._load(name)
        return decrypt(data, password, f"account {name!r}")

    # -------------------------------------------------------------- writing
    def create(self, name: str, password: str) -> AccountEntry:
        """A new random key, encrypted under `password`."""
        check_name(name)
        self.check_free(name)
        account = Account.create()
        return self._store_new(name, bytes(account.key), password)

    def import_key(self, name: str, private_key: bytes, password: str) -> AccountEntry:
        """Store an existing raw key under `name`, encrypted under `password`."""
        check_name(name)
        self.check_free(name, Account.from_key(private_key).address)
        return self._store_new(name, private_key, password)

    def import_keystore(self, name: str, text: str, password: str, source: str) -> AccountEntry:
        """Store a copy of an existing v3 keystore (geth, foundry, eth-account) after checking
        that `password` opens it; its encryption is kept, the address field is filled in."""
        check_name(name)
        data = parse_keystore(text, source)
        account = decrypt(data, password, source)
        self.check_free(name, account.address)
        data["address"] = account.address[2:].lower()
        self._write(self.path(name), json.dumps(data), replace=False)
        return self.entry(name)

    def change_password(self, name: str, old: str, new: str) -> AccountEntry:
        """Re-encrypt `name` under `new` (fresh salt and IV, this keystore's scrypt N)."""
        path, data = self._load(name)
        account = decrypt(data, old, f"account {name!r}")
        self._write(path, json.dumps(self._encrypt(bytes(account.key), new)), replace=True)
        return self.entry(name)

    def remove(self, name: str) -> Path:
        """Delete the file of `name` (also when it is not a valid keystore: it is useless)."""
        path = self.path(name)
        if not path.is_file():
            raise AccountNotFound(f"no account named {name!r} in {self.directory}")
        path.unlink()
        return path

    # -------------------------------------------------------------- internals
    def check_free(self, name: str, address: str | None = None) -> None:
        if self.path(name).exists():
            raise AccountExists(f"an account named {name!r} already exists in {self.directory}")
        if address is not None:
            other = self.find_address(address)
            if other is not None:
                raise AccountExists(f"address {address} is already stored as account {other!r}")

    def _encrypt(self, key: bytes, password: str) -> dict[str, Any]:
        data = dict(Account.encrypt(key, password, kdf="scrypt", iterations=self.scrypt_n))
        data["address"] = Account.from_key(key).address[2:].lower()  # as geth writes it
        return data

    def _store_new(self, name: str, key: bytes, password: str) -> AccountEntry:
        self._write(self.path(name), json.dumps(self._encrypt(key, password)), replace=False)
        return self.entry(name)

    def _ensure_dir(self) -> None:
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        mode = stat.S_IMODE(self.directory.stat().st_mode)
        if mode & 0o077:
            os.chmod(self.directory, mode & ~0o077)

    def _write(self, path: Path, text: str, replace: bool) -> None:
        """Write atomically: a 0600 temporary file in the same directory, fsynced, then renamed
        over `path` (`replace`) or hard-linked to it (new files: fails if `path` appeared)."""
        self._ensure_dir()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise AccountExists(
                        f"an account named {path.name[: -len(SUFFIX)]!r} already exists"
                    ) from None
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
