"""Chain helpers every test and bench shares: amounts and dev-chain block production."""

from __future__ import annotations

from typing import Any

ETH = 10**18  # wei per ether


def mine(chain: Any, blocks: int) -> None:
    """Advance a dev node (anvil or the devnet) by `blocks` empty blocks; `chain` is a
    `contracts.client.Chain` (or anything with its `.rpc`)."""
    chain.rpc.mine(blocks)
