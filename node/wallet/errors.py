"""The wallet's exception tree. Every error the wallet raises derives from `WalletError`:

    WalletError
    ├── BadAccountName       a name that cannot be a keystore file name
    ├── AccountNotFound      no keystore under that name
    ├── AccountExists        the name (or the key's address) is already stored
    ├── CorruptKeystore      a file that is not a Web3 Secret Storage v3 keystore
    ├── WrongPassword        the password does not open the keystore
    ├── SecretUnavailable    no password/key: no TTY and no file, empty, or confirmation mismatch
    └── BadSecret            a private key, message or signature that does not parse

Messages are one line, name the account or file, and never contain a secret.
"""

from __future__ import annotations


class WalletError(Exception):
    """Root of every error raised by `node.wallet`."""


class BadAccountName(WalletError):
    """The account name is empty, too long, or has characters unfit for a file name."""


class AccountNotFound(WalletError):
    """No keystore file holds an account of that name."""


class AccountExists(WalletError):
    """An account of that name, or with that address, is already in the keystore directory."""


class CorruptKeystore(WalletError):
    """The file is not valid Web3 Secret Storage v3 JSON."""


class WrongPassword(WalletError):
    """Decryption failed its MAC check: the password is wrong."""


class SecretUnavailable(WalletError):
    """A password or key could not be obtained (no TTY, no file, empty, or not confirmed)."""


class BadSecret(WalletError):
    """A private key, message or signature is malformed."""
