# pragma version ~=0.4.3
"""
@title Batch Merkle tree of settled requests
@notice Pure helpers for Payments: the leaf of a settled record, the root over a batch's leaves,
        and proof verification. Sorted-pair hashing (snekmate/OpenZeppelin convention); an
        unpaired last node moves up unchanged. `contracts/batch.py` mirrors this exactly.
"""

from snekmate.utils import merkle_proof_verification as merkle

MAX_RECORDS: constant(uint256) = 256
MAX_PROOF: constant(uint256) = 32


@pure
@internal
def _leaf(
    request_id: bytes32,
    key: bytes32,
    pipeline_index: uint256,
    tokens_in: uint256,
    tokens_out: uint256,
    charge: uint256,
    commitment_root: bytes32,
) -> bytes32:
    return keccak256(
        abi_encode(request_id, key, pipeline_index, tokens_in, tokens_out, charge, commitment_root)
    )


@pure
@internal
def _merkle_root(leaves: bytes32[MAX_RECORDS], n: uint256) -> bytes32:
    """Sorted-pair tree (snekmate/OpenZeppelin convention); an odd last node moves up as is."""
    level: bytes32[MAX_RECORDS] = leaves
    width: uint256 = n
    for _: uint256 in range(9):  # ceil(log2(MAX_RECORDS)) + 1 levels at most
        if width == 1:
            break
        half: uint256 = 0
        for j: uint256 in range(MAX_RECORDS // 2 + 1):
            i: uint256 = 2 * j
            if i >= width:
                break
            if i + 1 < width:
                level[half] = merkle._hash_pair(level[i], level[i + 1])
            else:
                level[half] = level[i]
            half += 1
        width = half
    return level[0]


@pure
@internal
def _verify(proof: DynArray[bytes32, MAX_PROOF], root: bytes32, leaf: bytes32) -> bool:
    h: bytes32 = leaf
    for sibling: bytes32 in proof:
        h = merkle._hash_pair(h, sibling)
    return h == root
