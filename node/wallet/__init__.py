"""The operator's and client's wallet: named Web3 Secret Storage v3 keystores and their CLI.

`Keystore` (in `node.wallet.keystore`) stores one scrypt-encrypted file per account, compatible
with geth and foundry; `node.wallet.passwords` gets passwords from a file or a TTY prompt (never
argv or the environment); `node.wallet.messages` signs and recovers EIP-191 personal messages;
`node.wallet.cli` is `veriplex wallet ...`. Errors form the tree in `node.wallet.errors`, rooted
at `WalletError`.
"""

from node.wallet.errors import (
    AccountExists,
    AccountNotFound,
    BadAccountName,
    BadSecret,
    CorruptKeystore,
    SecretUnavailable,
    WalletError,
    WrongPassword,
)
from node.wallet.keystore import AccountEntry, Keystore

__all__ = [
    "AccountEntry",
    "AccountExists",
    "AccountNotFound",
    "BadAccountName",
    "BadSecret",
    "CorruptKeystore",
    "Keystore",
    "SecretUnavailable",
    "WalletError",
    "WrongPassword",
]
