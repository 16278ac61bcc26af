"""Typed wrapper of the Verification contract, plus the pure encodings it shares with Python.

A request's `commitment_root` (in its settlement record) is `commitment_root(stage_commits)`: the
keccak of the ABI-encoded list of per-stage `StageCommit(root, positions, hidden_size, n_tokens)`.
Verdict commitments are `verdict_commitment(task_id, member, verdict, output_root, salt)`. An
opened chunk goes on chain as `Opening.from_values(values, siblings)` (two words of bf16 bits).
`Verification` exposes one method per state transition of the contract (see contracts/README.md,
"Verification"): `open_task`, `commit_verdict`, `reveal_verdict`, `close_votes`, `open_chunks`,
`finalize`, `refund_client`, and the views a worker or auditor needs.
"""

from __future__ import annotations

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


class TaskStatus(IntEnum):
    """A task's status on chain (the contract's uint8 constants)."""

    ABSENT = 0
    VOTING = 1
    OPENING = 2
    PASSED = 3
    FRAUD = 4
    REFUNDED = 5
    UNRESOLVED = 6


BPS = 10_000
# Every randomness source (the devnet's BlockhashRandomness, a VRF, a beacon) answers `value(block)`.
RANDOMNESS_ABI = [{"type": "function", "name": "value", "stateMutability": "view",
                   "inputs": [{"name": "block_number", "type": "uint256"}],
                   "outputs": [{"name": "", "type": "bytes32"}]}]


def anchor_block(release_block: int, verification_window: int, randomness_delay: int) -> int:
    """The block whose randomness samples a batch (`_anchor`): `randomness_delay` blocks after its
    settle block, which is its release block minus the Payments verification window."""
    return release_block - verification_window + randomness_delay


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
    task_id: int, member: str, verdict: bool, output_root: bytes, salt: bytes
) -> bytes:
    """keccak256(abi_encode(task_id, member, verdict, output_root, salt)) — what a member commits."""
    return keccak(
        abi_encode(
            ["uint256", "address", "bool", "bytes32", "bytes32"],
            [task_id, to_canonical_address(member), verdict, output_root, salt],
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
    verifier_reward_wei: int = 10**15

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
        return cls(**{name: getattr(section, name) for name in cls.field_names()})


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


@dataclass(frozen=True)
class MemberInfo:
    owner: str
    round: int
    commitment: bytes
    revealed: bool
    verdict: bool
    output_root: bytes
    opened: bool
    agrees: bool
    slashed: bool


class Verification(Binding):
    """`chain.verification`."""

    # -------------------------------------------------------------- views
    def params(self) -> VerificationParams:
        return VerificationParams.from_tuple(self._view("params"))

    def task(self, task_id: int) -> TaskInfo | None:
        t = self._view("tasks", task_id)
        if int(t[0]) == 0:
            return None
        rec, sc = t[3], t[7]
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
            commit_deadline=int(t[9]),
            reveal_deadline=int(t[10]),
            spot_block=int(t[11]),
            open_deadline=int(t[12]),
        )

    def task_of(self, request_id: bytes) -> int:
        return int(self._view("task_of", request_id))

    def open_tasks(self, batch_id: int) -> int:
        return int(self._view("open_tasks", batch_id))

    def committee(self, task_id: int) -> list[str]:
        return [str(a) for a in self._view("committee", task_id)]

    def member(self, task_id: int, operator: str) -> MemberInfo:
        m = self._view("member", task_id, Web3.to_checksum_address(operator))
        return MemberInfo(
            str(m[0]),
            int(m[1]),
            bytes(m[2]),
            bool(m[3]),
            bool(m[4]),
            bytes(m[5]),
            bool(m[6]),
            bool(m[7]),
            bool(m[8]),
        )

    def is_sampled(self, batch_id: int, request_id: bytes) -> bool:
        return bool(self._view("is_sampled", batch_id, request_id))

    def batch_seed(self, batch_id: int, anchor_block: int) -> bytes:
        """The seed `is_sampled` uses for a batch: the stored one once a task fixed it, else the
        fresh one from the randomness source's value at `anchor_block` (reverts until it exists
        or once it is too old, like `is_sampled`). With `sample_draw` it decides a whole batch in
        two reads instead of one per record."""
        stored = bytes(self._view("batch_seed", batch_id))
        if stored != bytes(32):
            return stored
        source = self.rpc.w3.eth.contract(address=Web3.to_checksum_address(self._view("randomness")),
                                          abi=RANDOMNESS_ABI)
        return batch_seed_of(bytes(self.rpc.request(source.functions.value(anchor_block).call)),
                             batch_id)

    def spot_checks(self, task_id: int) -> list[tuple[int, int]]:
        """(position, chunk) pairs to open this round (raises Revert until drawable)."""
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
        sender: Signer | None = None,
    ) -> tuple[int, TxResult]:
        tx = self._send(
            "open_task",
            batch_id,
            leaf.fields(),
            list(proof),
            [p.as_tuple() for p in pipelines],
            [s.as_tuple() for s in stage_commits],
            sender=sender,
        )
        return int(tx.event("TaskOpened").args["task_id"]), tx

    def commit_verdict(
        self,
        task_id: int,
        verdict: bool,
        output_root: bytes,
        salt: bytes,
        sender: Signer | None = None,
    ) -> TxResult:
        """Commit (the verdict and salt stay local until `reveal_verdict`)."""
        me = self._sender(sender).address
        c = verdict_commitment(task_id, me, verdict, output_root, salt)
        return self._send("commit_verdict", task_id, c, sender=sender)

    def reveal_verdict(
        self,
        task_id: int,
        verdict: bool,
        output_root: bytes,
        salt: bytes,
        sender: Signer | None = None,
    ) -> TxResult:
        return self._send("reveal_verdict", task_id, verdict, output_root, salt, sender=sender)

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

    def refund_client(
        self, task_id: int, proof: Sequence[bytes], sender: Signer | None = None
    ) -> TxResult:
        return self._send("refund_client", task_id, list(proof), sender=sender)

    # -------------------------------------------------------------- admin
    def set_params(self, params: VerificationParams, sender: Signer | None = None) -> TxResult:
        return self._send("set_params", params.as_tuple(), sender=sender)

    def set_randomness(self, source: str, sender: Signer | None = None) -> TxResult:
        return self._send("set_randomness", Web3.to_checksum_address(source), sender=sender)
