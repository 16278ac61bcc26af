"""Settled requests with signed stage commitments on a real devnet, for the audit tests.

`World` is one deployment whose Verification samples every request with a 2-member committee, a
registered model, four staked nodes (two serve the pipeline, two can verify), a funded client and
a gateway with the client's API key. `settle` puts a batch of records on chain whose stage
commitments are `StageCommitment.build` over random rows (first and last stage also commit the
token sequence, as the data plane does), each attested by its stage operator with
`attestation_digest`, and returns the gateway receipts (session spec §2) for them. `play` runs a
record's verification task to its end under the game's rules (the chosen stage's signature opens
it): honest members vote PASS (PASSED) or, when the stage forged its rows, FAIL naming a failing
leaf (FRAUD: the stage is slashed and jailed and the client refunded at finalize).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from coincurve import PrivateKey
from eth_account import Account

from contracts.apikeys import create_api_key
from contracts.batch import Leaf, Pipeline, Record, Stage, leaves_of, merkle_proof, request_id
from contracts.client import Chain
from contracts.node_registry import Hardware
from contracts.rpc import Signer
from contracts.verification import (
    TaskStatus,
    VerdictKind,
    VerificationParams,
    attestation_digest,
    commitment_root,
)
from protocol.identity import sign_digest
from protocol.messages import StageCommit
from tests.support.chain import ETH, mine
from tests.support.evidence import failing_leaf, openings
from verifier.encoding import Domain
from verifier.merkle import StageCommitment

PARAMS = VerificationParams(
    sample_bps=10_000, committee_size=2, max_rounds=1, commit_blocks=10, reveal_blocks=10,
    open_blocks=10, randomness_delay=1, spot_chunks=2, stage_slash_wei=ETH // 2,
    verifier_slash_wei=ETH // 10, verifier_reward_wei=10**6, gateway_slash_wei=ETH // 10,
    open_task_blocks=20, seat_stake_wei=ETH, jail_blocks=100)
WINDOW = 20  # verification window (blocks)
D = 64  # hidden size of the fake model
LAYERS = ((0, 2), (2, 4))


@dataclass
class Plane:
    """The tiny model served by a 2-stage data plane whose operators are registered nodes."""

    dp: Any  # tests.support.gateway.DataPlane
    model: Path
    info: Any  # contracts.model_registry.ModelInfo
    service_gateway: Signer  # a second gateway (the Gateway service's), trusted by the stages


def fresh(chain: Chain, eth: int = 10) -> Signer:
    signer = Signer(Account.create())
    chain.transfer(signer.address, eth * ETH)
    return signer



@dataclass
class World:
    chain: Chain  # signer: the deployer
    manifest: Path
    model_id: int
    operators: list[Signer]  # [0], [1] serve the pipeline; [2], [3] verify
    client: Signer
    gateway: Signer
    key_hash: bytes
    seq: int = 0

    @property
    def pipeline(self) -> Pipeline:
        return Pipeline(self.model_id, tuple(Stage(self.operators[j].address, a, b)
                                             for j, (a, b) in enumerate(LAYERS)))


def make_world(chain: Chain, manifest: Path) -> World:
    model_id = chain.model_registry.register_model(
        f"audit-{time.time_ns()}", 4, D, b"\x01" * 32, b"\x02" * 32, 10**9, 2 * 10**9)
    owners = [fresh(chain) for _ in range(4)]
    operators = [fresh(chain, 1) for _ in range(4)]
    hw = Hardware("RTX 4090", 24_564, 82_600, 1_008, 10_000, "us-east")
    for o, op in zip(owners, operators, strict=True):
        chain.node_registry.register(op.address, "http://n", hw, ETH, sender=o)
    client, gateway = fresh(chain), fresh(chain)
    chain.payments.bond_gateway(int(chain.payments.params()["min_gateway_bond"]), sender=gateway)
    chain.payments.deposit(5 * ETH, sender=client)
    signed = create_api_key(bytes(client.account.key), gateway.address, 5 * ETH,
                            int(time.time()) + 3600, 1, chain.chain_id, chain.payments.address)
    key = chain.payments.register_key(signed, sender=gateway)
    return World(chain, manifest, model_id, operators, client, gateway, key)


@dataclass
class Served:
    """One settled request: what each stage computed and committed, and its gateway receipt."""

    seq: int
    rid: bytes
    tokens: list[int]  # the final sequence
    true_rows: list[np.ndarray]  # per stage (P, D)
    claims: list[StageCommitment]  # what each stage committed
    record: Record
    leaf: Leaf
    receipt: dict[str, Any]


@dataclass
class Batch:
    batch_id: int
    served: list[Served]
    proofs: list[list[bytes]]
    pipeline: Pipeline


def _commit(world: World, rid: bytes, rows: list[np.ndarray], tokens: list[int]) \
        -> list[StageCommitment]:
    n = len(rows)
    return [StageCommitment.build(Domain(world.chain.chain_id, rid, j), r,
                                  tokens if j in (0, n - 1) else ())
            for j, r in enumerate(rows)]


def settle(world: World, n: int = 3, forged: bool = False, seed: int = 0) -> Batch:
    """Settle `n` requests in one batch; with `forged` every stage commits perturbed rows."""
    chain = world.chain
    rng = np.random.default_rng(seed)
    pipe = world.pipeline
    served = []
    for _ in range(n):
        world.seq += 1
        rid = request_id(chain.chain_id, chain.payments.address, world.gateway.address, world.seq)
        tin, tout = int(rng.integers(3, 8)), int(rng.integers(2, 6))
        tokens = [int(t) for t in rng.integers(0, 1000, tin + tout)]
        positions = len(tokens) - 1
        true_rows = [rng.standard_normal((positions, D)).astype(np.float32) for _ in LAYERS]
        claimed = [r + rng.standard_normal(r.shape).astype(np.float32) if forged else r
                   for r in true_rows]
        claims = _commit(world, rid, claimed, tokens)
        sc = [StageCommit(c.root, c.shape.positions, c.shape.hidden_size, c.shape.n_tokens)
              for c in claims]
        charge = tin * 10**9 + tout * 2 * 10**9
        record = Record(world.seq, 0, 0, tin, tout, charge, commitment_root(sc))
        leaf = leaves_of(chain.chain_id, chain.payments.address, world.gateway.address,
                         [world.key_hash], [record])[0]
        commitments = []
        for j, (c, st) in enumerate(zip(sc, pipe.stages, strict=True)):
            key = PrivateKey(bytes(world.operators[j].account.key))
            sig = sign_digest(key, attestation_digest(chain.chain_id, rid, j, c))
            commitments.append({"stage": j, "operator": st.operator,
                                "layers": [st.layer_start, st.layer_end], "root": "0x" + c.root.hex(),
                                "positions": c.positions, "hidden_size": c.hidden_size,
                                "n_tokens": c.n_tokens, "signature": "0x" + sig.hex()})
        receipt = {
            "request_id": "0x" + rid.hex(), "seq": world.seq, "gateway": world.gateway.address,
            "chain_id": chain.chain_id, "payments": chain.payments.address,
            "pipeline": [{"operator": s.operator, "host": "127.0.0.1", "port": 9000 + j,
                          "layers": [s.layer_start, s.layer_end]}
                         for j, s in enumerate(pipe.stages)],
            "model": {"id": world.model_id, "name": "fake"},
            "tokens": {"prompt": tin, "completion": tout}, "charge_wei": str(charge),
            "commitment_root": "0x" + record.commitment_root.hex(),
            "commitment_roots": [c["root"] for c in commitments],
            "commitments": commitments,
        }
        served.append(Served(world.seq, rid, tokens, true_rows, claims, record, leaf, receipt))
    settled = chain.payments.settle_batch([world.key_hash], [pipe], [s.record for s in served],
                                          sender=world.gateway)
    hashes = [s.leaf.hash() for s in served]
    proofs = [merkle_proof(hashes, i) for i in range(n)]
    for i, s in enumerate(served):
        s.receipt.update({
            "batch": {"status": "settled", "batch_id": settled.batch_id},
            "batch_id": settled.batch_id, "leaf_index": i,
            "proof": ["0x" + p.hex() for p in proofs[i]],
            "pipelines": [{"model_id": pipe.model_id, "stages": [
                {"operator": st.operator, "layer_start": st.layer_start,
                 "layer_end": st.layer_end} for st in pipe.stages]}]})
    return Batch(settled.batch_id, served, proofs, pipe)


def play(world: World, batch: Batch, index: int,
         stage_keys: dict[str, PrivateKey] | None = None) -> tuple[int, TaskStatus]:
    """Open the record's task and run it to its end with honest members (they recompute the true
    rows): PASSED for an honest stage; FRAUD (slash, jail and refund at finalize) for a forged one.
    `stage_keys` (operator address → key) signs for stages that are not the world's operators."""
    chain = world.chain
    ver = chain.verification
    s = batch.served[index]
    mine(chain, PARAMS.randomness_delay + 1)
    sc = [StageCommit(c.root, c.shape.positions, c.shape.hidden_size, c.shape.n_tokens)
          for c in s.claims]
    stage = int(ver.opener()._view("stage_of", batch.batch_id, s.rid, len(sc)))
    operator = batch.pipeline.stages[stage].operator
    keys = stage_keys or {op.address: PrivateKey(bytes(op.account.key)) for op in world.operators}
    sig = sign_digest(keys[operator], attestation_digest(chain.chain_id, s.rid, stage, sc[stage]))
    task_id, _ = ver.open_task(batch.batch_id, s.leaf, batch.proofs[index], [batch.pipeline], sc,
                               sig, sender=world.client)
    task = ver.task(task_id)
    assert task is not None and task.stage == stage
    members = ver.committee(task_id)
    by_addr = {op.address: op for op in world.operators}
    truth = _commit(world, s.rid, s.true_rows, s.tokens)[stage]
    honest = truth.root == s.claims[stage].root
    kind = VerdictKind.PASS if honest else VerdictKind.FAIL
    named = (0, 0) if honest else failing_leaf(s.claims[stage], truth, PARAMS)
    salts = {m: os.urandom(32) for m in members}
    for m in members:
        ver.commit_verdict(task_id, kind, truth.root, salts[m], named, sender=by_addr[m])
    for m in members:
        ver.reveal_verdict(task_id, kind, truth.root, salts[m], named, sender=by_addr[m])
    ver.close_votes(task_id)
    mine(chain, PARAMS.randomness_delay + 1)
    spots = ver.spot_checks(task_id)
    ver.open_chunks(task_id, task.stage_operator, openings(s.claims[stage], spots))
    for m in members:
        ver.open_chunks(task_id, m, openings(truth, spots))
    ver.finalize(task_id)  # a conviction slashes and jails the stage and refunds the client
    return task_id, ver.task(task_id).status  # type: ignore[union-attr]
