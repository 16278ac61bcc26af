"""What an honest committee member names and opens, for tests that play the verification game by
hand on a real chain (the audit's and the explorer's worlds)."""

from __future__ import annotations

from contracts.verification import TOKEN_CHUNK, Opening, VerificationParams
from verifier.chunk_rule import chunk_passes
from verifier.merkle import StageCommitment


def failing_leaf(claim: StageCommitment, truth: StageCommitment,
                 params: VerificationParams) -> tuple[int, int]:
    """The first leaf (position, chunk) where the stage's claim breaks the chunk rule against the
    truth — a token leaf (chunk TOKEN_CHUNK) if the token ids differ."""
    if claim.tokens != truth.tokens:
        i = next(i for i, (a, b) in enumerate(zip(claim.tokens, truth.tokens, strict=True))
                 if a != b)
        return i, TOKEN_CHUNK
    cb, tb = claim.bits, truth.bits
    d = cb.shape[1]
    for p in range(cb.shape[0]):
        for c in range((d + 31) // 32):
            if not chunk_passes(cb[p, c * 32:(c + 1) * 32], tb[p, c * 32:(c + 1) * 32],
                                params.max_ulp, params.max_bad):
                return p, c
    raise AssertionError("the forged claim passes the chunk rule")


def openings(c: StageCommitment, spots: list[tuple[int, int]]) -> list[Opening]:
    """The openings of `spots` (chunk and token leaves) from a commitment."""
    out = []
    for p, k in spots:
        if k == TOKEN_CHUNK:
            o = c.open_token(p)
            out.append(Opening.from_token(o.token_id, o.siblings))
        else:
            out.append(Opening.from_chunk(c.open_chunk(p, k)))
    return out
