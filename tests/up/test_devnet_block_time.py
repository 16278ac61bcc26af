"""A fresh devnet with timed blocks deploys its contracts: it mines while deploying (the deployment
used to wait forever for blocks the miner only started producing after it)."""

from __future__ import annotations

import time
from pathlib import Path

from contracts.client import Chain
from devnet.process import running_devnet


def test_a_devnet_with_half_second_blocks_deploys_and_keeps_mining(tmp_path: Path) -> None:
    with running_devnet(tmp_path, block_time=0.5, deploy=True) as dn:
        chain = Chain.connect(dn.url, dn.manifest_path)
        assert chain.rpc.w3.eth.get_code(chain.payments.address) != b""
        first = chain.block_number()
        time.sleep(1.5)
        assert chain.block_number() > first
