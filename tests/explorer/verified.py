"""A paid request that goes through the Verification game on the devnet, for the explorer tests.

It follows tests/contracts/test_verification_chain.py: a second deployment whose Verification
samples every request with a 2-member committee; the request's stages served forged rows, so the
committee (honest) votes fail, opens its chunks, the stage is slashed and the client refunded."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from eth_account import Account

from contracts.apikeys import create_api_key
from contracts.batch import Pipeline, Record, Stage, leaves_of, merkle_proof, request_id
from contracts.client import Chain, dev_key
from contracts.deploy import DeployParams, deploy_all
from contracts.manifest import Manifest
from contracts.node_registry import Hardware
from contracts.rpc import Signer
from contracts.verification import Opening, VerificationParams, commitment_root
from protocol.messages import StageCommit
from protocol.settings import DEV_MNEMONIC
from tests.support.chain import ETH, mine
from verifier.encoding import Domain
from verifier.merkle import StageCommitment

PARAMS = VerificationParams(
    sample_bps=10_000, committee_size=2, max_rounds=1, commit_blocks=10, reveal_blocks=10,
    open_blocks=10, randomness_delay=1, spot_chunks=2, stage_slash_wei=ETH // 2,
    verifier_slash_wei=ETH // 10, verifier_reward_wei=10**6)
T, D = 6, 64


@dataclass(frozen=True)
class Verified:
    manifest: Manifest
    request_id: str
    task_id: int
    stage_owner: str
    stage_operator: str
    members: tuple[str, ...]
    charge: int
    stage_roots: tuple[str, ...]  # each stage's claimed commitment root, in stage order


def _fresh(chain: Chain, eth: int = 10) -> Signer:
    signer = Signer(Account.create())
    chain.transfer(signer.address, eth * ETH)
    return signer



def make_verified(url: str, workdir: Path) -> Verified:
    path = workdir / "verification-manifest.json"
    deploy_all(url, dev_key(0, DEV_MNEMONIC), path,
               DeployParams(verification_window_blocks=20, unbonding_period_blocks=40,
                            verification=PARAMS))
    chain = Chain.connect(url, path, signer=Signer.from_key(dev_key(0, DEV_MNEMONIC)))
    ver = chain.verification
    model_id = chain.model_registry.register_model(
        f"ver-{time.time_ns()}", 4, D, b"\x01" * 32, b"\x02" * 32, 10**9, 2 * 10**9)
    owners = [_fresh(chain) for _ in range(4)]
    operators = [_fresh(chain, 1) for _ in range(4)]
    hw = Hardware("RTX 4090", 24_564, 82_600, 1_008, 10_000, "us-east")
    for o, op in zip(owners, operators, strict=True):
        chain.node_registry.register(op.address, "http://n", hw, ETH, sender=o)
    pipeline = Pipeline(model_id, (Stage(operators[0].address, 0, 2),
                                   Stage(operators[1].address, 2, 4)))
    client, gateway = _fresh(chain), _fresh(chain)
    chain.payments.deposit(ETH, sender=client)
    signed = create_api_key(bytes(client.account.key), gateway.address, ETH,
                            int(time.time()) + 3600, 1, chain.chain_id, chain.payments.address)
    key = chain.payments.register_key(signed, sender=gateway)
    rid = request_id(chain.chain_id, chain.payments.address, gateway.address, 1)
    rng = np.random.default_rng(3)
    true_rows = [rng.standard_normal((T, D)).astype(np.float32) for _ in range(2)]
    claims = [StageCommitment.build(Domain(chain.chain_id, rid, j),
                                    r + rng.standard_normal(r.shape).astype(np.float32))
              for j, r in enumerate(true_rows)]  # both stages forged: whichever is drawn cheated
    sc = [StageCommit(c.root, T, D) for c in claims]
    charge = 50 * 10**9 + 10 * 2 * 10**9
    record = Record(1, 0, 0, 50, 10, charge, commitment_root(sc))
    settled = chain.payments.settle_batch([key], [pipeline], [record], sender=gateway)
    leaf = leaves_of(chain.chain_id, chain.payments.address, gateway.address, [key], [record])[0]
    proof = merkle_proof([leaf.hash()], 0)
    mine(chain, 2)
    task_id, _ = ver.open_task(settled.batch_id, leaf, proof, [pipeline], sc, sender=client)
    task = ver.task(task_id)
    members = ver.committee(task_id)
    by_addr = {op.address: op for op in operators}
    own = {m: StageCommitment.build(Domain(chain.chain_id, rid, task.stage), true_rows[task.stage])
           for m in members}
    salts = {m: os.urandom(32) for m in members}
    for m in members:
        ver.commit_verdict(task_id, False, own[m].root, salts[m], sender=by_addr[m])
    for m in members:
        ver.reveal_verdict(task_id, False, own[m].root, salts[m], sender=by_addr[m])
    ver.close_votes(task_id)
    mine(chain, 2)
    spots = ver.spot_checks(task_id)
    ver.open_chunks(task_id, task.stage_operator,
                    [Opening.from_chunk(claims[task.stage].open_chunk(p, k)) for p, k in spots])
    for m in members:
        ver.open_chunks(task_id, m, [Opening.from_chunk(own[m].open_chunk(p, k)) for p, k in spots])
    ver.finalize(task_id)
    mine(chain, 20)
    ver.refund_client(task_id, proof)
    chain.payments.release(settled.batch_id)
    return Verified(Manifest.load(path), "0x" + rid.hex(), task_id, task.stage_owner.lower(),
                    task.stage_operator.lower(),
                    tuple(m.lower() for m in members), charge,
                    tuple("0x" + c.root.hex() for c in claims))
