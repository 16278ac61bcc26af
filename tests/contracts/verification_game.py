"""A titanoboa harness for the Verification game: the whole system deployed and wired, a paying
client, settled requests whose stages commit real verifier/ENCODING.md trees over random rows,
and committee members that act honestly, lazily, silently or falsely."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import boa
import numpy as np

from contracts.apikeys import create_api_key
from contracts.batch import Pipeline, Record, Stage, leaves_of, merkle_proof
from contracts.verification import Opening, VerificationParams, commitment_root, verdict_commitment
from protocol.messages import StageCommit
from verifier.encoding import Domain
from verifier.merkle import StageCommitment

from .boa_helpers import ETH, System, deployer_for, funded, keyed, mine

WINDOW = 30
POSITIONS, HIDDEN = 5, 80  # 3 chunks per row, the last one partial (padding is checked)
PARAMS = VerificationParams(
    sample_bps=10_000,
    committee_size=3,
    max_rounds=2,
    commit_blocks=3,
    reveal_blocks=3,
    open_blocks=3,
    randomness_delay=1,
    spot_chunks=2,
    max_ulp=6,
    max_bad=4,
    stage_slash_wei=ETH // 2,
    verifier_slash_wei=ETH // 5,
    verifier_reward_wei=10**9,  # the pool holds 10% of one 1.6e11-wei charge
)


@dataclass
class Request:
    seq: int
    record: Record
    leaf: object
    proof: list[bytes]
    batch_id: int
    rows: list[np.ndarray]  # the true output of each stage
    commits: list[StageCommitment]  # what each stage committed (maybe forged)
    charge: int


@dataclass
class Plan:
    """How each party behaves in one task. Member behaviours: honest | lazy_copy | garbage_pass |
    accuse | silent | no_reveal | no_open."""

    cheat: bool = False
    behaviours: dict[int, str] = field(default_factory=dict)  # index in round -> behaviour


class Game:
    """System + Verification deployed in boa; one client and gateway; a funded verifier pool."""

    def __init__(self, nodes: int = 12, params: VerificationParams = PARAMS) -> None:
        self.s = System(layers=8, nodes=nodes, window=WINDOW)
        s = self.s
        with boa.env.prank(s.admin):
            self.rand = deployer_for("BlockhashRandomness").deploy()
            self.spot = deployer_for("SpotCheck").deploy()
            self.ver = deployer_for("Verification").deploy(
                s.reg, s.pay, self.rand, self.spot, params.as_tuple()
            )
            s.reg.set_slasher(self.ver)
            s.pay.set_roles(self.ver, s.admin)
        self.params = params
        self.client, client_key = keyed()
        self.gateway = funded()
        with boa.env.prank(self.client):
            s.pay.deposit(value=50 * ETH)
        signed = create_api_key(
            client_key, self.gateway, 40 * ETH, _now() + 10**6, 1, s.chain_id, s.pay.address
        )
        with boa.env.prank(self.gateway):
            self.key = s.pay.register_key(signed.key.as_tuple(), signed.signature)
        self.pipeline = Pipeline(
            s.model_id, (Stage(s.operators[0], 0, 3), Stage(s.operators[1], 3, 8))
        )
        self.rng = np.random.default_rng(7)
        self.seq = 0
        self.operator_owner = dict(zip(s.operators, s.owners, strict=True))
        self._fund_pool()

    # ------------------------------------------------------------ requests
    def _fund_pool(self) -> None:
        """Settle and release one request nobody checks, so the verifier pool holds coin."""
        with boa.env.prank(self.s.admin):
            self.ver.set_params(
                VerificationParams(**{**vars(self.params), "sample_bps": 0}).as_tuple()
            )
        req = self.settle()
        mine(WINDOW + 1)
        self.s.pay.release(req.batch_id, [self.pipeline.as_tuple()])
        with boa.env.prank(self.s.admin):
            self.ver.set_params(self.params.as_tuple())

    def request_id(self, seq: int) -> bytes:
        from contracts.batch import request_id

        return request_id(self.s.chain_id, self.s.pay.address, self.gateway, seq)

    def settle(self, cheat_stages: tuple[int, ...] = ()) -> Request:
        self.seq += 1
        seq = self.seq
        rid = self.request_id(seq)
        rows = [self.rng.standard_normal((POSITIONS, HIDDEN)).astype(np.float32) for _ in range(2)]
        commits = []
        for j, r in enumerate(rows):
            claimed = (
                r + 0.5 * self.rng.standard_normal(r.shape).astype(np.float32)
                if j in cheat_stages
                else r
            )
            commits.append(StageCommitment.build(Domain(self.s.chain_id, rid, j), claimed))
        sc = [StageCommit(c.root, POSITIONS, HIDDEN, 0) for c in commits]
        charge = 100 * 10**9 + 20 * 3 * 10**9
        record = Record(seq, 0, 0, 100, 20, charge, commitment_root(sc))
        with boa.env.prank(self.gateway):
            batch_id = self.s.pay.settle_batch(
                [self.key], [self.pipeline.as_tuple()], [record.as_tuple()]
            )
        leaves = leaves_of(self.s.chain_id, self.s.pay.address, self.gateway, [self.key], [record])
        proof = merkle_proof([lf.hash() for lf in leaves], 0)
        return Request(seq, record, leaves[0], proof, batch_id, rows, commits, charge)

    def stage_commits(self, req: Request) -> list[tuple]:
        return [StageCommit(c.root, POSITIONS, HIDDEN, 0).as_tuple() for c in req.commits]

    def open_task(self, req: Request, sender: str | None = None) -> int:
        mine(2)  # the sampling randomness is a block after settlement
        with boa.env.prank(sender or funded()):
            return int(
                self.ver.open_task(
                    req.batch_id,
                    _leaf(req.leaf),
                    req.proof,
                    [self.pipeline.as_tuple()],
                    self.stage_commits(req),
                )
            )

    def round_members(self, task_id: int) -> list[str]:
        t = self.ver.tasks(task_id)
        return list(self.ver.committee(task_id))[t.round_first :]

    # ------------------------------------------------------------ members
    def own_commitment(self, req: Request, stage: int, behaviour: str) -> StageCommitment:
        rid = self.request_id(req.seq)
        if behaviour == "lazy_copy":
            return req.commits[stage]  # reuses the stage's claim without computing
        if behaviour in ("garbage_pass", "accuse"):
            fake = self.rng.standard_normal((POSITIONS, HIDDEN)).astype(np.float32)
            return StageCommitment.build(Domain(self.s.chain_id, rid, stage), fake)
        # honest: recompute (tiny benign noise: a different kernel's rounding)
        noisy = req.rows[stage] * np.float32(1 + 1e-5)
        return StageCommitment.build(Domain(self.s.chain_id, rid, stage), noisy)

    def play_round(self, task_id: int, req: Request, plan: Plan) -> dict[str, StageCommitment]:
        """Commit, reveal, close votes and open chunks for the current round; returns each
        member's own commitment."""
        t = self.ver.tasks(task_id)
        stage = t.stage
        members = self.round_members(task_id)
        stage_claim = req.commits[stage]
        own: dict[str, StageCommitment] = {}
        votes: dict[str, tuple[bool, bytes, bytes]] = {}
        for i, op in enumerate(members):
            b = plan.behaviours.get(i, "honest")
            if b == "silent":
                continue
            mine_c = self.own_commitment(req, stage, b)
            own[op] = mine_c
            if b == "honest":
                verdict = not plan.cheat
            elif b == "accuse":
                verdict = False
            else:
                verdict = True
            salt = os.urandom(32)
            votes[op] = (verdict, mine_c.root, salt)
            with boa.env.prank(op):
                self.ver.commit_verdict(
                    task_id, verdict_commitment(task_id, op, verdict, mine_c.root, salt)
                )
        if len(votes) < len(members):
            mine(self.params.commit_blocks + 1)
        for i, op in enumerate(members):
            b = plan.behaviours.get(i, "honest")
            if op in votes and b != "no_reveal":
                with boa.env.prank(op):
                    self.ver.reveal_verdict(task_id, *votes[op])
        if any(plan.behaviours.get(i) in ("silent", "no_reveal") for i in range(len(members))):
            mine(self.params.commit_blocks + self.params.reveal_blocks + 1)
        self.ver.close_votes(task_id)
        mine(self.params.randomness_delay + 1)
        positions, chunks = self.ver.spot_checks(task_id)
        spots = list(zip(positions, chunks, strict=True))
        self.open_for(task_id, t.stage_operator, stage_claim, spots)
        for i, op in enumerate(members):
            b = plan.behaviours.get(i, "honest")
            if op in votes and b not in ("no_reveal", "no_open"):
                self.open_for(task_id, op, own[op], spots)
        if any(plan.behaviours.get(i) == "no_open" for i in range(len(members))):
            mine(self.params.open_blocks + 2)
        return own

    def open_for(self, task_id: int, party: str, c: StageCommitment, spots) -> None:
        openings = [Opening.from_chunk(c.open_chunk(int(p), int(k))).as_tuple() for p, k in spots]
        with boa.env.prank(funded()):
            self.ver.open_chunks(task_id, party, openings)

    def stake(self, operator: str) -> int:
        return int(self.s.reg.stake_of(self.operator_owner[operator]))


def _now() -> int:
    return int(boa.env.evm.patch.timestamp)


def _leaf(leaf) -> tuple:
    return (
        leaf.request_id,
        leaf.key_hash,
        leaf.pipeline_index,
        leaf.tokens_in,
        leaf.tokens_out,
        leaf.charge,
        leaf.commitment_root,
    )
