# pragma version ~=0.4.3
"""
@title Stage-commitment openings and the spot-check chunk rule (verifier/ENCODING.md, version 1)
@notice Pure helpers for SpotCheck (called by Verification): rebuild a hidden-chunk leaf from its domain fields, walk its
        Merkle proof (odd last nodes carried up) to the shape-bound root, and count the elements
        of two opened chunks that break the integer tolerance rule on bf16 bit patterns. Copied
        from the reference `tests/verifier/chunk_check.vy`, which tests hold to the Python
        (`verifier/merkle.py`, `verifier/chunk_rule.py`); tests/contracts hold this copy to both.
"""

MAX_DEPTH: constant(uint256) = 40


@pure
@internal
def _hidden_leaf(
    chain_id: uint64, request_id: bytes32, stage: uint16, position: uint32, chunk: uint16,
    hi: bytes32, lo: bytes32,
) -> bytes32:
    # 0x00 ‖ "vpx" ‖ version 1 ‖ kind 1 ‖ u64 ‖ bytes32 ‖ u16 ‖ u32 ‖ u16 ‖ 64 bytes of bf16
    return keccak256(
        concat(
            x"00", b"vpx", x"01", x"01", convert(chain_id, bytes8), request_id,
            convert(stage, bytes2), convert(position, bytes4), convert(chunk, bytes2), hi, lo,
        )
    )


@pure
@internal
def _root(
    leaf: bytes32, index: uint256, positions: uint32, hidden_size: uint32, n_tokens: uint32,
    siblings: DynArray[bytes32, MAX_DEPTH],
) -> bytes32:
    chunks: uint256 = (convert(hidden_size, uint256) + 31) // 32
    n: uint256 = convert(positions, uint256) * chunks + convert(n_tokens, uint256)
    assert index < n, "verification: leaf index outside the tree"
    h: bytes32 = leaf
    i: uint256 = index
    k: uint256 = 0
    for _: uint256 in range(MAX_DEPTH):
        if n <= 1:
            break
        if i % 2 == 1 or i + 1 < n:
            assert k < len(siblings), "verification: wrong proof length"
            if i % 2 == 1:
                h = keccak256(concat(x"01", siblings[k], h))
            else:
                h = keccak256(concat(x"01", h, siblings[k]))
            k += 1
        i = i // 2
        n = (n + 1) // 2
    assert k == len(siblings), "verification: wrong proof length"
    return keccak256(
        concat(
            x"02", b"vpx", x"01", convert(positions, bytes4), convert(hidden_size, bytes4),
            convert(n_tokens, bytes4), h,
        )
    )


@pure
@internal
def _chunk_root(
    chain_id: uint64, request_id: bytes32, stage: uint16, positions: uint32, hidden_size: uint32,
    n_tokens: uint32, position: uint32, chunk: uint16, hi: bytes32, lo: bytes32,
    siblings: DynArray[bytes32, MAX_DEPTH],
) -> bytes32:
    """@notice The stage root implied by an opened hidden chunk and its proof."""
    assert position < positions, "verification: position outside the committed rows"
    assert convert(chunk, uint256) * 32 < convert(hidden_size, uint256), (
        "verification: chunk outside the row"
    )
    index: uint256 = convert(position, uint256) * (
        (convert(hidden_size, uint256) + 31) // 32
    ) + convert(chunk, uint256)
    leaf: bytes32 = self._hidden_leaf(chain_id, request_id, stage, position, chunk, hi, lo)
    return self._root(leaf, index, positions, hidden_size, n_tokens, siblings)


@pure
@internal
def _token_root(
    chain_id: uint64, request_id: bytes32, stage: uint16, positions: uint32, hidden_size: uint32,
    n_tokens: uint32, index: uint32, token_id: uint32, siblings: DynArray[bytes32, MAX_DEPTH],
) -> bytes32:
    """@notice The stage root implied by an opened token leaf (ENCODING.md token leaf)."""
    assert index < n_tokens, "verification: token index outside the committed tokens"
    leaf: bytes32 = keccak256(
        concat(
            x"00", b"vpx", x"01", x"02", convert(chain_id, bytes8), request_id,
            convert(stage, bytes2), convert(index, bytes4), x"0000", convert(token_id, bytes4),
        )
    )
    chunks: uint256 = (convert(hidden_size, uint256) + 31) // 32
    return self._root(
        leaf, convert(positions, uint256) * chunks + convert(index, uint256), positions,
        hidden_size, n_tokens, siblings,
    )


@pure
@internal
def _unpack(hi: bytes32, lo: bytes32) -> uint256[32]:
    # value 0 sits in the most significant 16 bits of `hi`, value 16 in those of `lo`
    out: uint256[32] = empty(uint256[32])
    h: uint256 = convert(hi, uint256)
    l: uint256 = convert(lo, uint256)
    for j: uint256 in range(16):
        out[j] = (h >> (240 - 16 * j)) & 65535
        out[16 + j] = (l >> (240 - 16 * j)) & 65535
    return out


@pure
@internal
def _exp(x: uint256) -> uint256:
    return (x >> 7) & 255


@pure
@internal
def _value(x: uint256, scale: uint256) -> (int256, bool):
    # x in units of 2^-8 scale ulps (verifier/chunk_rule.py); True when 16+ binades above scale
    e: uint256 = self._exp(x)
    mag: uint256 = x & 127
    if e > 0:
        mag |= 128  # the implicit leading bit of a normal number
    ee: uint256 = max(e, 1)
    v: int256 = 0
    if ee + 8 >= scale:
        s: uint256 = ee + 8 - scale
        if s > 24:
            return 0, True
        v = convert(mag << s, int256)  # mag < 2^8, s <= 24: fits easily
    else:
        v = convert(mag >> (scale - ee - 8), int256)
    if x & 32768 != 0:  # 0x8000, the sign bit
        v = -v
    return v, False


@pure
@internal
def _bad_count(c_hi: bytes32, c_lo: bytes32, r_hi: bytes32, r_lo: bytes32, max_ulp: uint256) -> uint256:
    """@notice Elements of two opened chunks more than max_ulp scale ulps apart (NaN/inf count)."""
    c: uint256[32] = self._unpack(c_hi, c_lo)
    r: uint256[32] = self._unpack(r_hi, r_lo)
    c_max: uint256 = 0
    r_max: uint256 = 0
    for j: uint256 in range(32):
        c_max = max(c_max, self._exp(c[j]))
        r_max = max(r_max, self._exp(r[j]))
    scale: uint256 = max(1, min(c_max, r_max))
    limit: uint256 = max_ulp << 8
    bad: uint256 = 0
    for j: uint256 in range(32):
        if self._exp(c[j]) == 255 or self._exp(r[j]) == 255:  # NaN / infinity
            bad += 1
            continue
        vc: int256 = 0
        vr: int256 = 0
        big_c: bool = False
        big_r: bool = False
        vc, big_c = self._value(c[j], scale)
        vr, big_r = self._value(r[j], scale)
        if big_c or big_r or convert(abs(vc - vr), uint256) > limit:
            bad += 1
    return bad
