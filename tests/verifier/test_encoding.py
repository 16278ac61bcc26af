"""The commitment encoding: bf16 rounding matches torch, and preimages are exactly the documented bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from eth_hash.auto import keccak as reference_keccak
from hypothesis import given
from hypothesis import strategies as st

from verifier import encoding as enc
from verifier.encoding import Domain, bf16_bits, bf16_to_float
from verifier.errors import EncodingError

DOMAIN = Domain(chain_id=31337, request_id=bytes(range(32)), stage=3)


def torch_bf16_bits(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def test_bf16_rounding_matches_torch_on_normal_subnormal_and_tie_values():
    rng = np.random.default_rng(0)
    normal = rng.standard_normal(100_000).astype(np.float32) * np.float32(10.0) ** rng.integers(
        -30, 30, 100_000).astype(np.float32)
    ties = (rng.integers(0, 2**15, 10_000, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    subnormal = (rng.integers(1, 2**23, 10_000, dtype=np.uint32)).view(np.float32)
    for x in (normal, ties, subnormal, -ties):
        x = x[np.isfinite(x)]
        assert np.array_equal(bf16_bits(x), torch_bf16_bits(x))


@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=64))
def test_bf16_rounding_matches_torch_for_any_finite_float32(values):
    x = np.array(values, dtype=np.float32)
    if np.abs(x).max() >= 3.3895e38:  # rounds to infinity: refused, checked below
        return
    assert np.array_equal(bf16_bits(x), torch_bf16_bits(x))


def test_bf16_tensors_are_read_bit_for_bit_and_floats_decode_exactly():
    t = torch.randn(7, 33).to(torch.bfloat16)
    bits = bf16_bits(t)
    assert np.array_equal(bits, t.view(torch.int16).numpy().view(np.uint16))
    assert np.array_equal(bf16_to_float(bits), t.float().numpy())
    assert np.array_equal(bf16_bits(bf16_to_float(bits)), bits)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 3.4e38])
def test_commitments_refuse_nan_infinity_and_values_beyond_the_bf16_range(bad):
    with pytest.raises(EncodingError, match="NaN or infinite"):
        bf16_bits(np.array([1.0, bad], dtype=np.float32))


def test_untrusted_rows_keep_nan_as_quiet_nan_with_its_sign():
    bits = bf16_bits(np.array([np.nan, -np.nan, np.inf], dtype=np.float32), finite=False)
    assert [hex(b) for b in bits] == ["0x7fc0", "0xffc0", "0x7f80"]


def test_integer_arrays_other_than_uint16_bits_are_refused():
    with pytest.raises(EncodingError, match="dtype int64"):
        bf16_bits(np.arange(4))


def test_hidden_leaf_is_exactly_the_documented_118_bytes():
    vals = np.arange(32, dtype=np.uint16) * 257
    leaf = enc.hidden_leaf(DOMAIN, position=5, chunk=7, chunk_bits=vals)
    expected = (
        b"\x00" + b"vpx" + b"\x01" + b"\x01"
        + (31337).to_bytes(8, "big") + bytes(range(32)) + (3).to_bytes(2, "big")
        + (5).to_bytes(4, "big") + (7).to_bytes(2, "big")
        + b"".join(int(v).to_bytes(2, "big") for v in vals)
    )
    assert len(leaf) == enc.HIDDEN_LEAF_LEN == 118
    assert leaf == expected


def test_token_leaf_and_root_preimages_are_the_documented_bytes():
    assert enc.token_leaf(DOMAIN, 9, 70_000) == (
        b"\x00vpx\x01\x02" + (31337).to_bytes(8, "big") + bytes(range(32)) + b"\x00\x03"
        + (9).to_bytes(4, "big") + b"\x00\x00" + (70_000).to_bytes(4, "big"))
    top = bytes(range(100, 132))
    assert enc.root_hash(4, 576, 2, top) == reference_keccak(
        b"\x02vpx\x01" + struct.pack(">III", 4, 576, 2) + top)
    assert enc.node_hash(b"\x01" * 32, b"\x02" * 32) == reference_keccak(b"\x01" + b"\x01" * 32 + b"\x02" * 32)


def test_the_fast_keccak_backend_agrees_with_eth_hash():
    for n in (0, 1, 58, 65, 118, 135, 136, 137, 1000):
        data = bytes((i * 7) % 256 for i in range(n))
        assert enc.keccak(data) == reference_keccak(data)
        assert enc.keccak(bytearray(data)) == enc.keccak(memoryview(data)) == reference_keccak(data)


def test_vectorized_leaves_equal_one_by_one_leaves_including_zero_padding():
    bits = bf16_bits(np.random.default_rng(1).standard_normal((3, 70)).astype(np.float32))
    rows = enc.hidden_leaves(DOMAIN, bits)
    assert rows.shape == (3 * 3, 118)
    padded = enc.pad_rows(bits)
    assert padded.shape == (3, 96) and not padded[:, 70:].any()
    for p in range(3):
        for c in range(3):
            assert rows[p * 3 + c].tobytes() == enc.hidden_leaf(DOMAIN, p, c, padded[p, c * 32:(c + 1) * 32])


@pytest.mark.parametrize("kwargs, match", [
    (dict(chain_id=-1, request_id=b"\x00" * 32, stage=0), "chain_id"),
    (dict(chain_id=2**64, request_id=b"\x00" * 32, stage=0), "chain_id"),
    (dict(chain_id=1, request_id=b"\x00" * 31, stage=0), "request_id must be 32 bytes, got 31"),
    (dict(chain_id=1, request_id="00" * 32, stage=0), "request_id must be 32 bytes, got str"),
    (dict(chain_id=1, request_id=b"\x00" * 32, stage=70_000), "stage"),
])
def test_domain_fields_out_of_range_are_refused_with_the_value(kwargs, match):
    with pytest.raises(EncodingError, match=match):
        Domain(**kwargs)


def test_token_ids_beyond_u32_and_chunks_of_the_wrong_size_are_refused():
    with pytest.raises(EncodingError, match="token id"):
        enc.token_leaf(DOMAIN, 0, 2**32)
    with pytest.raises(EncodingError, match="exactly 32"):
        enc.hidden_leaf(DOMAIN, 0, 0, np.zeros(31, dtype=np.uint16))
