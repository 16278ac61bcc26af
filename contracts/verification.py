"""Typed wrapper of the Verification contract, plus the pure encodings it shares with Python.

A request's `commitment_root` (in its settlement record) is `commitment_root(stage_commits)`: the
keccak of the ABI-encoded list of per-stage `StageCommit(root, positions, hidden_size, n_tokens)`.
Verdict commitments are `verdict_commitment(task_id, member, kind, output_root, position, chunk,
salt)`: a `VerdictKind` (PASS, FAIL naming the failing leaf (position, chunk) — `TOKEN_CHUNK` for a
token leaf — SUSPECT for statistical evidence, NO_INPUT when the inputs could not be had). An
opened chunk goes on chain as `Opening.from_values(values, siblings)` (two words of bf16 bits), a
token leaf as `Opening.from_token(token_id, siblings)`. `Verification` exposes one method per state
transition (see contracts/README.md, "Verification"): `open_task` (through the TaskOpener, with
the stage's signature), `commit_verdict`, `reveal_verdict`, `close_votes`, `open_chunks`,
`finalize`, `next_round`, `expire`, and the views a worker or auditor needs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from enum import IntEnum
from typing import Any

from eth_abi import encode as abi_encode
from eth_utils import keccak, to_canonical_address
from web3 import Web3

from contracts.batch import Leaf, Pipeline
from contracts.binding import Binding, TxResult
from contracts.errors import ContractsError
from contracts.rpc import Signer
from protocol.messages import StageCommit  # noqa: F401  (re-exported: the chain's view of it)

STAGE_COMMIT_TYPE = "(bytes32,uint32,uint32,uint32)[]"


# StageSlashed.reason when a stage proved its input stage sent it other rows than it settled
# (TaskOpener.blame_input -> Verification.blame_input)
BLAME_REASON = "verification: input stage equivocated"


class TaskStatus(IntEnum):
    """A task's status on chain (the contract's uint8 constants)."""

    ABSENT = 0
    VOTING = 1
    OPENING = 2
    PASSED = 3
    FRAUD = 4
    REFUNDED = 5
    UNRESOLVED = 6
    DRAWING = 7  # escalated: waits for a fresh block to seat the next round
    VOID = 8  # unverifiable or never opened: refunded, gateway bond slashed
    SUSPECTED = 9  # statistical evidence: counted against the operator, no slash


class VerdictKind(IntEnum):
    """What a member reveals (the contract's uint8)."""

    PASS = 1
    FAIL = 2  # proof-grade: names a failing leaf
    SUSPECT = 3  # statistical: never slashes, counts toward jail
    NO_INPUT = 4  # could not get the inputs: the input stage must open them


TOKEN_CHUNK = 65535  # the chunk value naming a token leaf
# The contract's CUSUM of statistical suspicion (Verification.vy SUSPECT_WEIGHT): a SUSPECTED
# outcome adds this to the stage owner's score, a PASSED takes 1 off (floored at 0); jailed at
# SUSPECT_WEIGHT * suspect_threshold.
SUSPECT_WEIGHT = 16
FINAL_STATUSES = frozenset({TaskStatus.PASSED, TaskStatus.FRAUD, TaskStatus.REFUNDED,
                            TaskStatus.UNRESOLVED, TaskStatus.VOID, TaskStatus.SUSPECTED})


BPS = 10_000
# Every randomness source (the devnet's BlockhashRandomness, a VRF, a beacon) answers `value(block)`.
RANDOMNESS_ABI = [{"type": "function", "name": "value", "stateMutability": "view",
                   "inputs": [{"name": "block_number", "type": "uint256"}],
                   "outputs": [{"name": "", "type": "bytes32"}]}]


@functools.cache
def task_events() -> tuple[str, ...]:
    """The names of every Verification event about one task (those with a `task_id` argument), in
    the contract's declaration order — the one list the audit and the explorer both read."""
    from contracts.build import compile_all

    abi = compile_all()["Verification"].abi
    return tuple(e["name"] for e in abi if e.get("type") == "event"
                 and any(i["name"] == "task_id" for i in e["inputs"]))


def anchor_block(settle_block: int, randomness_delay: int) -> int:
    """The block whose randomness samples a batch: `randomness_delay` blocks after its settle
    block (`Payments.batch_terms`)."""
    return settle_block + randomness_delay


def batch_seed_of(randomness_value: bytes, batch_id: int) -> bytes:
    """A batch's sampling seed from its anchor block's randomness (`_fresh_batch_seed`)."""
    return keccak(abi_encode(["bytes32", "uint256"], [randomness_value, batch_id]))


def sample_draw(seed: bytes, request_id: bytes) -> int:
    """The request's draw in [0, 10,000): sampled iff it is below `sample_bps` (`_sampled`)."""
    return int.from_bytes(keccak(abi_encode(["bytes32", "bytes32", "uint256"],
                                            [seed, request_id, 0])), "big") % BPS


def commitment_root(stage_commits: Sequence[StageCommit]) -> bytes:
    """The record's commitment root: keccak256(abi_encode(stage commitments)), as the contract."""
    if not stage_commits:
        raise ContractsError("a request commits at least one stage")
    return keccak(abi_encode([STAGE_COMMIT_TYPE], [[s.as_tuple() for s in stage_commits]]))


ATTESTATION_DOMAIN = b"veriplex-stage-commit-v1"


def attestation_digest(chain_id: int, request_id: bytes, stage: int, sc: StageCommit) -> bytes:
    """What a stage operator signs for its commitment (VERIFY_SPEC §1): keccak256 of
    b"veriplex-stage-commit-v1" ‖ u64 chain id ‖ bytes32 request id ‖ u16 stage ‖ root ‖
    u32 positions ‖ u32 hidden size ‖ u32 n_tokens, integers big-endian."""
    if not 0 <= chain_id < 2**64:
        raise ContractsError(f"chain id ({chain_id}) must be in [0, 2**64)")
    if not isinstance(request_id, bytes | bytearray) or len(request_id) != 32:
        raise ContractsError(f"request id must be 32 bytes, got {request_id!r:.80}")
    if not 0 <= stage < 2**16:
        raise ContractsError(f"stage ({stage}) must be in [0, 2**16)")
    if not isinstance(sc.root, bytes | bytearray) or len(sc.root) != 32:
        raise ContractsError(f"stage root must be 32 bytes, got {sc.root!r:.80}")
    for name in ("positions", "hidden_size", "n_tokens"):
        v = getattr(sc, name)
        if not 0 <= v < 2**32:
            raise ContractsError(f"stage commit {name} ({v}) must be in [0, 2**32)")
    return keccak(
        ATTESTATION_DOMAIN
        + chain_id.to_bytes(8, "big")
        + bytes(request_id)
        + stage.to_bytes(2, "big")
        + bytes(sc.root)
        + sc.positions.to_bytes(4, "big")
        + sc.hidden_size.to_bytes(4, "big")
        + sc.n_tokens.to_bytes(4, "big")
    )


def verdict_commitment(
    task_id: int, member: str, kind: int, output_root: bytes, position: int, chunk: int,
    salt: bytes,
) -> bytes:
    """keccak256(abi_encode(task_id, member, kind, output_root, position, chunk, salt)) — what a
    member commits (position/chunk: the leaf a FAIL names; 0, 0 otherwise)."""
    return keccak(
        abi_encode(
            ["uint256", "address", "uint8", "bytes32", "uint32", "uint16", "bytes32"],
            [task_id, to_canonical_address(member), int(kind), output_root, position, chunk, salt],
        )
    )


@dataclass(frozen=True)
class Opening:
    """One opened chunk as the contract takes it: 32 bf16 values in two words, and siblings."""

    hi: bytes
    lo: bytes
    siblings: tuple[bytes, ...]

    @classmethod
    def from_values(cls, values: Sequence[int], siblings: Sequence[bytes]) -> Opening:
        vals = [int(v) for v in values]
        if len(vals) != 32 or any(not 0 <= v < 1 << 16 for v in vals):
            raise ContractsError(
                f"a chunk is 32 bf16 bit patterns (0..65535), got {len(vals)} values"
            )
        words = [b"".join(v.to_bytes(2, "big") for v in vals[i : i + 16]) for i in (0, 16)]
        return cls(words[0], words[1], tuple(bytes(s) for s in siblings))

    @classmethod
    def from_token(cls, token_id: int, siblings: Sequence[bytes]) -> Opening:
        """A token leaf: the id in the low bytes of `hi`, `lo` zero."""
        if not 0 <= token_id < 2**32:
            raise ContractsError(f"token id ({token_id}) must be in [0, 2**32)")
        return cls(token_id.to_bytes(32, "big"), bytes(32), tuple(bytes(s) for s in siblings))

    @classmethod
    def from_chunk(cls, opening: Any) -> Opening:
        """From a `verifier.merkle.ChunkOpening` (values + siblings)."""
        return cls.from_values(list(opening.values), opening.siblings)

    def as_tuple(self) -> tuple[bytes, bytes, list[bytes]]:
        return (self.hi, self.lo, list(self.siblings))


@dataclass(frozen=True)
class VerificationParams:
    """The contract's `Params` struct (field order matters: it is the ABI tuple)."""

    sample_bps: int = 1_000
    committee_size: int = 3
    max_rounds: int = 2
    commit_blocks: int = 4
    reveal_blocks: int = 4
    open_blocks: int = 4
    randomness_delay: int = 1
    spot_chunks: int = 2
    max_ulp: int = 6  # chunk rule D (verifier.profiles BF16)
    max_bad: int = 4  # chunk rule K
    stage_slash_wei: int = 10**18
    verifier_slash_wei: int = 2 * 10**17
    verifier_reward_wei: int = 10**15  # cap per member; paid from the record's verification share
    gateway_slash_wei: int = 10**18  # per unattested or unverifiable record
    open_task_blocks: int = 8  # after the batch's randomness, to open its sampled tasks
    seat_stake_wei: int = 10**18  # stake at which a node's seat probability saturates
    jail_blocks: int = 1_000  # a convicted stage's jail term
    # net SUSPECTED outcomes that jail (CUSUM, SUSPECT_WEIGHT); 5 is the least at which the shipped
    # profiles keep honest jailing under 1e-6 over 1e5 checks (verifier.sprt.suspect_rule)
    suspect_threshold: int = 5

    def as_tuple(self) -> tuple[int, ...]:
        return astuple(self)

    def validate(self) -> None:
        """The contract's own checks, with the values quoted, before anything is sent."""
        bounds = {
            "sample_bps": (0, 10_000),
            "committee_size": (1, 16),
            "max_rounds": (1, 3),
            "commit_blocks": (1, None),
            "reveal_blocks": (1, None),
            "open_blocks": (1, None),
            "randomness_delay": (1, None),
            "spot_chunks": (1, 4),
            "max_ulp": (0, None),
            "max_bad": (0, 31),
            "stage_slash_wei": (0, None),
            "verifier_slash_wei": (0, None),
            "verifier_reward_wei": (0, None),
            "gateway_slash_wei": (0, None),
            "open_task_blocks": (1, None),
            "seat_stake_wei": (1, None),
            "jail_blocks": (0, None),
            "suspect_threshold": (1, None),
        }
        for name, (lo, hi) in bounds.items():
            v = getattr(self, name)
            if v < lo or (hi is not None and v > hi):
                span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
                raise ContractsError(f"verification {name} ({v}) must be {span}")

    @classmethod
    def from_tuple(cls, t: Sequence[Any]) -> VerificationParams:
        return cls(*(int(v) for v in t))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_settings(cls, section: Any) -> VerificationParams:
        """From `Settings.verification` (protocol.settings.VerificationSettings)."""
        return cls(**{name: getattr(section, name) for name in cls.field_names()
                      if hasattr(section, name)})

    def round_blocks(self) -> int:
        """Most blocks one round takes (`_round_len`)."""
        return (2 * self.randomness_delay + self.commit_blocks + self.reveal_blocks
                + self.open_blocks + 4)

    def task_lifetime(self) -> int:
        """Most blocks from settlement until a task of the batch has closed."""
        return self.randomness_delay + self.open_task_blocks + self.max_rounds * self.round_blocks()

    def min_window(self) -> int:
        """The shortest Payments window: time to open tasks, then to void unopened ones."""
        return self.randomness_delay + 2 * self.open_task_blocks + 1


@dataclass(frozen=True)
class TaskInfo:
    task_id: int
    status: TaskStatus
    round: int
    batch_id: int
    request_id: bytes
    charge: int
    stage: int
    stage_operator: str
    stage_owner: str
    stage_commit: StageCommit
    commit_deadline: int
    reveal_deadline: int
    spot_block: int
    open_deadline: int
    input_operator: str = ""
    input_commit: StageCommit | None = None
    deadline: int = 0  # hard: expire() after it
    anchor_block: int = 0
    # the spot check's chunk rule (D, K) fixed when the task opened: the model's registered one
    # (ModelRegistry.set_serving), None for the game's default (params' max_ulp, max_bad)
    registered_rule: tuple[int, int] | None = None


@dataclass(frozen=True)
class MemberInfo:
    owner: str
    round: int
    commitment: bytes
    kind: int  # 0 until revealed, else a VerdictKind
    output_root: bytes
    leaf: int  # position << 16 | chunk named by a FAIL
    opened: bool
    slashed: bool

    @property
    def revealed(self) -> bool:
        return self.kind != 0

    @property
    def verdict(self) -> bool:
        """True when it vouched for the stage (PASS)."""
        return self.kind == VerdictKind.PASS


def _unpack_rule(rule: int) -> tuple[int, int] | None:
    """Task.chunk_rule (1 << 64 | D << 8 | K, or 0) -> (D, K) or None."""
    return ((rule >> 8) & 0xFFFF, rule & 0xFF) if rule else None


class Verification(Binding):
    """`chain.verification`."""

    # -------------------------------------------------------------- views
    def params(self) -> VerificationParams:
        return VerificationParams.from_tuple(self._view("params"))

    def task(self, task_id: int) -> TaskInfo | None:
        t = self._view("tasks", task_id)
        if int(t[0]) == 0:
            return None
        rec, sc, isc = t[3], t[7], t[10]
        return TaskInfo(
            task_id=task_id,
            status=TaskStatus(int(t[0])),
            round=int(t[1]),
            batch_id=int(t[2]),
            request_id=bytes(rec[0]),
            charge=int(rec[5]),
            stage=int(t[4]),
            stage_operator=str(t[5]),
            stage_owner=str(t[6]),
            stage_commit=StageCommit(bytes(sc[0]), int(sc[1]), int(sc[2]), int(sc[3])),
            input_operator=str(t[8]),
            input_commit=StageCommit(bytes(isc[0]), int(isc[1]), int(isc[2]), int(isc[3])),
            anchor_block=int(t[13]),
            commit_deadline=int(t[14]),
            reveal_deadline=int(t[15]),
            spot_block=int(t[16]),
            open_deadline=int(t[17]),
            deadline=int(t[18]),
            registered_rule=_unpack_rule(int(t[22])),
        )

    def chunk_rule(self, task: TaskInfo) -> tuple[int, int]:
        """(D, K) the contract's spot check applies to `task`."""
        if task.registered_rule is not None:
            return task.registered_rule
        p = self.params()
        return p.max_ulp, p.max_bad

    def task_of(self, request_id: bytes) -> int:
        return int(self._view("task_of", request_id))

    def open_tasks(self, batch_id: int) -> int:
        return int(self._view("open_tasks", batch_id))

    def committee(self, task_id: int) -> list[str]:
        return [str(a) for a in self._view("committee", task_id)]

    def member(self, task_id: int, operator: str) -> MemberInfo:
        m = self._view("member", task_id, Web3.to_checksum_address(operator))
        return MemberInfo(str(m[0]), int(m[1]), bytes(m[2]), int(m[3]), bytes(m[4]), int(m[5]),
                          bool(m[6]), bool(m[7]))

    def input_opened(self, task_id: int, rnd: int) -> bool:
        """Whether the input stage opened its spots in round `rnd` (after a NO_INPUT)."""
        return bool(self._view("input_opened", task_id, rnd))

    def opener(self) -> Binding:
        """The TaskOpener (the game's only way in: signature and shape checks, voiding)."""
        b = getattr(self, "_opener_binding", None)
        if b is None:
            from contracts.build import compile_all

            b = Binding(self.rpc, str(self._view("opener")), compile_all()["TaskOpener"].abi,
                        self.signer, self.deploy_block)
            self._opener_binding = b
        return b

    def call_of(self, tx_hash: str) -> tuple[str, dict[str, Any]]:
        """(function name, arguments) of `tx_hash`: a call to the game itself or to its
        TaskOpener (`open_task(batch_id, record, proof, pipelines, stage_commits, signature)`,
        the transaction a TaskOpened event comes from)."""
        tx = self.rpc.raw_request("eth_getTransactionByHash", [tx_hash])
        if tx and str(tx.get("to") or "").lower() == self.opener().address.lower():
            return self.opener().call_of(tx_hash)
        return super().call_of(tx_hash)

    def decode_call(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """Calldata of the game or of its TaskOpener (open_task goes through the opener); no
        chain read: the opener's ABI is the build's."""
        from contracts.build import compile_all

        opener = self.rpc.w3.eth.contract(abi=compile_all()["TaskOpener"].abi)
        try:
            fn, args = opener.decode_function_input(data)
            return fn.fn_name, dict(args)
        except Exception:  # noqa: BLE001 - not the opener's: the game's own (or garbage)
            return super().decode_call(data)

    def is_sampled(self, batch_id: int, request_id: bytes) -> bool:
        return bool(self.opener()._view("is_sampled", batch_id, request_id))

    def batch_seed(self, batch_id: int, anchor_block: int) -> bytes:
        """The seed `is_sampled` uses for a batch: the stored one once a task fixed it, else the
        fresh one from the randomness source's value at `anchor_block` (reverts until it exists
        or once it is too old, like `is_sampled`). With `sample_draw` it decides a whole batch in
        two reads instead of one per record."""
        stored = bytes(self.opener()._view("batch_seed", batch_id))
        if stored != bytes(32):
            return stored
        source = self.rpc.w3.eth.contract(address=Web3.to_checksum_address(self._view("randomness")),
                                          abi=RANDOMNESS_ABI)
        return batch_seed_of(bytes(self.rpc.request(source.functions.value(anchor_block).call)),
                             batch_id)

    def stage_of(self, batch_id: int, request_id: bytes, n_stages: int) -> int:
        """The stage a sampled request's task checks (TaskOpener's draw; reverts until the
        batch's randomness exists): the one whose signature `open_task` needs."""
        return int(self.opener()._view("stage_of", batch_id, request_id, n_stages))

    def suspects(self, owner: str) -> int:
        return int(self._view("suspects", Web3.to_checksum_address(owner)))

    def spot_checks(self, task_id: int) -> list[tuple[int, int]]:
        """(position, chunk) pairs every party opens this round: random spots, then the leaves
        accusers named (raises Revert until drawable)."""
        positions, chunks = self._view("spot_checks", task_id)
        return [(int(p), int(c)) for p, c in zip(positions, chunks, strict=True)]

    # -------------------------------------------------------------- transitions
    def open_task(
        self,
        batch_id: int,
        leaf: Leaf,
        proof: Sequence[bytes],
        pipelines: Sequence[Pipeline],
        stage_commits: Sequence[StageCommit],
        signature: bytes = b"",
        sender: Signer | None = None,
    ) -> tuple[int, TxResult]:
        """Open a sampled record's task (TaskOpener.open_task) with the chosen stage's signature
        over `attestation_digest`; past the time to open, with empty commitments and signature,
        void a sampled record nobody opened. Returns (task id, tx)."""
        tx = self._via_opener(
            "open_task", batch_id, leaf.fields(), list(proof), [p.as_tuple() for p in pipelines],
            [s.as_tuple() for s in stage_commits], bytes(signature), sender=sender,
        )  # the game's events (TaskOpened / TaskVoided, committee)
        return self.task_of(leaf.request_id), tx

    def blame_input(self, task_id: int, input_commit: StageCommit, signature: bytes,
                    sender: Signer | None = None) -> TxResult:
        """Stage-level blame (TaskOpener.blame_input): the input stage's signature on another
        commitment of the task's request and input stage, same shape, other root, proves it sent
        the checked stage other rows than it settled. Slashes and jails it (prover share: the client),
        closes the task UNRESOLVED."""
        return self._via_opener("blame_input", task_id, input_commit.as_tuple(), bytes(signature),
                                sender=sender)

    def _via_opener(self, fn: str, *args: Any, sender: Signer | None = None) -> TxResult:
        """A TaskOpener transaction, its receipt decoded with this (the game's) events."""
        opener = self.opener()
        data = getattr(opener.contract.functions, fn)(*args)._encode_transaction_data()
        receipt = self.rpc.transact(self._sender(sender), opener.address, bytes.fromhex(data[2:]))
        return self._result(receipt)

    def commit_verdict(
        self,
        task_id: int,
        kind: int,
        output_root: bytes,
        salt: bytes,
        leaf: tuple[int, int] = (0, 0),
        sender: Signer | None = None,
    ) -> TxResult:
        """Commit (kind, named leaf and salt stay local until `reveal_verdict`). `kind` is a
        VerdictKind (a bool is read as PASS/FAIL)."""
        me = self._sender(sender).address
        c = verdict_commitment(task_id, me, _kind(kind), output_root, leaf[0], leaf[1], salt)
        return self._send("commit_verdict", task_id, c, sender=sender)

    def reveal_verdict(
        self,
        task_id: int,
        kind: int,
        output_root: bytes,
        salt: bytes,
        leaf: tuple[int, int] = (0, 0),
        sender: Signer | None = None,
    ) -> TxResult:
        return self._send("reveal_verdict", task_id, _kind(kind), output_root, leaf[0], leaf[1],
                          salt, sender=sender)

    def close_votes(self, task_id: int, sender: Signer | None = None) -> TxResult:
        return self._send("close_votes", task_id, sender=sender)

    def open_chunks(
        self, task_id: int, party: str, openings: Sequence[Opening], sender: Signer | None = None
    ) -> TxResult:
        return self._send(
            "open_chunks",
            task_id,
            Web3.to_checksum_address(party),
            [o.as_tuple() for o in openings],
            sender=sender,
        )

    def finalize(self, task_id: int, sender: Signer | None = None) -> TxResult:
        return self._send("finalize", task_id, sender=sender)

    def next_round(self, task_id: int, sender: Signer | None = None) -> TxResult:
        """Seat an escalated task's next committee (once its fresh anchor block is mined)."""
        return self._send("next_round", task_id, sender=sender)

    def expire(self, task_id: int, sender: Signer | None = None) -> TxResult:
        """Close a task past its hard deadline (UNRESOLVED, no rewards)."""
        return self._send("expire", task_id, sender=sender)

    # -------------------------------------------------------------- admin
    def timelock(self) -> int:
        """Blocks every owner change waits after it is queued (0: at once, devnets only)."""
        return int(self._view("delay"))

    def set_params(self, params: VerificationParams, sender: Signer | None = None) -> TxResult:
        """Behind the timelock: `queue_params(params)` first unless the delay is zero."""
        return self._send("set_params", params.as_tuple(), sender=sender)

    def queue_params(self, params: VerificationParams, sender: Signer | None = None) -> TxResult:
        op = keccak(abi_encode([PARAMS_TYPE], [params.as_tuple()]))
        return self._send("queue", op, sender=sender)


PARAMS_TYPE = "(" + ",".join(["uint256"] * 18) + ")"


def _kind(kind: int) -> int:
    if isinstance(kind, bool):
        return int(VerdictKind.PASS if kind else VerdictKind.FAIL)
    return int(kind)
