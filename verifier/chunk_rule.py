"""The integer chunk rule the verification contract applies to opened chunks — its Python reference.

One opened chunk is 32 bf16 bit patterns from each side (the stage's claimed values `c`, a
verifier's recomputed values `r`). The rule measures each element's difference in units of the
chunk's *scale ulp* — the ulp of its largest element — rather than in the element's own ulp, because
benign noise is absolute at the scale of the row: an element near zero can flip sign or lose many
of its own ulps through cancellation while differing from the other side by a tiny fraction of the
chunk's scale. Per-element ulp counting either fails honest chunks or must tolerate so much that
quantized weights pass (measured in README.md). The scale is the *smaller* side's, so a cheat cannot
widen the tolerance by inflating one value.

Exactly, in integers (what the contract does, element by element):

    exp(x)  = (x >> 7) & 0xFF                      # biased exponent
    E       = max(1, min(max_i exp(c_i), max_i exp(r_i)))
    ee(x)   = max(exp(x), 1)                       # subnormals scale like exponent 1
    mag(x)  = (x & 0x7F) | (0x80 if exp(x) else 0)
    s(x)    = ee(x) − E + 8                         # fixed point: 8 bits below the scale ulp
    v(x)    = ±(mag(x) << s(x)) if s(x) >= 0 else ±(mag(x) >> −s(x))   # sign from bit 15
    bad_i   = exp(c_i) == 0xFF or exp(r_i) == 0xFF          # NaN / infinity
              or s(c_i) > 24 or s(r_i) > 24                  # > 2^16 scale ulps: certainly apart
              or |v(c_i) − v(r_i)| > D · 256
    pass    = count(bad_i) <= K

`v` is at most 2^32 in magnitude, so everything fits a uint256 / int256 comfortably.
"""

from __future__ import annotations

import numpy as np

from verifier.encoding import CHUNK, pad_rows
from verifier.errors import ToleranceError

FRACTION_BITS = 8  # fixed-point bits below the scale ulp
MAX_SHIFT = 24  # s(x) beyond this (16 binades above the scale) counts as bad outright


def _fields(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = bits.astype(np.int64)
    exp = (b >> 7) & 0xFF
    mag = (b & 0x7F) | np.where(exp > 0, 0x80, 0)
    sign = np.where(b & 0x8000, -1, 1)
    return exp, mag, sign


def chunk_bad_mask(claimed_bits: np.ndarray, recomputed_bits: np.ndarray, max_ulp: int) -> np.ndarray:
    """Which elements of (T, d) bf16 rows (zero-padded to whole chunks) the rule calls bad → bool
    (T, chunks, 32)."""
    return chunk_scaled_distance(claimed_bits, recomputed_bits) > (max_ulp << FRACTION_BITS)


def chunk_scaled_distance(claimed_bits: np.ndarray, recomputed_bits: np.ndarray) -> np.ndarray:
    """Per element of (T, d) bf16 rows (zero-padded to whole chunks), |v(c) − v(r)| in 2⁻⁸ scale
    ulps, or a huge value where the rule calls the element bad whatever D → int64 (T, chunks, 32);
    `chunk_bad_mask(c, r, D)` is `chunk_scaled_distance(c, r) > D · 256`."""
    c, r = pad_rows(np.asarray(claimed_bits, np.uint16)), pad_rows(np.asarray(recomputed_bits, np.uint16))
    if c.shape != r.shape:
        raise ToleranceError(f"claimed {c.shape} and recomputed {r.shape} rows differ in shape")
    t, w = c.shape
    c, r = c.reshape(t, w // CHUNK, CHUNK), r.reshape(t, w // CHUNK, CHUNK)
    ec, mc, sc = _fields(c)
    er, mr, sr = _fields(r)
    scale = np.maximum(1, np.minimum(ec.max(axis=2), er.max(axis=2)))[..., None]

    def value(exp: np.ndarray, mag: np.ndarray, sign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = np.maximum(exp, 1) - scale + FRACTION_BITS
        too_big = s > MAX_SHIFT
        s = np.minimum(s, MAX_SHIFT)
        v = np.where(s >= 0, mag << np.maximum(s, 0), mag >> np.minimum(np.maximum(-s, 0), 16))
        return sign * v, too_big

    vc, big_c = value(ec, mc, sc)
    vr, big_r = value(er, mr, sr)
    always = (ec == 0xFF) | (er == 0xFF) | big_c | big_r
    return np.where(always, np.int64(1) << 62, np.abs(vc - vr))


def worst_chunk_counts(claimed_bits: np.ndarray, recomputed_bits: np.ndarray,
                       candidates: tuple[int, ...]) -> tuple[int, ...]:
    """The worst chunk's bad count for each D in `candidates` (one pass over the rows)."""
    dist = chunk_scaled_distance(claimed_bits, recomputed_bits)
    return tuple(int((dist > (d << FRACTION_BITS)).sum(axis=2).max()) for d in candidates)


def chunk_bad_counts(claimed_bits: np.ndarray, recomputed_bits: np.ndarray, max_ulp: int) -> np.ndarray:
    """Bad elements per chunk of (T, d) bf16 rows → int (T, chunks)."""
    return chunk_bad_mask(claimed_bits, recomputed_bits, max_ulp).sum(axis=2)


def chunk_bad_count(claimed: np.ndarray, recomputed: np.ndarray, max_ulp: int) -> int:
    """Bad elements of one opened chunk (32 bf16 bit patterns each side)."""
    c, r = np.asarray(claimed, dtype=np.uint16), np.asarray(recomputed, dtype=np.uint16)
    if c.shape != (CHUNK,) or r.shape != (CHUNK,):
        raise ToleranceError(f"a chunk holds {CHUNK} bf16 values; got shapes {c.shape} and {r.shape}")
    if max_ulp < 0:
        raise ToleranceError(f"max_ulp ({max_ulp}) must be >= 0")
    return int(chunk_bad_counts(c[None, :], r[None, :], max_ulp)[0, 0])


def chunk_passes(claimed: np.ndarray, recomputed: np.ndarray, max_ulp: int, max_bad: int) -> bool:
    """The on-chain spot-check rule: at most `max_bad` of the 32 elements are bad."""
    return chunk_bad_count(claimed, recomputed, max_ulp) <= max_bad
