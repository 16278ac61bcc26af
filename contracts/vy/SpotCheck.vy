# pragma version ~=0.4.3
"""
@title Veriplex spot-check library (stateless)
@notice The stage-commitment proof walk and the integer bf16 chunk rule of verifier/ENCODING.md,
        as a stateless contract Verification calls (kept apart so Verification fits the EIP-170
        code size limit). `chunk_root` returns the root an opening implies; `bad_count` counts the
        elements of two opened chunks that break the tolerance rule.
"""

from modules import chunk_rule

MAX_LEAVES: constant(uint256) = 20
MAX_COMMITTEE: constant(uint256) = 16
V_PASS: constant(uint8) = 1
V_FAIL: constant(uint8) = 2
TOKEN: constant(uint16) = 65535  # chunk value naming a token leaf

struct Opening:
    hi: bytes32
    lo: bytes32
    siblings: DynArray[bytes32, chunk_rule.MAX_DEPTH]

struct Shape:
    positions: uint32
    hidden_size: uint32
    n_tokens: uint32


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


@pure
@external
def check_openings(
    chain_id: uint64, request_id: bytes32, stage: uint16, shape: Shape, root: bytes32,
    positions: DynArray[uint32, MAX_LEAVES], chunks: DynArray[uint16, MAX_LEAVES],
    openings: DynArray[Opening, MAX_LEAVES],
) -> bool:
    """
    @notice Revert unless every opening proves its leaf (a hidden chunk, or a token leaf when the
            chunk is TOKEN: `hi` = token id, `lo` = 0) against `root`, with zero padding.
    """
    assert len(openings) == len(positions), "verification: wrong number of openings"
    for k: uint256 in range(len(openings), bound=MAX_LEAVES):
        o: Opening = openings[k]
        got: bytes32 = empty(bytes32)
        if chunks[k] == TOKEN:
            assert o.lo == empty(bytes32) and convert(o.hi, uint256) < 2**32, (
                "verification: malformed token opening"
            )
            got = chunk_rule._token_root(
                chain_id, request_id, stage, shape.positions, shape.hidden_size, shape.n_tokens,
                positions[k], convert(convert(o.hi, uint256), uint32), o.siblings,
            )
        else:
            got = chunk_rule._chunk_root(
                chain_id, request_id, stage, shape.positions, shape.hidden_size, shape.n_tokens,
                positions[k], chunks[k], o.hi, o.lo, o.siblings,
            )
            self._check_padding(shape.hidden_size, chunks[k], o.hi, o.lo)
        assert got == root, "verification: opening does not match root"
    return True


@pure
@external
def agreement(
    a: DynArray[bytes32[2], MAX_LEAVES], b: DynArray[bytes32[2], MAX_LEAVES], token_mask: uint256,
    max_ulp: uint256, max_bad: uint256,
) -> uint256:
    """@notice Bit k set iff leaf k of `a` and `b` agree: the chunk rule, or exact token ids
            where bit k of `token_mask` is set."""
    mask: uint256 = 0
    for k: uint256 in range(len(a), bound=MAX_LEAVES):
        if (token_mask >> k) & 1 == 1:
            if a[k][0] == b[k][0]:
                mask |= 1 << k
        elif chunk_rule._bad_count(a[k][0], a[k][1], b[k][0], b[k][1], max_ulp) <= max_bad:
            mask |= 1 << k
    return mask


@pure
@internal
def _check_padding(hidden_size: uint32, chunk: uint16, hi: bytes32, lo: bytes32):
    # Values past d in a last partial chunk must be 0x0000 (ENCODING.md): the chunk rule would
    # otherwise count made-up padding as evidence.
    used: uint256 = convert(hidden_size, uint256) - convert(chunk, uint256) * 32
    if used >= 32:
        return
    if used > 16:
        assert convert(lo, uint256) & ((1 << ((32 - used) * 16)) - 1) == 0, (
            "verification: non-zero chunk padding"
        )
    else:
        assert lo == empty(bytes32), "verification: non-zero chunk padding"
        assert convert(hi, uint256) & ((1 << ((16 - used) * 16)) - 1) == 0, (
            "verification: non-zero chunk padding"
        )


@pure
@external
def judge(
    kinds: DynArray[uint8, MAX_COMMITTEE], masks: DynArray[uint256, MAX_COMMITTEE],
    named: DynArray[uint256, MAX_COMMITTEE], n_leaves: uint256,
) -> (uint256, bool, DynArray[uint8, MAX_COMMITTEE], uint256[MAX_LEAVES], uint256[MAX_LEAVES]):
    """
    @notice One round's judgment from the opened evidence (stage opened). `kinds[i]` is member
            i's verdict kind (0: not judged), `masks[i]` its agreement with the stage leaf by
            leaf, `named[i]` the index of the leaf it named. A leaf is bad when at least two
            members' evidence disagrees with the stage there and outnumbers the evidence that
            agrees; a leaf disputed without such a majority (one against none, a tie, one
            backing the stage) is a split.
    @return (bad leaves bit mask, split, per member: 0 stands, 1 a PASS the evidence
            contradicts, 2 a FAIL whose own evidence agrees at its leaf, 3 a FAIL outweighed
            where nothing is bad, 4 a FAIL whose named leaf is not the bad one; agree counts,
            disagree counts)
    """
    agree_n: uint256[MAX_LEAVES] = empty(uint256[MAX_LEAVES])
    disagree_n: uint256[MAX_LEAVES] = empty(uint256[MAX_LEAVES])
    for i: uint256 in range(len(kinds), bound=MAX_COMMITTEE):
        if kinds[i] == 0:
            continue
        for k: uint256 in range(n_leaves, bound=MAX_LEAVES):
            if (masks[i] >> k) & 1 == 1:
                agree_n[k] += 1
            else:
                disagree_n[k] += 1
    bad: uint256 = 0
    tie: bool = False
    # A leaf is shown wrong by at least two pieces of evidence outnumbering those that back the
    # stage; a leaf some evidence disputes but fewer than two pieces settle either way is a split.
    for k: uint256 in range(n_leaves, bound=MAX_LEAVES):
        if disagree_n[k] > agree_n[k] and disagree_n[k] >= 2:
            bad |= 1 << k
        elif disagree_n[k] > 0 and (disagree_n[k] >= agree_n[k] or agree_n[k] < 2):
            tie = True
    full: uint256 = (1 << n_leaves) - 1
    codes: DynArray[uint8, MAX_COMMITTEE] = []
    for i: uint256 in range(len(kinds), bound=MAX_COMMITTEE):
        c: uint8 = 0
        if kinds[i] == V_PASS and (masks[i] != full or bad != 0):
            c = 1
        elif kinds[i] == V_FAIL:
            if (masks[i] >> named[i]) & 1 == 1:
                c = 2
            elif bad == 0 and not tie:
                c = 3
            elif bad != 0 and (bad >> named[i]) & 1 == 0:
                c = 4
        codes.append(c)
    return bad, tie, codes, agree_n, disagree_n
