"""Registry hashes: the weights Merkle root and tokenizer hash follow the documented encoding."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from eth_hash.auto import keccak
from hypothesis import given
from hypothesis import strategies as st

from node.runtime.models.errors import CheckpointError
from node.runtime.models.hashing import (
    merkle_root,
    model_hashes,
    tensor_leaf,
    tokenizer_hash,
    weights_root,
)
from node.runtime.models.tiny import build_tiny_model

leaves = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40, unique=True)


def test_leaf_encoding_is_exactly_the_documented_one():
    data_hash = keccak(b"\x01\x02\x03\x04")
    expected = keccak(
        b"\x00"
        + keccak(b"model.norm.weight")
        + b"\x03F32"
        + b"\x02"
        + struct.pack(">QQ", 2, 3)
        + data_hash
    )
    assert tensor_leaf("model.norm.weight", "F32", (2, 3), data_hash) == expected


def test_tree_pairs_neighbours_and_carries_an_odd_node_up():
    a, b, c = (keccak(bytes([i])) for i in range(3))
    assert merkle_root([a]) == a
    assert merkle_root([a, b, c]) == keccak(b"\x01" + keccak(b"\x01" + a + b) + c)


@given(leaves, st.data())
def test_changing_any_leaf_changes_the_root(ls: list[bytes], data):
    i = data.draw(st.integers(0, len(ls) - 1))
    changed = list(ls)
    changed[i] = keccak(ls[i])
    assert merkle_root(changed) != merkle_root(ls)


@given(leaves)
def test_adding_or_dropping_a_leaf_changes_the_root(ls: list[bytes]):
    assert merkle_root(ls + [keccak(b"extra")]) != merkle_root(ls)
    if len(ls) > 1:
        assert merkle_root(ls[:-1]) != merkle_root(ls)


def test_dtype_and_shape_are_bound_into_the_leaf():
    h = keccak(b"same bytes")
    base = tensor_leaf("w", "F32", (4, 2), h)
    assert tensor_leaf("w", "I32", (4, 2), h) != base
    assert tensor_leaf("w", "F32", (2, 4), h) != base
    assert tensor_leaf("v", "F32", (4, 2), h) != base


def test_the_same_seed_builds_the_same_model_and_so_the_same_hashes(
    tiny_llama: Path, tmp_path: Path
):
    again = build_tiny_model(tmp_path / "again", arch="llama", seed=0)
    assert model_hashes(again) == model_hashes(tiny_llama)
    other = build_tiny_model(tmp_path / "other", arch="llama", seed=5)
    assert model_hashes(other).weights_root != model_hashes(tiny_llama).weights_root


def test_flipping_one_weight_byte_changes_the_weights_root_only(tiny_llama: Path, tmp_path: Path):
    d = shutil.copytree(tiny_llama, tmp_path / "m")
    before = model_hashes(d)
    f = d / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0x01  # inside the data of the last tensor
    f.write_bytes(bytes(raw))
    after = model_hashes(d)
    assert after.weights_root != before.weights_root
    assert after.tokenizer_hash == before.tokenizer_hash
    assert after.num_tensors == before.num_tensors


def test_tokenizer_hash_ignores_json_formatting_but_not_content(tiny_llama: Path, tmp_path: Path):
    d = shutil.copytree(tiny_llama, tmp_path / "m")
    before = tokenizer_hash(d)
    tok = json.loads((d / "tokenizer.json").read_text())
    (d / "tokenizer.json").write_text(json.dumps(tok, indent=4))
    assert tokenizer_hash(d) == before
    vocab = tok["model"]["vocab"]
    first = next(iter(vocab))
    vocab[first + "x"] = vocab.pop(first)
    (d / "tokenizer.json").write_text(json.dumps(tok))
    assert tokenizer_hash(d) != before
    (d / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        tokenizer_hash(d)


def test_hash_progress_reaches_the_total(tiny_llama: Path):
    seen: list[tuple[int, int]] = []
    _, n, total = weights_root(tiny_llama, lambda done, tot: seen.append((done, tot)))
    assert len(seen) == n and seen[-1] == (total, total)
