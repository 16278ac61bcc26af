"""The deployed spot-check library (SpotCheck.vy, modules/chunk_rule.vy) agrees with the Python
references of verifier/: the same root from any opening, the same bad-element count for any two
chunks — so what a verifier judges off chain is what the contract enforces."""

from __future__ import annotations

import boa
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.verification import Opening, commitment_root
from protocol.messages import StageCommit
from tests.support.boa import deployer_for
from verifier.chunk_rule import chunk_bad_count
from verifier.encoding import Domain
from verifier.merkle import StageCommitment


@pytest.fixture(scope="module")
def spot():
    return deployer_for("SpotCheck").deploy()


@settings(max_examples=20, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(1, 100),
    st.integers(0, 3),
    st.integers(0, 2**64 - 1),
    st.binary(min_size=32, max_size=32),
    st.integers(0, 15),
    st.data(),
)
def test_the_library_derives_the_committed_root_from_any_opening(
    spot, t, d, n_tok, chain, rid, stage, data
):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32)))
    dom = Domain(chain, rid, stage)
    c = StageCommitment.build(
        dom, rng.standard_normal((t, d)).astype(np.float32), tokens=list(range(n_tok))
    )
    pos = data.draw(st.integers(0, t - 1))
    chunk = data.draw(st.integers(0, (d + 31) // 32 - 1))
    o = Opening.from_chunk(c.open_chunk(pos, chunk))
    got = spot.chunk_root(chain, rid, stage, t, d, n_tok, pos, chunk, o.hi, o.lo, list(o.siblings))
    assert got == c.root


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 2**16 - 1), min_size=64, max_size=64), st.integers(0, 8), st.booleans()
)
def test_the_library_counts_bad_elements_like_the_python_rule(spot, bits, max_ulp, near):
    a = np.array(bits[:32], dtype=np.uint16)
    b = np.array(bits[32:], dtype=np.uint16)
    if near:  # mostly close pairs: flip low mantissa bits only
        b = a ^ (b & 0x3)
    oa, ob = Opening.from_values(a, ()), Opening.from_values(b, ())
    assert spot.bad_count(oa.hi, oa.lo, ob.hi, ob.lo, max_ulp) == chunk_bad_count(a, b, max_ulp)


def test_the_record_commitment_root_matches_the_contracts_encoding():
    stages = [StageCommit(b"\x01" * 32, 7, 64, 0), StageCommit(b"\x02" * 32, 7, 64, 3)]
    probe = boa.loads(
        """
struct StageCommit:
    root: bytes32
    positions: uint32
    hidden_size: uint32
    n_tokens: uint32

@external
@pure
def h(s: DynArray[StageCommit, 16]) -> bytes32:
    return keccak256(abi_encode(s))
"""
    )
    assert probe.h([s.as_tuple() for s in stages]) == commitment_root(stages)
    assert commitment_root(stages[:1]) != commitment_root(stages)
