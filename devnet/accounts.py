"""Deterministic dev accounts: BIP-44 keys `m/44'/60'/0'/0/i` derived from a BIP-39 mnemonic.

With the default "test test ... junk" mnemonic these are the same accounts anvil and hardhat fund,
so scripts and tests work unchanged against either node.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from eth_account import Account
from eth_account.hdaccount import key_from_seed, seed_from_mnemonic


@dataclass(frozen=True)
class DevAccount:
    """One funded development account. `private_key` is 0x-hex; never log it."""

    address: str  # checksummed
    private_key: str

    def __repr__(self) -> str:  # keep keys out of logs and tracebacks
        return f"DevAccount(address={self.address!r})"


@lru_cache(maxsize=8)
def dev_accounts(mnemonic: str, n: int) -> tuple[DevAccount, ...]:
    """The first `n` accounts of `mnemonic` along m/44'/60'/0'/0/i."""
    if n < 1:
        raise ValueError(f"number of dev accounts ({n}) must be >= 1")
    seed = seed_from_mnemonic(mnemonic, "")
    out = []
    for i in range(n):
        key = key_from_seed(seed, f"m/44'/60'/0'/0/{i}")
        out.append(DevAccount(Account.from_key(key).address, "0x" + key.hex()))
    return tuple(out)
