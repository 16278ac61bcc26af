"""A stage's Merkle commitment: every field moves the root, openings verify, tampered ones fail."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier import encoding as enc
from verifier.encoding import Domain
from verifier.errors import EncodingError, ProofError
from verifier.merkle import (
    ChunkOpening,
    Shape,
    StageCommitment,
    TokenOpening,
    check_chunk,
    check_token,
    fold_path,
    proof_length,
    verify_chunk,
    verify_token,
)

DOMAIN = Domain(chain_id=1, request_id=b"\x42" * 32, stage=0)

bits_arrays = st.tuples(st.integers(1, 9), st.integers(1, 100)).flatmap(
    lambda s: st.lists(st.integers(0, 0x7F7F), min_size=s[0] * s[1], max_size=s[0] * s[1]).map(
        lambda v: np.array(v, dtype=np.uint16).reshape(s)))
token_lists = st.lists(st.integers(0, 2**32 - 1), max_size=6)
domains = st.builds(Domain, chain_id=st.integers(0, 2**64 - 1), request_id=st.binary(min_size=32, max_size=32),
                    stage=st.integers(0, 2**16 - 1))


def naive_root(domain: Domain, bits: np.ndarray, tokens) -> bytes:
    """The documented tree, written out the slow, obvious way."""
    padded = enc.pad_rows(bits)
    leaves = [enc.keccak(enc.hidden_leaf(domain, p, c, padded[p, 32 * c:32 * c + 32]))
              for p in range(bits.shape[0]) for c in range(padded.shape[1] // 32)]
    leaves += [enc.keccak(enc.token_leaf(domain, i, t)) for i, t in enumerate(tokens)]
    level = leaves
    while len(level) > 1:
        nxt = [enc.node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return enc.root_hash(bits.shape[0], bits.shape[1], len(tokens), level[0])


@settings(max_examples=60, deadline=None)
@given(bits_arrays, token_lists, domains)
def test_the_fast_tree_equals_the_obvious_tree(bits, tokens, domain):
    assert StageCommitment.build(domain, bits, tokens).root == naive_root(domain, bits, tokens)


@settings(max_examples=80, deadline=None)
@given(bits_arrays, st.data())
def test_changing_any_value_bit_or_position_changes_the_root(bits, data):
    root = StageCommitment.build(DOMAIN, bits).root
    changed = bits.copy()
    p = data.draw(st.integers(0, bits.shape[0] - 1))
    i = data.draw(st.integers(0, bits.shape[1] - 1))
    changed[p, i] ^= np.uint16(1 << data.draw(st.integers(0, 14)))
    assert StageCommitment.build(DOMAIN, changed).root != root
    if bits.shape[0] > 1 and not (bits[0] == bits[-1]).all():  # rows swapped between positions
        assert StageCommitment.build(DOMAIN, bits[::-1].copy()).root != root


@settings(max_examples=60, deadline=None)
@given(bits_arrays, domains, st.sampled_from(["chain_id", "request_id", "stage"]), st.data())
def test_changing_any_domain_field_changes_the_root(bits, domain, field, data):
    if field == "request_id":
        new = data.draw(st.binary(min_size=32, max_size=32).filter(lambda b: b != domain.request_id))
    else:
        hi = 2**64 - 1 if field == "chain_id" else 2**16 - 1
        new = data.draw(st.integers(0, hi).filter(lambda v: v != getattr(domain, field)))
    other = dataclasses.replace(domain, **{field: new})
    assert StageCommitment.build(other, bits).root != StageCommitment.build(domain, bits).root


@settings(max_examples=40, deadline=None)
@given(bits_arrays, token_lists, st.data())
def test_changing_a_token_or_dropping_or_adding_one_changes_the_root(bits, tokens, data):
    root = StageCommitment.build(DOMAIN, bits, tokens).root
    assert StageCommitment.build(DOMAIN, bits, tokens + [7]).root != root
    if tokens:
        i = data.draw(st.integers(0, len(tokens) - 1))
        other = list(tokens)
        other[i] = (other[i] + 1) % 2**32
        assert StageCommitment.build(DOMAIN, bits, other).root != root
        assert StageCommitment.build(DOMAIN, bits, tokens[:-1]).root != root


def test_the_same_values_under_another_shape_give_another_root():
    bits = np.arange(64, dtype=np.uint16).reshape(2, 32)
    roots = {StageCommitment.build(DOMAIN, b).root for b in (bits, bits.reshape(1, 64), bits[:, :31])}
    assert len(roots) == 3


@settings(max_examples=60, deadline=None)
@given(bits_arrays, token_lists, st.data())
def test_every_opening_verifies_and_any_tampering_fails(bits, tokens, data):
    c = StageCommitment.build(DOMAIN, bits, tokens)
    p = data.draw(st.integers(0, c.shape.positions - 1))
    k = data.draw(st.integers(0, c.shape.chunks - 1))
    o = c.open_chunk(p, k)
    assert np.array_equal(o.values[: min(32, bits.shape[1] - 32 * k)], bits[p, 32 * k:32 * k + 32])
    assert verify_chunk(c.root, DOMAIN, c.shape, o)
    j = data.draw(st.integers(0, 31))
    vals = o.values.copy()
    vals[j] ^= np.uint16(1)
    assert not verify_chunk(c.root, DOMAIN, c.shape, dataclasses.replace(o, values=vals))
    if o.siblings:
        s = data.draw(st.integers(0, len(o.siblings) - 1))
        sib = list(o.siblings)
        sib[s] = bytes([sib[s][0] ^ 1]) + sib[s][1:]
        assert not verify_chunk(c.root, DOMAIN, c.shape, dataclasses.replace(o, siblings=tuple(sib)))
    other_domain = dataclasses.replace(DOMAIN, stage=1)
    assert not verify_chunk(c.root, other_domain, c.shape, o)
    for i in range(len(tokens)):
        t = c.open_token(i)
        assert verify_token(c.root, DOMAIN, c.shape, t)
        assert not verify_token(c.root, DOMAIN, c.shape, dataclasses.replace(t, token_id=t.token_id ^ 1))


def test_an_opening_cannot_be_moved_to_another_position_or_chunk():
    bits = np.tile(np.arange(64, dtype=np.uint16), (4, 1))  # identical rows: same values everywhere
    c = StageCommitment.build(DOMAIN, bits)
    o = c.open_chunk(1, 0)
    for pos, chunk in ((2, 0), (1, 1), (0, 0)):
        moved = dataclasses.replace(o, position=pos, chunk=chunk)
        with pytest.raises(ProofError, match="root"):
            check_chunk(c.root, DOMAIN, c.shape, moved)


def test_malformed_openings_are_refused_with_the_reason():
    bits = np.ones((5, 40), dtype=np.uint16)
    c = StageCommitment.build(DOMAIN, bits, [1, 2])
    o = c.open_chunk(4, 1)
    with pytest.raises(ProofError, match=r"position 5 is outside the committed rows \[0, 5\)"):
        check_chunk(c.root, DOMAIN, c.shape, dataclasses.replace(o, position=5))
    with pytest.raises(ProofError, match=r"chunk 2 is outside \[0, 2\)"):
        check_chunk(c.root, DOMAIN, c.shape, dataclasses.replace(o, chunk=2))
    with pytest.raises(ProofError, match="leaf 9 of 12 needs 3 siblings, got 2"):
        check_chunk(c.root, DOMAIN, c.shape, dataclasses.replace(o, siblings=o.siblings[:-1]))
    with pytest.raises(ProofError, match="sibling 0 must be 32 bytes"):
        check_chunk(c.root, DOMAIN, c.shape, dataclasses.replace(o, siblings=(b"\x00" * 31,) + o.siblings[1:]))
    vals = o.values.copy()
    vals[20] = 1  # hidden size 40: chunk 1 holds 8 values, the rest is padding
    with pytest.raises(ProofError, match="padding values past hidden size 40 must be zero"):
        check_chunk(c.root, DOMAIN, c.shape, dataclasses.replace(o, values=vals))
    with pytest.raises(ProofError, match="uint16"):
        check_chunk(c.root, DOMAIN, c.shape, dataclasses.replace(o, values=o.values.astype(np.int32)))
    with pytest.raises(ProofError, match=r"token index 2 is outside"):
        check_token(c.root, DOMAIN, c.shape, TokenOpening(2, 0, c.open_token(1).siblings))
    with pytest.raises(ProofError, match="token id"):
        check_token(c.root, DOMAIN, c.shape, dataclasses.replace(c.open_token(1), token_id=-1))


def test_a_root_claimed_for_another_shape_rejects_valid_looking_openings():
    c = StageCommitment.build(DOMAIN, np.ones((6, 32), dtype=np.uint16))
    o = c.open_chunk(2, 0)
    with pytest.raises(ProofError):
        check_chunk(c.root, DOMAIN, Shape(8, 32), o)


@given(st.integers(1, 5000), st.data())
def test_proof_lengths_follow_the_carry_up_rule(count, data):
    index = data.draw(st.integers(0, count - 1))
    n = proof_length(index, count)
    assert n <= max(1, (count - 1).bit_length())
    if count & (count - 1) == 0:  # a full tree: every leaf has log2(count) siblings
        assert n == count.bit_length() - 1
    with pytest.raises(ProofError):
        fold_path(b"\x00" * 32, index, count, [b"\x00" * 32] * (n + 1))


def test_openings_round_trip_through_json():
    c = StageCommitment.build(DOMAIN, np.arange(3 * 64, dtype=np.uint16).reshape(3, 64))
    o = c.open_chunk(2, 1)
    back = ChunkOpening.from_json(o.to_json())
    assert back.position == 2 and back.chunk == 1 and back.siblings == o.siblings
    assert np.array_equal(back.values, o.values)
    assert verify_chunk(c.root, DOMAIN, c.shape, back)
    with pytest.raises(ProofError, match="malformed chunk opening"):
        ChunkOpening.from_json({"position": 0})
    with pytest.raises(ProofError, match="values must be 64 bytes"):
        ChunkOpening.from_json({**o.to_json(), "values": "0x00"})


def test_bad_rows_are_refused_before_committing():
    with pytest.raises(EncodingError, match="2-D"):
        StageCommitment.build(DOMAIN, np.zeros(32, dtype=np.float32))
    with pytest.raises(EncodingError, match="NaN"):
        StageCommitment.build(DOMAIN, np.full((2, 32), np.nan, dtype=np.float32))
    with pytest.raises(EncodingError, match="positions >= 1"):
        StageCommitment.build(DOMAIN, np.zeros((0, 32), dtype=np.float32))


def test_a_torch_bf16_tensor_and_its_float32_copy_commit_to_the_same_root():
    import torch

    t = torch.randn(9, 96).to(torch.bfloat16)
    assert StageCommitment.build(DOMAIN, t).root == StageCommitment.build(DOMAIN, t.float()).root
