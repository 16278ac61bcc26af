"""Committing from leaf hashes computed earlier, and growing the tree row by row, give exactly the
bytes `StageCommitment.build` gives: the same root, every level, every proof."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier import encoding as enc
from verifier.encoding import Domain
from verifier.errors import EncodingError, ProofError
from verifier.merkle import (
    IncrementalCommitment,
    Shape,
    StageCommitment,
    append_rows,
    verify_chunk,
    verify_token,
)

DOMAIN = Domain(chain_id=31337, request_id=b"\x42" * 32, stage=1)

domains = st.builds(Domain, chain_id=st.integers(0, 2**64 - 1),
                    request_id=st.binary(min_size=32, max_size=32), stage=st.integers(0, 2**16 - 1))


@st.composite
def grown(draw):
    """Rows (T, d) as bf16 bits, tokens, how they arrive (chunk sizes) and rewinds on the way."""
    t = draw(st.integers(1, 24))
    d = draw(st.sampled_from([1, 7, 31, 32, 33, 64, 95, 100]))
    vals = draw(st.lists(st.integers(0, 0x7F7F), min_size=t * d, max_size=t * d))
    bits = np.array(vals, dtype=np.uint16).reshape(t, d)
    n_tok = draw(st.sampled_from([0, t + 1, draw(st.integers(0, 40))]))
    tokens = draw(st.lists(st.integers(0, 2**32 - 1), min_size=n_tok, max_size=n_tok))
    cuts = draw(st.lists(st.integers(1, t), max_size=6))
    rewinds = draw(st.lists(st.integers(0, t), max_size=2))
    positions = draw(st.integers(1, t))
    return bits, tokens, cuts, rewinds, positions


def _same_tree(a: StageCommitment, b: StageCommitment) -> bool:
    return (a.root == b.root and a.shape == b.shape and a.tokens == b.tokens
            and len(a.levels) == len(b.levels)
            and all(x.shape == y.shape and (x == y).all() for x, y in zip(a.levels, b.levels, strict=True)))


def _grow(domain: Domain, bits: np.ndarray, cuts, rewinds) -> IncrementalCommitment:
    acc = IncrementalCommitment(domain, bits.shape[1])
    pos = 0
    for c in [*cuts, bits.shape[0]]:
        end = max(pos, min(c, bits.shape[0]))
        acc.append(pos, bits[pos:end])
        pos = end
    for r in rewinds:  # a re-route: forget the tail, then the same rows come again
        acc.truncate(r)
        acc.append(r, bits[r:])
    return acc


@settings(max_examples=150, deadline=None)
@given(domains, grown())
def test_from_leaves_and_a_grown_tree_commit_the_same_bytes_as_build(domain, case):
    bits, tokens, cuts, rewinds, positions = case
    want = StageCommitment.build(domain, bits[:positions], tokens)
    acc = _grow(domain, bits, cuts, rewinds)
    assert acc.rows == bits.shape[0]
    leaves = acc.leaf_hashes(positions)
    assert (leaves == enc.hash_rows(enc.hidden_leaves(domain, bits[:positions]))).all()

    from_leaves = StageCommitment.from_leaves(domain, want.shape, leaves, tokens, bits[:positions])
    assert _same_tree(from_leaves, want) and (from_leaves.bits == want.bits).all()
    assert _same_tree(StageCommitment.from_leaves(domain, want.shape, leaves.tobytes(), tokens), want)
    assert _same_tree(acc.commitment(positions, tokens), want)
    assert acc.root(positions, tokens) == (want.root, want.shape)


@settings(max_examples=40, deadline=None)
@given(grown())
def test_openings_of_a_tree_made_from_leaves_verify_against_builds_root(case):
    bits, tokens, _, _, positions = case
    want = StageCommitment.build(DOMAIN, bits[:positions], tokens)
    c = _grow(DOMAIN, bits, [], []).commitment(positions, tokens, bits=bits[:positions])
    p, k = positions - 1, want.shape.chunks - 1
    got, ref = c.open_chunk(p, k), want.open_chunk(p, k)
    assert got.siblings == ref.siblings and (got.values == ref.values).all()
    assert verify_chunk(want.root, DOMAIN, want.shape, c.open_chunk(p, k))
    if tokens:
        assert verify_token(want.root, DOMAIN, want.shape, c.open_token(len(tokens) - 1))


def test_the_leaf_and_node_helpers_match_their_one_at_a_time_definitions():
    bits = np.arange(5 * 40, dtype=np.uint16).reshape(5, 40)
    full = enc.hidden_leaves(DOMAIN, bits)
    assert (enc.hidden_leaves(DOMAIN, bits[3:], start=3) == full[3 * 2:]).all()
    toks = [0, 7, 2**32 - 1]
    assert [r.tobytes() for r in enc.token_leaves(DOMAIN, toks)] == [
        enc.token_leaf(DOMAIN, i, t) for i, t in enumerate(toks)]
    a, b, c = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    assert enc.hash_pairs(a + b + c + a) == enc.node_hash(a, b) + enc.node_hash(c, a)
    with pytest.raises(EncodingError, match="multiple of 64"):
        enc.hash_pairs(a)
    with pytest.raises(EncodingError, match="token ids must be in"):
        enc.token_leaves(DOMAIN, [2**32])
    with pytest.raises(EncodingError, match="positions"):
        enc.hidden_leaves(DOMAIN, bits, start=-1)


def test_a_copy_grows_apart_from_its_original():
    x = np.random.default_rng(3).standard_normal((6, 70)).astype(np.float32)
    acc = IncrementalCommitment(DOMAIN, 70)
    acc.append(0, x[:4])
    twin = acc.copy()
    acc.append(4, x[4:])
    assert twin.rows == 4 and acc.rows == 6
    assert twin.root(4)[0] == StageCommitment.build(DOMAIN, x[:4]).root
    assert acc.root(6)[0] == StageCommitment.build(DOMAIN, x).root
    assert acc.nbytes > twin.nbytes > 0


def test_bad_input_to_the_incremental_paths_is_refused_with_a_reason():
    x = np.ones((3, 40), dtype=np.float32)
    acc = IncrementalCommitment(DOMAIN, 40)
    acc.append(0, x)
    with pytest.raises(EncodingError, match="in order: got position 5, 3 held"):
        acc.append(5, x)
    with pytest.raises(EncodingError, match=r"must be \(T, 40\)"):
        acc.append(3, np.ones((2, 41), dtype=np.float32))
    with pytest.raises(EncodingError, match="NaN or infinite"):
        acc.append(3, np.full((1, 40), np.nan, dtype=np.float32))
    assert acc.rows == 3
    with pytest.raises(EncodingError, match="needs them held; 3 rows are"):
        acc.root(4)
    with pytest.raises(EncodingError, match="cannot truncate 3 rows to 4"):
        acc.truncate(4)
    shape = Shape(3, 40, 2)
    with pytest.raises(EncodingError, match="commits 2 tokens, got 1"):
        StageCommitment.from_leaves(DOMAIN, shape, acc.leaf_hashes(), [1])
    with pytest.raises(EncodingError, match="want 6 hidden leaf hashes"):
        StageCommitment.from_leaves(DOMAIN, shape, acc.leaf_hashes(2), [1, 2])
    with pytest.raises(EncodingError, match="do not match"):
        StageCommitment.from_leaves(DOMAIN, shape, acc.leaf_hashes(), [1, 2], bits=x[:2])
    no_rows = StageCommitment.from_leaves(DOMAIN, shape, acc.leaf_hashes(), [1, 2])
    with pytest.raises(ProofError, match="without the rows"):
        no_rows.open_chunk(0, 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(domains, st.integers(0, 5), st.integers(0, 4), st.sampled_from([33, 64, 100]),
                          st.sampled_from(["ok", "nan", "late", "wide"])), min_size=1, max_size=6),
       st.sampled_from(["torch", "numpy"]))
def test_many_trees_grown_in_one_pass_equal_each_grown_alone(trees, kind):
    """`append_rows` (a stage hashing one step's rows of every request at once) leaves every tree
    byte for byte as its own `append` would, and as `build` over all its rows; a bad item (NaN,
    out of order, wrong width) fails alone and leaves its tree unchanged."""
    import torch

    rng = np.random.default_rng(len(trees))
    alone, together, items, cases, everything = [], [], [], [], []
    for domain, held, t, d, case in trees:
        first = rng.standard_normal((held, d)).astype(np.float32)
        rows = rng.standard_normal((max(t, int(case != "ok")), d + int(case == "wide"))).astype(np.float32)
        if case == "nan":
            rows[0, 0] = np.nan
        a, b = IncrementalCommitment(domain, d), IncrementalCommitment(domain, d)
        for acc in (a, b):
            acc.append(0, first)
        start = held + 1 if case == "late" else held
        items.append((b, start, torch.from_numpy(rows) if kind == "torch" else rows))
        cases.append(case)
        if case == "ok":
            a.append(start, rows)
        everything.append(np.concatenate([first, rows]) if case == "ok" else first)
        alone.append(a)
        together.append(b)
    errors = append_rows(items)
    assert [e is not None for e in errors] == [c != "ok" for c in cases]
    for a, b, rows in zip(alone, together, everything, strict=True):
        assert a.rows == b.rows == len(rows) and a.nbytes == b.nbytes
        assert all(bytes(x) == bytes(y) for x, y in zip(a._levels, b._levels, strict=True))
        if len(rows):
            assert b.root(b.rows)[0] == StageCommitment.build(b.domain, rows).root
    with pytest.raises(ValueError, match="at most once"):
        append_rows([items[0], items[0]])
