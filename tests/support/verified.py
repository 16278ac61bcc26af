"""A paid request that goes through the Verification game on the devnet, for the explorer tests.

It follows the game's rules (tests/support/game.py, here through the Python client
on a real devnet): a second deployment whose TaskOpener samples every request; a bonded gateway
settles a record whose stages committed (and signed) forged rows; the chosen stage's signature
opens the task; the committee (honest) names a failing leaf and votes FAIL, every party opens the
drawn leaves, the stage is slashed and the client refunded."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from coincurve import PrivateKey
from eth_account import Account

from contracts.apikeys import create_api_key
from contracts.batch import Pipeline, Record, Stage, leaves_of, merkle_proof, request_id
from contracts.client import Chain, dev_key
from contracts.deploy import DeployParams, deploy_all
from contracts.manifest import Manifest
from contracts.node_registry import Hardware
from contracts.rpc import Signer
from contracts.verification import (
    VerdictKind,
    VerificationParams,
    attestation_digest,
    commitment_root,
)
from protocol.identity import sign_digest
from protocol.messages import StageCommit
from protocol.settings import DEV_MNEMONIC
from tests.support.evidence import failing_leaf, openings
from verifier.encoding import Domain
from verifier.merkle import StageCommitment

ETH = 10**18
PARAMS = VerificationParams(
    sample_bps=10_000, committee_size=2, max_rounds=1, commit_blocks=10, reveal_blocks=10,
    open_blocks=10, randomness_delay=1, spot_chunks=2, stage_slash_wei=ETH // 2,
    verifier_slash_wei=ETH // 10, verifier_reward_wei=10**6, gateway_slash_wei=ETH // 10,
    open_task_blocks=20, seat_stake_wei=ETH, jail_blocks=100, suspect_threshold=2)
TOKENS_IN, TOKENS_OUT, D = 4, 3, 64
L = TOKENS_IN + TOKENS_OUT
PRICE_IN, PRICE_OUT = 10**9, 2 * 10**9


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


def _mine(chain: Chain, blocks: int) -> None:
    chain.w3.provider.make_request("evm_mine", [{"blocks": hex(blocks)}])


def make_verified(url: str, workdir: Path) -> Verified:
    path = workdir / "verification-manifest.json"
    deploy_all(url, dev_key(0, DEV_MNEMONIC), path,
               DeployParams(verification_window_blocks=40, unbonding_period_blocks=200,
                            verification=PARAMS))
    chain = Chain.connect(url, path, signer=Signer.from_key(dev_key(0, DEV_MNEMONIC)),
                          timeout_s=120)  # finalize is heavy: its gas estimate is slow in py-evm
    ver = chain.verification
    model_id = chain.model_registry.register_model(
        f"ver-{time.time_ns()}", 4, D, b"\x01" * 32, b"\x02" * 32, PRICE_IN, PRICE_OUT)
    owners = [_fresh(chain) for _ in range(4)]
    operators = [_fresh(chain, 1) for _ in range(4)]
    hw = Hardware("RTX 4090", 24_564, 82_600, 1_008, 10_000, "us-east")
    for o, op in zip(owners, operators, strict=True):
        chain.node_registry.register(op.address, "http://n", hw, ETH, sender=o)
    pipeline = Pipeline(model_id, (Stage(operators[0].address, 0, 2),
                                   Stage(operators[1].address, 2, 4)))
    client, gateway = _fresh(chain), _fresh(chain)
    chain.payments.bond_gateway(int(chain.payments.params()["min_gateway_bond"]), sender=gateway)
    chain.payments.deposit(ETH, sender=client)
    signed = create_api_key(bytes(client.account.key), gateway.address, ETH,
                            int(time.time()) + 3600, 1, chain.chain_id, chain.payments.address)
    key = chain.payments.register_key(signed, sender=gateway)
    rid = request_id(chain.chain_id, chain.payments.address, gateway.address, 1)
    rng = np.random.default_rng(3)
    toks = [int(t) for t in rng.integers(0, 50_000, size=L)]
    true_rows = [rng.standard_normal((L - 1, D)).astype(np.float32) for _ in range(2)]
    claims, truths, scs = [], [], []
    for j, r in enumerate(true_rows):  # both stages forged: whichever is drawn cheated
        forged = r + 0.5 * rng.standard_normal(r.shape).astype(np.float32)
        claims.append(StageCommitment.build(Domain(chain.chain_id, rid, j), forged, toks))
        truths.append(StageCommitment.build(Domain(chain.chain_id, rid, j), r, toks))
        scs.append(StageCommit(claims[-1].root, L - 1, D, L))
    charge = TOKENS_IN * PRICE_IN + TOKENS_OUT * PRICE_OUT
    record = Record(1, 0, 0, TOKENS_IN, TOKENS_OUT, charge, commitment_root(scs))
    settled = chain.payments.settle_batch([key], [pipeline], [record], sender=gateway)
    leaf = leaves_of(chain.chain_id, chain.payments.address, gateway.address, [key], [record])[0]
    proof = merkle_proof([leaf.hash()], 0)
    _mine(chain, PARAMS.randomness_delay + 1)  # the batch's randomness is a later block's
    stage = int(ver.opener()._view("stage_of", settled.batch_id, rid, 2))
    op_key = PrivateKey(bytes(operators[stage].account.key))
    sig = sign_digest(op_key, attestation_digest(chain.chain_id, rid, stage, scs[stage]))
    task_id, _ = ver.open_task(settled.batch_id, leaf, proof, [pipeline], scs, sig,
                               sender=client)
    task = ver.task(task_id)
    members = ver.committee(task_id)
    by_addr = {op.address: op for op in operators}
    named = failing_leaf(claims[stage], truths[stage], PARAMS)
    salts = {m: os.urandom(32) for m in members}
    for m in members:
        ver.commit_verdict(task_id, VerdictKind.FAIL, truths[stage].root, salts[m], named,
                           sender=by_addr[m])
    for m in members:
        ver.reveal_verdict(task_id, VerdictKind.FAIL, truths[stage].root, salts[m], named,
                           sender=by_addr[m])
    ver.close_votes(task_id)
    _mine(chain, PARAMS.randomness_delay + 1)
    spots = ver.spot_checks(task_id)
    ver.open_chunks(task_id, task.stage_operator, openings(claims[stage], spots))
    for m in members:
        ver.open_chunks(task_id, m, openings(truths[stage], spots))
    ver.finalize(task_id)  # convicts: slashes and jails the stage, refunds the client
    _mine(chain, 45)  # past the verification window
    chain.payments.release(settled.batch_id)
    return Verified(Manifest.load(path), "0x" + rid.hex(), task_id, task.stage_owner.lower(),
                    task.stage_operator.lower(), tuple(m.lower() for m in members), charge,
                    tuple("0x" + c.root.hex() for c in claims))
