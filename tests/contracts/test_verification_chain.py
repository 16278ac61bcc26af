"""The Verification game through the Python client on real nodes (anvil, the embedded devnet):
a stage that served forged rows is sampled, judged by a stake-weighted committee that commits,
reveals and opens its evidence, slashed, and its client refunded; the batch is released after."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from contracts.apikeys import create_api_key
from contracts.batch import Pipeline, Record, Stage, leaves_of, merkle_proof
from contracts.client import Chain, dev_key
from contracts.deploy import DeployParams, deploy_all
from contracts.errors import ContractsError
from contracts.node_registry import Hardware
from contracts.verification import Opening, TaskStatus, VerificationParams, commitment_root
from protocol.messages import StageCommit
from protocol.settings import DEV_MNEMONIC
from tests.support.chain import ETH
from tests.support.contracts import fresh, mine
from verifier.encoding import Domain
from verifier.merkle import StageCommitment

HW = Hardware("RTX 4090", 24_564, 82_600, 1_008, 10_000, "us-east")
PARAMS = VerificationParams(
    sample_bps=10_000,
    committee_size=2,
    max_rounds=1,
    commit_blocks=10,
    reveal_blocks=10,
    open_blocks=10,
    randomness_delay=1,
    spot_chunks=2,
    stage_slash_wei=ETH // 2,
    verifier_slash_wei=ETH // 10,
    verifier_reward_wei=10**6,
)
T, D = 6, 64


@pytest.fixture(scope="module")
def game_chain(node_url: str, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    manifest = tmp_path_factory.mktemp("verification") / "manifest.json"
    deploy_all(
        node_url,
        dev_key(0, DEV_MNEMONIC),
        Path(manifest),
        DeployParams(
            verification_window_blocks=20, unbonding_period_blocks=40, verification=PARAMS
        ),
    )
    from tests.support.contracts import dev_signer

    return Chain.connect(node_url, manifest, signer=dev_signer(0))


def test_forged_stage_is_caught_slashed_and_refunded_on_a_real_node(game_chain):
    chain = game_chain
    ver = chain.verification
    assert chain.node_registry.params().slasher == ver.address
    assert chain.payments.params()["verification"] == ver.address
    assert ver.params() == PARAMS

    model_id = chain.model_registry.register_model(
        f"ver-{time.time_ns()}", 4, D, b"\x01" * 32, b"\x02" * 32, 10**9, 2 * 10**9
    )
    owners = [fresh(chain) for _ in range(4)]
    operators = [fresh(chain, 1) for _ in range(4)]
    for o, op in zip(owners, operators, strict=True):
        chain.node_registry.register(op.address, "http://n", HW, ETH, sender=o)
    pipeline = Pipeline(
        model_id, (Stage(operators[0].address, 0, 2), Stage(operators[1].address, 2, 4))
    )

    client, gateway = fresh(chain), fresh(chain)
    chain.payments.deposit(ETH, sender=client)
    signed = create_api_key(
        bytes(client.account.key),
        gateway.address,
        ETH,
        int(time.time()) + 3600,
        1,
        chain.chain_id,
        chain.payments.address,
    )
    key = chain.payments.register_key(signed, sender=gateway)
    chain.payments.bond_gateway(int(chain.payments.params()["min_gateway_bond"]), sender=gateway)

    # Both stages serve forged rows (so whichever stage is drawn is a cheat).
    from contracts.batch import request_id

    rid = request_id(chain.chain_id, chain.payments.address, gateway.address, 1)
    rng = np.random.default_rng(3)
    true_rows = [rng.standard_normal((T, D)).astype(np.float32) for _ in range(2)]
    tokens = [int(t) for t in rng.integers(0, 1000, T + 1)]  # L = T + 1 tokens, T positions
    claims = [
        StageCommitment.build(
            Domain(chain.chain_id, rid, j), r + rng.standard_normal(r.shape).astype(np.float32),
            tokens,
        )
        for j, r in enumerate(true_rows)
    ]
    sc = [StageCommit(c.root, T, D, T + 1) for c in claims]  # first and last stage: the tokens
    charge = 4 * 10**9 + 3 * 2 * 10**9
    record = Record(1, 0, 0, 4, 3, charge, commitment_root(sc))
    settled = chain.payments.settle_batch([key], [pipeline], [record], sender=gateway)
    leaf = leaves_of(chain.chain_id, chain.payments.address, gateway.address, [key], [record])[0]
    proof = merkle_proof([leaf.hash()], 0)
    deposit = chain.payments.deposit_of(client.address)

    mine(chain, 2)
    assert ver.is_sampled(settled.batch_id, rid)
    from coincurve import PrivateKey

    from contracts.verification import VerdictKind, attestation_digest
    from protocol.identity import sign_digest

    chosen = ver.stage_of(settled.batch_id, rid, 2)
    sig = sign_digest(PrivateKey(bytes(operators[chosen].account.key)),
                      attestation_digest(chain.chain_id, rid, chosen, sc[chosen]))
    task_id, tx = ver.open_task(settled.batch_id, leaf, proof, [pipeline], sc, sig, sender=client)
    opened = tx.event("TaskOpened").args
    assert (
        opened["request_id"] == rid and opened["stage_commit"]["root"] == sc[opened["stage"]].root
    )
    task = ver.task(task_id)
    assert task.status is TaskStatus.VOTING
    members = ver.committee(task_id)
    # excluded: the checked stage and its input stage only (issue 14: listing nodes as stages
    # cannot keep them off the committee)
    excluded = {operators[0].address} if task.stage == 0 else {operators[0].address,
                                                               operators[1].address}
    assert len(members) == 2 and not set(members) & excluded
    assert set(members) <= {op.address for op in operators}
    by_addr = {op.address: op for op in operators}
    stage = task.stage

    with pytest.raises(ContractsError, match="task already open"):
        ver.open_task(settled.batch_id, leaf, proof, [pipeline], sc, sig, sender=client)

    own, salts = {}, {}
    named = (0, 0)  # every value of the forged rows is off: the first leaf fails
    for m in members:
        own[m] = StageCommitment.build(Domain(chain.chain_id, rid, stage), true_rows[stage],
                                       tokens)
        salts[m] = os.urandom(32)
        ver.commit_verdict(task_id, VerdictKind.FAIL, own[m].root, salts[m], named,
                           sender=by_addr[m])
    for m in members:
        ver.reveal_verdict(task_id, VerdictKind.FAIL, own[m].root, salts[m], named,
                           sender=by_addr[m])
    ver.close_votes(task_id)
    mine(chain, 2)
    spots = ver.spot_checks(task_id)
    assert len(spots) == PARAMS.spot_chunks + 1  # the random spots, then the named leaf
    ver.open_chunks(
        task_id,
        task.stage_operator,
        [Opening.from_chunk(claims[stage].open_chunk(p, k)) for p, k in spots],
    )
    for m in members:
        ver.open_chunks(task_id, m, [Opening.from_chunk(own[m].open_chunk(p, k)) for p, k in spots])

    stake_before = chain.node_registry.node(task.stage_owner).stake_wei
    res = ver.finalize(task_id)
    assert res.event("TaskFinalized").args["status"] == TaskStatus.FRAUD
    assert (
        sum(e.args["amount"] for e in res.events if e.name == "StageSlashed")
        == PARAMS.stage_slash_wei
    )
    assert (
        chain.node_registry.node(task.stage_owner).stake_wei
        == stake_before - PARAMS.stage_slash_wei
    )

    # the conviction refunded the client and jailed the stage at once
    assert chain.payments.deposit_of(client.address) == deposit + charge
    assert not chain.node_registry.is_active(task.stage_operator)
    mine(chain, 60)
    chain.payments.release(settled.batch_id)
    assert chain.payments.batch(settled.batch_id).released
