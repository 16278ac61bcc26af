"""A whole money flow through the Python client on real nodes (anvil, devnet): model, nodes, epoch,
deposit, API key, batch settlement, refund with a proof, release, withdrawals."""

from __future__ import annotations

import time

import pytest

from contracts.apikeys import SignedApiKey, create_api_key
from contracts.batch import Pipeline, Record, Stage, leaves_of, merkle_root
from contracts.errors import PaymentsRevert, SchedulerRevert
from contracts.node_registry import Hardware
from contracts.scheduler import AllocationEntry
from tests.support.chain import ETH
from tests.support.contracts import dev_signer, fresh, mine

HW = Hardware("RTX 4090", 24_564, 82_600, 1_008, 10_000, "us-east")


def test_client_drives_epoch_settlement_refund_and_release(chain):
    admin, slasher = dev_signer(0), dev_signer(9)
    model_id = chain.model_registry.register_model(
        f"flow-{time.time_ns()}", 6, 128, b"\x01" * 32, b"\x02" * 32, 10**9, 2 * 10**9
    )
    m = chain.model_registry.model(model_id)
    assert m is not None and m.layers == 6 and m.charge(3, 2) == 7 * 10**9

    owners = [fresh(chain), fresh(chain)]
    operators = [fresh(chain, 0), fresh(chain, 0)]
    for o, op in zip(owners, operators, strict=True):
        chain.node_registry.register(op.address, "http://n", HW, ETH, sender=o)

    with pytest.raises(SchedulerRevert, match="no complete pipeline"):
        chain.scheduler.publish_epoch(
            [AllocationEntry(model_id, 0, 3, operators[0].address)], b"\x05" * 32
        )
    entries = [
        AllocationEntry(model_id, 3, 6, operators[1].address),
        AllocationEntry(model_id, 0, 3, operators[0].address),
    ]  # client sorts them
    epoch = chain.scheduler.publish_epoch(entries, b"\x05" * 32)
    assert chain.scheduler.current_assignment(operators[1].address).layer_start == 3
    assert sorted(chain.scheduler.epoch_entries(epoch)) == sorted(entries)

    client, gateway = fresh(chain), fresh(chain)
    chain.payments.bond_gateway(int(chain.payments.params()["min_gateway_bond"]), sender=gateway)
    chain.payments.deposit(2 * ETH, sender=client)
    signed = create_api_key(
        bytes(client.account.key),
        gateway.address,
        ETH,
        int(time.time()) + 3600,
        1,
        chain.chain_id,
        chain.payments.address,
    )
    token = signed.token()
    parsed = SignedApiKey.from_token(token)
    assert parsed == signed
    key = chain.payments.register_key(parsed, sender=gateway)
    assert key == signed.key_hash
    assert chain.payments.key_state(key).cap_wei == ETH

    pipeline = Pipeline(
        model_id, (Stage(operators[0].address, 0, 3), Stage(operators[1].address, 3, 6))
    )
    records = [
        Record(seq, 0, 0, 10 * seq, seq, m.charge(10 * seq, seq), bytes([seq]) * 32)
        for seq in range(1, 6)
    ]
    settled = chain.payments.settle_batch([key], [pipeline], records, sender=gateway)
    leaves = leaves_of(chain.chain_id, chain.payments.address, gateway.address, [key], records)
    assert settled.root == merkle_root([lf.hash() for lf in leaves])
    assert settled.request_ids == [lf.request_id for lf in leaves]
    assert chain.payments.batch_pipelines(settled.batch_id) == [pipeline]

    # a replayed record is skipped and reported (SKIP_SETTLED), never charged twice
    again = chain.payments.settle_batch([key], [pipeline], records[:1], sender=gateway)
    assert again.batch_id == 0 and again.skipped == [(records[0].seq, 5)]
    with pytest.raises(PaymentsRevert, match="verification window open"):
        chain.payments.release(settled.batch_id)

    deposit = chain.payments.deposit_of(client.address)
    chain.payments.refund(settled.batch_id, leaves[2], sender=slasher)
    assert chain.payments.deposit_of(client.address) == deposit + records[2].charge

    release_block = chain.payments.batch(settled.batch_id).release_block  # type: ignore[union-attr]
    mine(chain, max(0, release_block - chain.block_number() + 1))
    res = chain.payments.release(settled.batch_id)
    credited = {
        e.args["account"]: e.args["amount"] for e in res.events if e.name == "EarningsCredited"
    }
    assert set(credited) == {owners[0].address, owners[1].address}
    assert chain.payments.batch(settled.batch_id).released
    before = chain.balance(owners[1].address)
    receipt = chain.payments.withdraw(sender=owners[1])
    assert receipt.event("Withdrawn").args["amount"] == credited[owners[1].address]
    after = chain.balance(owners[1].address)
    assert after - before == credited[owners[1].address] - receipt.fee_wei
    assert admin.address == chain.manifest.deployer
