"""The Python client against real nodes (anvil and the devnet): deploy, manifest, transactions,
reverts, events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.client import Chain
from contracts.errors import (
    ManifestError,
    RegistryRevert,
    Revert,
    RpcUnreachable,
)
from contracts.manifest import Manifest, manifest_is_live
from contracts.node_registry import Hardware
from tests.support.chain import ETH
from tests.support.contracts import dev_signer, fresh

HW = Hardware("NVIDIA H100", 81_559, 989_000, 3_350, 100_000, "eu-west")


def test_manifest_records_chain_id_deployer_and_code_addresses(deployed, deployer):
    url, path = deployed
    m = Manifest.load(path)
    data = json.loads(path.read_text())
    assert data["chain_id"] == Chain.connect(url, path).chain_id == m.chain_id
    assert m.deployer == deployer.address
    assert set(m.contracts) >= {"NodeRegistry"}
    assert all(len(d.artifact_hash) == 64 for d in m.contracts.values())
    assert manifest_is_live(url, path)


def test_manifest_is_not_live_on_an_unreachable_node_or_missing_file(deployed, tmp_path):
    url, path = deployed
    assert not manifest_is_live("http://127.0.0.1:9", path)
    assert not manifest_is_live(url, tmp_path / "nope.json")


def test_manifest_with_an_address_without_code_is_not_live(deployed, tmp_path):
    url, path = deployed
    data = json.loads(path.read_text())
    data["contracts"]["NodeRegistry"]["address"] = "0x" + "11" * 20
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(data))
    assert not manifest_is_live(url, stale)
    with pytest.raises(ManifestError, match="no code"):
        Chain.connect(url, stale)


def test_connect_to_an_unreachable_node_raises_rpc_unreachable(deployed):
    _, path = deployed
    with pytest.raises(RpcUnreachable):
        Chain.connect("http://127.0.0.1:9", path)


def test_register_emits_event_and_view_returns_the_node(chain):
    owner, operator = fresh(chain), fresh(chain, 0)
    result = chain.node_registry.register(
        operator.address, "http://gpu1:9000", HW, 2 * ETH, sender=owner
    )
    ev = result.event("NodeRegistered")
    assert ev.args["owner"] == owner.address and ev.args["stake"] == 2 * ETH
    assert ev.args["hardware"]["gpu"] == "NVIDIA H100"
    info = chain.node_registry.node(owner.address)
    assert info.registered and info.operator == operator.address
    assert info.hardware == HW and info.stake_wei == 2 * ETH
    assert chain.node_registry.is_active(operator.address)
    assert chain.node_registry.node_of(operator.address) == owner.address
    assert [
        e.args["owner"] for e in chain.node_registry.events("NodeRegistered", owner=owner.address)
    ] == [owner.address]


def test_revert_reason_is_decoded_into_a_registry_revert(chain):
    owner, operator = fresh(chain), fresh(chain, 0)
    with pytest.raises(RegistryRevert) as exc:
        chain.node_registry.register(operator.address, "http://x", HW, 1, sender=owner)
    assert exc.value.reason == "registry: stake below minimum"
    assert exc.value.message == "stake below minimum"
    assert not chain.node_registry.node(owner.address).registered


def test_operator_key_cannot_withdraw_and_nonce_survives_a_revert(chain):
    owner, operator = fresh(chain), fresh(chain, 0)
    chain.node_registry.register(operator.address, "http://gpu5", HW, ETH, sender=owner)
    with pytest.raises(RegistryRevert, match="not registered"):
        chain.node_registry.request_unbond(ETH, sender=operator)
    chain.node_registry.request_unbond(ETH // 2, sender=owner)
    info = chain.node_registry.node(owner.address)
    assert info.unbonding_wei == ETH // 2 and info.stake_wei == ETH // 2
    assert not chain.node_registry.is_active(operator.address)


def test_deploy_writes_the_manifest_that_a_new_chain_object_reads(deployed, tmp_path: Path):
    url, path = deployed
    c = Chain.connect(url, path)
    assert c.node_registry.params().min_stake_wei == ETH
    assert c.node_registry.params().slasher == dev_signer(9).address


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(unbonding_period_blocks=15), r"unbonding_period_blocks \(15\) must exceed"),
        (dict(min_stake_wei=0), r"min_stake_wei \(0\) must be > 0"),
        (dict(protocol_fee_bps=9_500), r"must not exceed 10000"),
        (dict(prover_share_bps=10_000), r"prover_share_bps \(10000\) must be within 0..9999"),
    ],
)
def test_deploy_params_are_validated_with_the_values_quoted(kwargs, message):
    from contracts.deploy import DeployParams
    from contracts.errors import ContractsError

    with pytest.raises(ContractsError, match=message):
        DeployParams(**kwargs).validate()


def test_a_manifest_from_other_artifacts_is_refused_when_binding(deployed, tmp_path):
    url, path = deployed
    data = json.loads(path.read_text())
    data["contracts"]["Payments"]["artifact_hash"] = "ab" * 32
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    c = Chain.connect(url, other)
    assert c.node_registry.node_count() >= 0
    with pytest.raises(ManifestError, match="redeploy"):
        _ = c.payments


def test_a_manifest_for_another_chain_id_is_not_live(deployed, tmp_path):
    url, path = deployed
    data = json.loads(path.read_text())
    data["chain_id"] = 1
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    assert not manifest_is_live(url, other)
    with pytest.raises(ManifestError, match="manifest is for chain 1 but the node is chain"):
        Chain.connect(url, other)


def test_one_signer_keeps_separate_nonces_on_two_nodes(anvil_url, devnet_url):
    # Regression: the next nonce was cached on the Signer, so after transacting on one node the
    # signer's first transaction on another node carried a nonce from the first and never mined.
    from contracts.rpc import Rpc

    sender = dev_signer(8)
    receiver = "0x" + "77" * 20
    for url in (anvil_url, devnet_url, anvil_url, devnet_url):
        rpc = Rpc(url, receipt_timeout_s=10)
        before = rpc.balance(receiver)
        rpc.transact(sender, receiver, b"", 1, gas=21_000)
        assert rpc.balance(receiver) == before + 1


def test_a_transaction_mined_as_failed_raises_a_revert_with_its_reason(chain):
    # Sent with a fixed gas, so nothing is estimated first: the failure shows only on chain.
    reg = chain.node_registry
    stranger = fresh(chain)
    data = reg.contract.functions.request_unbond(1)._encode_transaction_data()
    with pytest.raises(RegistryRevert, match="registry: not registered"):
        chain.rpc.transact(stranger, reg.address, bytes.fromhex(data[2:]), gas=100_000)
    with pytest.raises(Revert, match="reverted"):
        chain.rpc.transact(stranger, reg.address, bytes.fromhex(data[2:]), gas=21_500)


def test_a_manifest_from_older_sources_is_not_live_so_the_devnet_redeploys(deployed, tmp_path):
    url, path = deployed
    data = json.loads(path.read_text())
    data["contracts"]["Scheduler"]["artifact_hash"] = "cd" * 32
    older = tmp_path / "older.json"
    older.write_text(json.dumps(data))
    assert manifest_is_live(url, older, check_code_version=False)
    assert not manifest_is_live(url, older)
    del data["contracts"]["Scheduler"]
    older.write_text(json.dumps(data))
    assert not manifest_is_live(url, older)
