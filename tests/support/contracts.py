"""Helpers of the contracts tests (moved out of their conftest: fixtures stay there)."""

from __future__ import annotations

from contracts.client import Chain, dev_key
from contracts.rpc import Signer
from protocol.settings import DEV_MNEMONIC
from tests.support.chain import mine  # noqa: F401  (re-exported to this package's tests)


def dev_signer(index: int) -> Signer:
    return Signer.from_key(dev_key(index, DEV_MNEMONIC))


def fresh(chain: Chain, eth: int = 10) -> Signer:
    """A new account funded by the deployer (works on any node, whatever its dev accounts)."""
    from eth_account import Account

    signer = Signer(Account.create())
    chain.transfer(signer.address, eth * 10**18)
    return signer
