"""The encoding is checkable on chain: a Vyper reference (chunk_check.vy) agrees with the Python one.

`chunk_check.vy` rebuilds leaves from their domain fields, walks proofs and applies the chunk rule
exactly as ENCODING.md describes; the verification contract copies its functions. Run in-process
with titanoboa.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier.chunk_rule import chunk_bad_count
from verifier.encoding import Domain
from verifier.merkle import StageCommitment

boa = pytest.importorskip("boa")
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def checker():
    return boa.load(str(HERE / "chunk_check.vy"))


def halves(values: np.ndarray) -> tuple[bytes, bytes]:
    raw = np.asarray(values, dtype=np.uint16).astype(">u2").tobytes()
    return raw[:32], raw[32:]


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(1, 130), st.integers(0, 5), st.integers(0, 2**64 - 1),
       st.binary(min_size=32, max_size=32), st.integers(0, 2**16 - 1), st.data())
def test_the_contract_derives_the_same_root_from_any_opening(checker, t, d, n_tok, chain, req, stage, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32)))
    dom = Domain(chain, req, stage)
    tokens = [int(v) for v in rng.integers(0, 2**32, n_tok)]
    c = StageCommitment.build(dom, rng.standard_normal((t, d)).astype(np.float32), tokens)
    p, k = data.draw(st.integers(0, t - 1)), data.draw(st.integers(0, c.shape.chunks - 1))
    o = c.open_chunk(p, k)
    hi, lo = halves(o.values)
    root = checker.chunk_root(chain, req, stage, t, d, n_tok, p, k, hi, lo, list(o.siblings))
    assert root == c.root
    if n_tok:
        i = data.draw(st.integers(0, n_tok - 1))
        to = c.open_token(i)
        assert checker.token_root(chain, req, stage, t, d, n_tok, i, to.token_id, list(to.siblings)) == c.root
        assert checker.token_root(chain, req, stage, t, d, n_tok, i, to.token_id ^ 1, list(to.siblings)) != c.root


def test_the_contract_reverts_on_bad_indices_and_proof_lengths(checker):
    dom = Domain(1, b"\x01" * 32, 0)
    c = StageCommitment.build(dom, np.ones((4, 64), dtype=np.float32))
    o = c.open_chunk(3, 1)
    hi, lo = halves(o.values)
    args = (1, dom.request_id, 0, 4, 64, 0)
    with boa.reverts("verify: position outside the committed rows"):
        checker.chunk_root(*args, 4, 1, hi, lo, list(o.siblings))
    with boa.reverts("verify: chunk outside the row"):
        checker.chunk_root(*args, 3, 2, hi, lo, list(o.siblings))
    with boa.reverts("verify: wrong proof length"):
        checker.chunk_root(*args, 3, 1, hi, lo, list(o.siblings) + [b"\x00" * 32])
    with boa.reverts("verify: token index outside the committed tokens"):
        checker.token_root(*args, 0, 5, [])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF), min_size=32, max_size=32),
       st.lists(st.integers(0, 0xFFFF), min_size=32, max_size=32),
       st.lists(st.integers(-3, 3), min_size=32, max_size=32),
       st.integers(0, 300), st.booleans())
def test_the_contract_counts_the_same_bad_elements_as_the_python_chunk_rule(checker, a, b, delta, max_ulp, near):
    c = np.array(a, dtype=np.uint16)
    r = (np.array(a, dtype=np.int64) + delta).clip(0, 0xFFFF).astype(np.uint16) if near else np.array(b, dtype=np.uint16)
    want = chunk_bad_count(c, r, max_ulp)
    assert checker.chunk_bad_count(*halves(c), *halves(r), max_ulp) == want


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(1e-6, 0.2), st.integers(-40, 40), st.integers(0, 8))
def test_the_contract_agrees_on_realistic_chunks_with_noise(checker, seed, noise, exponent, max_ulp):
    from verifier.encoding import bf16_bits

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(32) * 2.0**exponent
    x[rng.integers(0, 32)] *= 1e-6  # an element near zero, where sign flips happen
    c = bf16_bits(x.astype(np.float32))
    r = bf16_bits((x + rng.standard_normal(32) * noise * 2.0**exponent).astype(np.float32))
    assert checker.chunk_bad_count(*halves(c), *halves(r), max_ulp) == chunk_bad_count(c, r, max_ulp)
