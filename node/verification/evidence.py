"""Pure evidence handling: check fetched rows against a committed root, build and open own trees.

A stage's commitment binds its rows (as bf16 bits) and, on the first and last stage, the request's
token sequence (VERIFY_SPEC §1). `check_against_root` rebuilds the tree from what a FETCH returned
and insists it reproduces the committed root, so a verifier never computes on, or judges against,
rows nobody committed to. `committed_tokens` picks the tokens a stage's commitment covers from what
it reported. `openings` turns a tree and the contract's spot list into `Opening`s.
`forged_evidence` is the accuse policy's material: the claimed rows nudged far enough that the
chunk rule sees them disagree, committed under the same shape so they can be opened on chain.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from contracts.verification import TOKEN_CHUNK, Opening
from node.verification.errors import EvidenceError
from protocol.messages import StageCommit
from verifier.encoding import Domain
from verifier.merkle import StageCommitment


def committed_tokens(sc: StageCommit, tokens: Sequence[int]) -> list[int]:
    """The tokens `sc` covers: none on a middle stage, else the first `n_tokens` reported."""
    if sc.n_tokens == 0:
        return []
    if len(tokens) < sc.n_tokens:
        raise EvidenceError(f"the stage committed {sc.n_tokens} tokens but reported only {len(tokens)}")
    return [int(t) for t in tokens[: sc.n_tokens]]


def check_against_root(chain_id: int, request_id: bytes, stage: int, sc: StageCommit,
                       rows: torch.Tensor | np.ndarray, tokens: Sequence[int]) -> StageCommitment:
    """The stage's tree rebuilt from fetched rows (T, d) and tokens; raises `EvidenceError` unless
    its shape and root are exactly the committed ones."""
    shape = tuple(rows.shape)
    if shape != (sc.positions, sc.hidden_size):
        raise EvidenceError(f"stage {stage} returned rows of shape {shape}; it committed "
                            f"({sc.positions}, {sc.hidden_size})")
    tree = StageCommitment.build(Domain(chain_id, request_id, stage), rows,
                                 committed_tokens(sc, tokens))
    if tree.root != sc.root:
        raise EvidenceError(f"stage {stage}'s fetched rows and tokens give root 0x{tree.root.hex()}, "
                            f"not the committed 0x{sc.root.hex()}")
    return tree


def openings(tree: StageCommitment, spots: Sequence[tuple[int, int]]) -> list[Opening]:
    """The contract's `Opening`s of `tree` at the leaves of `spot_checks` (random spots, then
    the leaves accusers named), in order; chunk TOKEN_CHUNK is the token leaf at that index."""
    out = []
    for p, c in spots:
        if int(c) == TOKEN_CHUNK:
            o = tree.open_token(int(p))
            out.append(Opening.from_token(o.token_id, o.siblings))
        else:
            out.append(Opening.from_chunk(tree.open_chunk(int(p), int(c))))
    return out


def failing_leaf(claimed: StageCommitment, recomputed: StageCommitment, max_ulp: int,
                 max_bad: int) -> tuple[int, int] | None:
    """The first leaf where the stage's claim breaks the on-chain rule against our recomputation
    — a hidden chunk failing the chunk rule (D = max_ulp, K = max_bad), else the first token that
    differs (chunk TOKEN_CHUNK) — the leaf a FAIL names so that its opening is forced. None when
    no single leaf fails: the chain's spot check cannot see what the off-chain check found (a
    score or row limit), so a FAIL would be judged "named leaf is not faulty" and slashed; the
    member votes SUSPECT instead (`node.verification.jobs`)."""
    from verifier.chunk_rule import chunk_bad_counts

    a, b = np.asarray(claimed.bits), np.asarray(recomputed.bits)
    if a.shape == b.shape and a.size:
        P, d = a.shape
        chunks = (d + 31) // 32
        pad = chunks * 32 - d
        a2 = np.pad(a, ((0, 0), (0, pad))).reshape(P * chunks, 32)
        b2 = np.pad(b, ((0, 0), (0, pad))).reshape(P * chunks, 32)
        bad = np.nonzero(chunk_bad_counts(a2, b2, max_ulp) > max_bad)[0]
        if bad.size:
            i = int(bad[0])
            return i // chunks, i % chunks
    for i, (x, y) in enumerate(zip(claimed.tokens, recomputed.tokens, strict=False)):
        if x != y:
            return i, TOKEN_CHUNK
    return None


def forged_evidence(chain_id: int, request_id: bytes, stage: int, claimed: torch.Tensor,
                    tokens: Sequence[int], seed: int = 0) -> StageCommitment:
    """The claimed rows scaled and shifted by a seeded random amount per value — far outside the
    chunk rule — committed as stage `stage` with the same tokens (so the shape matches)."""
    g = torch.Generator().manual_seed(seed)
    x = claimed.detach().to(torch.float32).cpu()
    noise = torch.randn(x.shape, generator=g)
    forged = x * 1.5 + noise * (x.abs().mean() + 1.0)
    return StageCommitment.build(Domain(chain_id, request_id, stage), forged, list(tokens))
