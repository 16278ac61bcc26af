"""Pure helpers for settlement batches: request ids, record leaves, Merkle roots and proofs.

These mirror `Payments.vy` exactly (tests compare them with the contract), so a gateway can
predict a batch's root, and the verification role or an auditor can prove that a record is in a
batch. Tree shape: leaves in record order; each level hashes adjacent pairs with the smaller hash
first (snekmate/OpenZeppelin "sorted pair" convention); an unpaired last node moves up unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_abi import encode as abi_encode
from eth_utils import keccak, to_canonical_address


@dataclass(frozen=True)
class Stage:
    operator: str
    layer_start: int
    layer_end: int


@dataclass(frozen=True)
class Pipeline:
    model_id: int
    stages: tuple[Stage, ...]

    def as_tuple(self) -> tuple[object, ...]:
        return (self.model_id, [(s.operator, s.layer_start, s.layer_end) for s in self.stages])


@dataclass(frozen=True)
class Record:
    """One request as the gateway settles it (indices point into the batch's tables)."""

    seq: int
    key_index: int
    pipeline_index: int
    tokens_in: int
    tokens_out: int
    charge: int
    commitment_root: bytes

    def as_tuple(self) -> tuple[object, ...]:
        return (
            self.seq,
            self.key_index,
            self.pipeline_index,
            self.tokens_in,
            self.tokens_out,
            self.charge,
            self.commitment_root,
        )


@dataclass(frozen=True)
class Leaf:
    """What a record's Merkle leaf commits to (the form `refund` and auditors use)."""

    request_id: bytes
    key_hash: bytes
    pipeline_index: int
    tokens_in: int
    tokens_out: int
    charge: int
    commitment_root: bytes

    def fields(self) -> tuple[bytes, bytes, int, int, int, int, bytes]:
        """The leaf's fields in the contract's order (its hash preimage and call arguments)."""
        return (self.request_id, self.key_hash, self.pipeline_index, self.tokens_in,
                self.tokens_out, self.charge, self.commitment_root)

    def hash(self) -> bytes:
        return keccak(
            abi_encode(
                ["bytes32", "bytes32", "uint256", "uint256", "uint256", "uint256", "bytes32"],
                list(self.fields()),
            )
        )


def request_id(chain_id: int, payments: str, gateway: str, seq: int) -> bytes:
    """keccak256(abi_encode(chain id, Payments address, gateway, seq)) — as the contract."""
    return keccak(
        abi_encode(
            ["uint256", "address", "address", "uint256"],
            [chain_id, to_canonical_address(payments), to_canonical_address(gateway), seq],
        )
    )


def leaves_of(
    chain_id: int, payments: str, gateway: str, keys: list[bytes], records: list[Record]
) -> list[Leaf]:
    return [
        Leaf(
            request_id(chain_id, payments, gateway, r.seq),
            keys[r.key_index],
            r.pipeline_index,
            r.tokens_in,
            r.tokens_out,
            r.charge,
            r.commitment_root,
        )
        for r in records
    ]


def _pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


def merkle_root(leaf_hashes: list[bytes]) -> bytes:
    if not leaf_hashes:
        raise ValueError("a batch needs at least one record")
    level = list(leaf_hashes)
    while len(level) > 1:
        level = [
            _pair(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
            for i in range(0, len(level), 2)
        ]
    return level[0]


def merkle_proof(leaf_hashes: list[bytes], index: int) -> list[bytes]:
    """Sibling hashes from leaf `index` up to the root."""
    if not 0 <= index < len(leaf_hashes):
        raise ValueError(f"index {index} outside a batch of {len(leaf_hashes)} records")
    proof: list[bytes] = []
    level = list(leaf_hashes)
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        level = [
            _pair(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
            for i in range(0, len(level), 2)
        ]
        index //= 2
    return proof


def verify_proof(proof: list[bytes], root: bytes, leaf_hash: bytes) -> bool:
    h = leaf_hash
    for sibling in proof:
        h = _pair(h, sibling)
    return h == root
