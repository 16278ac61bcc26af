"""`registry_changed`: the coordinator's loop learns from the NodeRegistry's own events (a real
devnet) that a node was slashed, jailed, unbonded or registered since the block it last read, so
it re-reads the registry at once instead of at the next poll; other transactions do not count."""

from __future__ import annotations

from eth_account import Account

from contracts.client import Chain, dev_key
from contracts.node_registry import Hardware
from contracts.rpc import Signer
from devnet.process import running_devnet
from protocol.settings import DEV_MNEMONIC
from scheduler.service.chain_io import read_nodes, registry_changed

ETH = 10**18


def test_registry_events_since_a_block_are_seen_and_other_transactions_are_not(tmp_path) -> None:
    with running_devnet(tmp_path / "devnet") as dn:
        owner = Signer.from_key(dev_key(3, DEV_MNEMONIC))
        chain = Chain.connect(dn.url, dn.manifest_path, signer=owner)
        head = chain.block_number()
        assert registry_changed(chain, head) == (head, False)
        chain.transfer(Account.create().address, 1)  # a block without registry events
        later, changed = registry_changed(chain, head)
        assert later == head + 1 and not changed
        op = Account.create().address
        chain.node_registry.register(op, "http://127.0.0.1:9", Hardware(
            "CPU", 4096, 1000, 10, 100, "local"), 2 * ETH)
        now, changed = registry_changed(chain, later)
        assert changed and now > later
        assert op in {n.operator for n in read_nodes(chain)}
        chain.node_registry.request_unbond(ETH)  # 1 ETH left (the minimum), but on its way out
        assert registry_changed(chain, now)[1]
        assert op not in {n.operator for n in read_nodes(chain)}  # unbonding: not scheduled
