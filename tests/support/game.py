"""A titanoboa harness for the Verification game: the whole system deployed and wired (TaskOpener,
Committee, Verification), a bonded gateway and a paying client, settled requests whose stages
commit (and sign) real verifier/ENCODING.md trees over random rows and tokens, and committee
members that act honestly, lazily, silently, falsely or as spoilers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import boa
import numpy as np
from coincurve import PrivateKey

from contracts.apikeys import create_api_key
from contracts.batch import Pipeline, Record, Stage, leaves_of, merkle_proof
from contracts.verification import (
    TOKEN_CHUNK,
    Opening,
    StageCommit,
    VerdictKind,
    VerificationParams,
    attestation_digest,
    commitment_root,
    verdict_commitment,
)
from protocol.identity import sign_digest
from tests.support.boa import ETH, System, deployer_for, funded, keyed, mine
from verifier.encoding import Domain
from verifier.merkle import StageCommitment

WINDOW = 30
UNBONDING = 100
POSITIONS, HIDDEN = 5, 80  # 3 chunks per row, the last one partial (padding is checked)
TOKENS_IN, TOKENS_OUT = 4, 2  # L = 6 tokens, L - 1 = 5 computed positions
PRICE_IN, PRICE_OUT = 10**9, 3 * 10**9
CHARGE = TOKENS_IN * PRICE_IN + TOKENS_OUT * PRICE_OUT
GATEWAY_BOND = 2 * ETH
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
    verifier_reward_wei=10**9,
    gateway_slash_wei=ETH,
    open_task_blocks=8,
    seat_stake_wei=ETH,
    jail_blocks=500,
    suspect_threshold=2,
)


@dataclass
class Request:
    seq: int
    record: Record
    leaf: object
    proof: list[bytes]
    batch_id: int
    rows: list[np.ndarray]  # the true output of each stage
    tokens: list[int]  # the true token sequence
    commits: list[StageCommitment]  # what each stage committed (maybe forged)
    stage_commits: list[StageCommit] = field(default_factory=list)
    pipeline: Pipeline | None = None


@dataclass
class Plan:
    """How each party behaves in one task. Member behaviours: honest | lazy_copy | garbage_pass |
    accuse | spoiler | silent | no_reveal | no_open | no_input | suspect."""

    cheat: bool = False
    behaviours: dict[int, str] = field(default_factory=dict)  # index in round -> behaviour


class Game:
    """System + the verification contracts in boa; one client and a bonded gateway; a funded
    verifier pool."""

    def __init__(self, nodes: int = 12, params: VerificationParams = PARAMS,
                 timelock: int = 0) -> None:
        self.s = System(layers=8, nodes=nodes, window=WINDOW, hidden=HIDDEN, slasher=False,
                        unbonding=UNBONDING, gateway_bond=ETH, timelock=timelock)
        s = self.s
        with boa.env.prank(s.admin):
            self.rand = deployer_for("BlockhashRandomness").deploy()
            self.spot = deployer_for("SpotCheck").deploy()
            self.committee = deployer_for("Committee").deploy()
            self.opener = deployer_for("TaskOpener").deploy(s.pay, s.models)
            self.ver = deployer_for("Verification").deploy(
                s.reg, s.pay, self.rand, self.spot, self.committee, self.opener,
                params.as_tuple(), timelock,
            )
            self.opener.wire(self.ver)
            s.reg.set_slasher(self.ver)
            s.pay.set_roles(self.ver, s.admin)
        self.params = params
        self.rule = (params.max_ulp, params.max_bad)  # the chunk rule tasks are judged by
        self.client, client_key = keyed()
        self.gateway = funded()
        with boa.env.prank(self.gateway):
            s.pay.bond_gateway(value=GATEWAY_BOND)
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
        if timelock == 0:
            self.fund_pool()

    def register_serving(self, precision: int, rule: tuple[int, int]) -> None:
        """The admin records the model's serving precision, a profile and its chunk rule (D, K):
        tasks opened from now on are judged by that rule."""
        with boa.env.prank(self.s.admin):
            self.s.models.set_serving(self.s.model_id, precision, b"\x0f" * 32, *rule)
        self.rule = rule

    # ------------------------------------------------------------ requests
    def fund_pool(self, records: int = 1) -> None:
        """Settle and release requests nobody checks, so the verifier pool holds coin."""
        with boa.env.prank(self.s.admin):
            self.ver.set_params(replace(self.params, sample_bps=1).as_tuple())
        for _ in range(records):
            req = self.settle()
            mine(WINDOW + 1)
            self.s.pay.release(req.batch_id, [self.pipeline.as_tuple()])
        with boa.env.prank(self.s.admin):
            self.ver.set_params(self.params.as_tuple())

    def request_id(self, seq: int, gateway: str | None = None) -> bytes:
        from contracts.batch import request_id

        return request_id(self.s.chain_id, self.s.pay.address, gateway or self.gateway, seq)

    def settle(
        self,
        forge: dict[int, str] | None = None,
        pipeline: Pipeline | None = None,
        gateway: str | None = None,
        key: bytes | None = None,
        tokens: tuple[int, int] = (TOKENS_IN, TOKENS_OUT),
        shape: dict[str, int] | None = None,
    ) -> Request:
        """One request through `pipeline` (default: the game's two stages). `forge` maps a stage
        to how it cheats: "rows" (every value off), "chunk" (one chunk), "decode" (only the
        generated positions), "tokens" (one token id), "zero" (a zero root) — or, not a cheat,
        "bf16" (honest bf16 noise: 6 elements of every chunk 9 scale ulps off the truth, what
        another GPU's kernels give)."""
        forge = forge or {}
        pipe = pipeline or self.pipeline
        gw = gateway or self.gateway
        self.seq += 1
        seq = self.seq
        rid = self.request_id(seq, gw)
        n = len(pipe.stages)
        L = tokens[0] + tokens[1]
        positions = L - 1
        rows = [self.rng.standard_normal((positions, HIDDEN)).astype(np.float32) for _ in range(n)]
        toks = [int(t) for t in self.rng.integers(0, 50_000, size=L)]
        commits, scs = [], []
        for j, r in enumerate(rows):
            claimed, ctoks = r.copy(), list(toks)
            how = forge.get(j)
            if how == "rows":
                claimed = r + 0.5 * self.rng.standard_normal(r.shape).astype(np.float32)
            elif how == "chunk":
                claimed[positions - 1, 32:64] += 3.0
            elif how == "decode":
                claimed[tokens[0]:, :] += 1.0
            elif how == "tokens":
                ctoks[-1] = (ctoks[-1] + 1) % 50_000
            elif how == "bf16":
                claimed = _bf16_noise(claimed)
            with_tokens = j == 0 or j == n - 1
            c = StageCommitment.build(Domain(self.s.chain_id, rid, j), claimed,
                                      ctoks if with_tokens else ())
            commits.append(c)
            sc = StageCommit(c.root, positions, HIDDEN, L if with_tokens else 0)
            if how == "zero":
                sc = StageCommit(bytes(32), positions, HIDDEN, sc.n_tokens)
            if shape:
                sc = replace(sc, **shape)
            scs.append(sc)
        charge = tokens[0] * PRICE_IN + tokens[1] * PRICE_OUT
        record = Record(seq, 0, 0, tokens[0], tokens[1], charge, commitment_root(scs))
        with boa.env.prank(gw):
            batch_id = self.s.pay.settle_batch([key or self.key], [pipe.as_tuple()],
                                               [record.as_tuple()])
        leaves = leaves_of(self.s.chain_id, self.s.pay.address, gw, [key or self.key], [record])
        proof = merkle_proof([lf.hash() for lf in leaves], 0)
        return Request(seq, record, leaves[0], proof, batch_id, rows, toks, commits, scs, pipe)

    def settle_checked(self, stage: int, **kw) -> Request:
        """A settled request (`settle(**kw)`) whose batch randomness checks `stage`: settles until
        one does (stage 1 has an input stage, stage 0 none)."""
        while True:
            req = self.settle(**kw)
            if self.chosen_stage(req) == stage:
                return req

    def chosen_stage(self, req: Request) -> int:
        """The stage the batch's randomness checks (TaskOpener.stage_of; fixed once a task of
        the batch stored its seed)."""
        _, settle_block, _, _ = self.s.pay.batch_terms(req.batch_id)
        anchor = settle_block + self.params.randomness_delay
        if boa.env.evm.patch.block_number <= anchor:
            mine(anchor - boa.env.evm.patch.block_number + 1)  # the seed is a later block's
        return int(self.opener.stage_of(req.batch_id, req.leaf.request_id,
                                        len(req.pipeline.stages)))

    def signature(self, req: Request, stage: int, signer: str | None = None) -> bytes:
        op = signer or req.pipeline.stages[stage].operator
        key = PrivateKey(bytes.fromhex(self.s.operator_keys[op][2:]))
        digest = attestation_digest(self.s.chain_id, req.leaf.request_id, stage,
                                    req.stage_commits[stage])
        return sign_digest(key, digest)

    def equivocation(self, req: Request, stage: int, signer: str | None = None
                     ) -> tuple[StageCommit, bytes]:
        """What an input stage that sent the next stage other rows than it settled signed for it
        at COMMIT (relayed by the gateway, checked and kept by the next stage): a commitment of the
        settled shape over the rows it really sent, signed with `signer`'s key (default: the
        stage's own operator)."""
        rid = req.leaf.request_id
        settled = req.stage_commits[stage]
        with_tokens = settled.n_tokens > 0
        c = StageCommitment.build(Domain(self.s.chain_id, rid, stage),
                                  req.rows[stage] + np.float32(0.25),
                                  req.tokens if with_tokens else ())
        sc = StageCommit(c.root, settled.positions, settled.hidden_size, settled.n_tokens)
        op = signer or req.pipeline.stages[stage].operator
        key = PrivateKey(bytes.fromhex(self.s.operator_keys[op][2:]))
        return sc, sign_digest(key, attestation_digest(self.s.chain_id, rid, stage, sc))

    def open_task(self, req: Request, sender: str | None = None, signature: bytes | None = None,
                  wait: bool = True) -> int:
        if wait:
            mine(2)  # the sampling randomness is a block after settlement
        if signature is None:  # (boa's blockhash moves with the head: no block in between)
            signature = self.signature(req, self.chosen_stage(req))
        with boa.env.prank(sender or funded()):
            return int(
                self.opener.open_task(
                    req.batch_id, _leaf(req.leaf), req.proof, [req.pipeline.as_tuple()],
                    [sc.as_tuple() for sc in req.stage_commits], signature,
                )
            )

    def void_unopened(self, req: Request, sender: str) -> int:
        with boa.env.prank(sender):
            return int(self.opener.open_task(req.batch_id, _leaf(req.leaf), req.proof,
                                              [req.pipeline.as_tuple()], [], b""))

    def round_members(self, task_id: int) -> list[str]:
        t = self.ver.tasks(task_id)
        return list(self.ver.committee(task_id))[t.round_first :]

    # ------------------------------------------------------------ members
    def recompute(self, req: Request, stage: int) -> StageCommitment:
        """An honest recomputation (tiny benign noise: a different kernel's rounding)."""
        rid = req.leaf.request_id
        n = len(req.pipeline.stages)
        toks = req.tokens if stage in (0, n - 1) else ()
        return StageCommitment.build(Domain(self.s.chain_id, rid, stage),
                                     req.rows[stage] * np.float32(1 + 1e-5), toks)

    def failing_leaf(self, req: Request, stage: int) -> tuple[int, int] | None:
        """The first leaf where the stage's claim breaks the chunk rule against the truth."""
        claim = req.commits[stage]
        truth = self.recompute(req, stage)
        if claim.tokens != truth.tokens:
            i = next(i for i, (a, b) in enumerate(zip(claim.tokens, truth.tokens, strict=True))
                     if a != b)
            return i, TOKEN_CHUNK
        from verifier.chunk_rule import chunk_passes

        cb, tb = claim.bits, truth.bits
        for p in range(cb.shape[0]):
            for c in range((HIDDEN + 31) // 32):
                a, b = cb[p, c * 32:(c + 1) * 32], tb[p, c * 32:(c + 1) * 32]
                if not chunk_passes(a, b, *self.rule):
                    return p, c
        return None

    def own_commitment(self, req: Request, stage: int, behaviour: str) -> StageCommitment:
        rid = req.leaf.request_id
        if behaviour == "lazy_copy":
            return req.commits[stage]  # reuses the stage's claim without computing
        if behaviour in ("garbage_pass", "accuse", "spoiler"):
            fake = self.rng.standard_normal(req.rows[stage].shape).astype(np.float32)
            n = len(req.pipeline.stages)
            toks = [t + 1 for t in req.tokens] if stage in (0, n - 1) else ()
            return StageCommitment.build(Domain(self.s.chain_id, rid, stage), fake, toks)
        return self.recompute(req, stage)

    def vote(self, req: Request, stage: int, behaviour: str) -> tuple[int, tuple[int, int]]:
        if behaviour in ("honest", "no_open", "no_reveal"):
            leaf = self.failing_leaf(req, stage)
            return (VerdictKind.FAIL, leaf) if leaf else (VerdictKind.PASS, (0, 0))
        if behaviour == "accuse":
            return VerdictKind.FAIL, (0, 0)
        if behaviour == "spoiler":
            return VerdictKind.FAIL, (int(self.rng.integers(0, POSITIONS)), 1)
        if behaviour == "no_input":
            return VerdictKind.NO_INPUT, (0, 0)
        if behaviour == "suspect":
            return VerdictKind.SUSPECT, (0, 0)
        return VerdictKind.PASS, (0, 0)  # lazy_copy, garbage_pass

    def play_round(self, task_id: int, req: Request, plan: Plan,
                   open_stage: bool = True, open_input: bool = True) -> dict[str, StageCommitment]:
        """Commit, reveal, close votes and open leaves for the current round; returns each
        member's own commitment."""
        t = self.ver.tasks(task_id)
        stage = t.stage
        members = self.round_members(task_id)
        own: dict[str, StageCommitment] = {}
        votes: dict[str, tuple] = {}
        for i, op in enumerate(members):
            b = plan.behaviours.get(i, "honest")
            if b == "silent":
                continue
            mine_c = self.own_commitment(req, stage, b)
            own[op] = mine_c
            kind, leaf = self.vote(req, stage, b)
            salt = os.urandom(32)
            votes[op] = (int(kind), mine_c.root, leaf[0], leaf[1], salt)
            with boa.env.prank(op):
                self.ver.commit_verdict(task_id, verdict_commitment(
                    task_id, op, int(kind), mine_c.root, leaf[0], leaf[1], salt))
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
        if open_stage:
            self.open_for(task_id, t.stage_operator, req.commits[stage], spots)
        if open_input and t.input_operator != "0x" + "00" * 20 and any(
            v[0] == VerdictKind.NO_INPUT for v in votes.values()
        ):
            n_spots = self.params.spot_chunks
            self.open_for(task_id, t.input_operator, req.commits[stage - 1], spots[:n_spots])
        for i, op in enumerate(members):
            b = plan.behaviours.get(i, "honest")
            if op in votes and b not in ("no_reveal", "no_open", "no_input"):
                self.open_for(task_id, op, own[op], spots)
        if any(plan.behaviours.get(i) in ("no_open",) for i in range(len(members))) or (
            not open_stage
        ):
            mine(self.params.open_blocks + 2)
        return own

    def open_for(self, task_id: int, party: str, c: StageCommitment, spots) -> None:
        openings = []
        for p, k in spots:
            if int(k) == TOKEN_CHUNK:
                o = c.open_token(int(p))
                openings.append(Opening.from_token(o.token_id, o.siblings).as_tuple())
            else:
                openings.append(Opening.from_chunk(c.open_chunk(int(p), int(k))).as_tuple())
        with boa.env.prank(funded()):
            self.ver.open_chunks(task_id, party, openings)

    def finalize(self, task_id: int) -> int:
        with boa.env.prank(funded()):
            self.ver.finalize(task_id)
        return int(self.ver.tasks(task_id).status)

    def run(self, task_id: int, req: Request, plan: Plan, rounds: int | None = None) -> int:
        """Play rounds until the task closes (escalations included); returns its status."""
        for _ in range(rounds or self.params.max_rounds):
            self.play_round(task_id, req, plan)
            status = self.finalize(task_id)
            if status != 7:  # DRAWING
                return status
            mine(self.params.randomness_delay + 1)
            self.ver.next_round(task_id)
        return int(self.ver.tasks(task_id).status)

    def stake(self, operator: str) -> int:
        return int(self.s.reg.stake_of(self.operator_owner[operator]))

    def worth(self, owner: str) -> int:
        """Everything an owner holds in the system: stake + unbonding + credits + earnings."""
        n = self.s.reg.nodes(owner)
        return (int(n.stake) + int(n.unbonding) + int(self.s.reg.credits(owner))
                + int(self.s.pay.balances(owner)))


def _bf16_noise(rows: np.ndarray, per_chunk: int = 6, ulps: int = 9) -> np.ndarray:
    """`per_chunk` elements of every 32-element chunk moved by `ulps` of the chunk's scale ulp
    (the ulp of its largest element in bf16: 2^(floor(log2 max|x|) - 7)), the largest left alone."""
    out = rows.copy()
    for p in range(out.shape[0]):
        for c0 in range(0, out.shape[1], 32):
            chunk = out[p, c0:c0 + 32]
            ulp = 2.0 ** (np.floor(np.log2(np.abs(chunk).max())) - 7)
            small = np.argsort(np.abs(chunk))[:per_chunk]  # far below the scale: no exponent change
            chunk[small] += np.float32(ulps * ulp)
    return out


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
