"""Helpers of the up tests (moved out of their conftest: fixtures stay there)."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from eth_account import Account

from contracts.apikeys import create_api_key
from contracts.client import Chain, dev_key
from contracts.rpc import Signer
from protocol.settings import DEV_MNEMONIC
from tests.support.chain import ETH


def paying_client(rpc_url: str, manifest: Path, gateway: str) -> str:
    """A fresh account funded by a dev account, with a deposit and an API key for `gateway`."""
    key = "0x" + secrets.token_hex(32)
    funder = Chain.connect(rpc_url, manifest, signer=Signer.from_key(dev_key(8, DEV_MNEMONIC)))
    funder.transfer(Account.from_key(key).address, ETH)
    chain = Chain.connect(rpc_url, manifest, signer=Signer.from_key(key))
    chain.payments.deposit(ETH // 10)
    signed = create_api_key(key, gateway, ETH // 20, int(time.time()) + 3600, 1, chain.chain_id,
                            chain.payments.address)
    chain.payments.register_key(signed)
    return signed.token()
