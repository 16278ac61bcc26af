# pragma version ~=0.4.3
"""
@title Veriplex spot-check library (stateless)
@notice The stage-commitment proof walk and the integer bf16 chunk rule of verifier/ENCODING.md,
        as a stateless contract Verification calls (kept apart so Verification fits the EIP-170
        code size limit). `chunk_root` returns the root an opening implies; `bad_count` counts the
        elements of two opened chunks that break the tolerance rule.
"""

from modules import chunk_rule


@pure
@external
def chunk_root(
    chain_id: uint64, request_id: bytes32, stage: uint16, positions: uint32, hidden_size: uint32,
    n_tokens: uint32, position: uint32, chunk: uint16, hi: bytes32, lo: bytes32,
    siblings: DynArray[bytes32, chunk_rule.MAX_DEPTH],
) -> bytes32:
    """@notice The stage root implied by an opened hidden chunk and its proof (reverts if malformed)."""
    return chunk_rule._chunk_root(
        chain_id, request_id, stage, positions, hidden_size, n_tokens, position, chunk, hi, lo,
        siblings,
    )


@pure
@external
def token_root(
    chain_id: uint64, request_id: bytes32, stage: uint16, positions: uint32, hidden_size: uint32,
    n_tokens: uint32, index: uint32, token_id: uint32,
    siblings: DynArray[bytes32, chunk_rule.MAX_DEPTH],
) -> bytes32:
    """@notice The stage root implied by an opened token leaf and its proof (reverts if malformed)."""
    return chunk_rule._token_root(
        chain_id, request_id, stage, positions, hidden_size, n_tokens, index, token_id, siblings
    )


@pure
@external
def bad_count(c_hi: bytes32, c_lo: bytes32, r_hi: bytes32, r_lo: bytes32, max_ulp: uint256) -> uint256:
    """@notice Elements of two opened chunks more than max_ulp scale ulps apart (NaN/inf count)."""
    return chunk_rule._bad_count(c_hi, c_lo, r_hi, r_lo, max_ulp)
