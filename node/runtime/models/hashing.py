"""Content hashes of a model that the ModelRegistry contract stores: weights Merkle root, tokenizer hash.

Both are keccak-256 (the EVM's hash), so a contract or any auditor can recompute them. Exact encoding
(all integers big-endian):

**Weights root.** One leaf per tensor stored in the checkpoint's safetensors files (tied LM heads that
are not stored are not leaves), hashing the bytes exactly as stored (little-endian, the file's dtype)::

    data_hash = keccak256(raw tensor bytes)
    leaf      = keccak256(0x00 || keccak256(utf8(name)) || uint8(len(dtype)) || ascii(dtype)
                          || uint8(ndim) || uint64(dim_0) || ... || uint64(dim_ndim-1) || data_hash)

`dtype` is the safetensors dtype string (`"F32"`, `"BF16"`, ...). Leaves are ordered by tensor name
(UTF-8 bytes, ascending). Each level pairs neighbours, `node = keccak256(0x01 || left || right)`; an odd
last node is carried up unchanged (never duplicated, so no two leaf lists share a root). The root of
one leaf is that leaf. The 0x00 / 0x01 prefixes keep leaves and inner nodes apart.

**Tokenizer hash.** Over the tokenizer files present among `TOKENIZER_FILES`, in that (sorted) order;
`tokenizer.json` is required. JSON files are canonicalised first (keys sorted, no whitespace,
`ensure_ascii=False`, UTF-8), so formatting differences do not change the hash; other files are
hashed as stored::

    tokenizer_hash = keccak256(utf8("veriplex.tokenizer.v1")
                               || for each file: uint16(len(name)) || utf8(name)
                                                 || uint64(len(content)) || content)

Tensor bytes are read straight from the file by header offsets, 16 MiB at a time: hashing never loads
a model (SmolLM2's 517 MB take ~1.5 s at the ~450 MB/s of pycryptodome's keccak).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from eth_hash.auto import keccak

from node.runtime.models.checkpoint import safetensors_files
from node.runtime.models.errors import CheckpointError

TOKENIZER_FILES = (
    "added_tokens.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
_CHUNK = 16 << 20


@dataclass(frozen=True)
class ModelHashes:
    """The two hashes the ModelRegistry stores, as 32 raw bytes each."""

    weights_root: bytes
    tokenizer_hash: bytes
    num_tensors: int
    num_bytes: int

    def as_hex(self) -> dict[str, str]:
        return {
            "weights_root": "0x" + self.weights_root.hex(),
            "tokenizer_hash": "0x" + self.tokenizer_hash.hex(),
        }


def tensor_leaf(name: str, dtype: str, shape: Iterable[int], data_hash: bytes) -> bytes:
    """The Merkle leaf of one tensor (see the module docstring for the encoding)."""
    shape = tuple(shape)
    if len(data_hash) != 32:
        raise ValueError(f"data_hash must be 32 bytes, got {len(data_hash)}")
    dt = dtype.encode("ascii")
    return keccak(
        b"\x00"
        + keccak(name.encode("utf-8"))
        + struct.pack(">B", len(dt))
        + dt
        + struct.pack(">B", len(shape))
        + b"".join(struct.pack(">Q", d) for d in shape)
        + data_hash
    )


def merkle_root(leaves: list[bytes]) -> bytes:
    """Binary keccak tree, odd node carried up; raises on an empty list."""
    if not leaves:
        raise ValueError("cannot build a Merkle root over zero leaves")
    level = list(leaves)
    while len(level) > 1:
        nxt = [keccak(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    begin: int  # absolute file offset
    end: int


def _safetensors_entries(path: Path) -> list[_Entry]:
    """Parse a safetensors header: u64 little-endian header length, JSON header, then the data."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path}: truncated safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 << 20:
            raise CheckpointError(f"{path}: safetensors header of {n} bytes is implausibly large")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise CheckpointError(f"{path}: malformed safetensors header: {exc}") from exc
    size = path.stat().st_size
    out = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        b, e = meta["data_offsets"]
        begin, end = 8 + n + b, 8 + n + e
        if not (8 + n <= begin <= end <= size):
            raise CheckpointError(f"{path}: tensor {name} data offsets {b}..{e} out of file bounds")
        out.append(_Entry(name, meta["dtype"], tuple(meta["shape"]), path, begin, end))
    return out


def weights_root(
    checkpoint_dir: str | Path, progress: Callable[[int, int], None] | None = None
) -> tuple[bytes, int, int]:
    """(root, tensor count, total bytes) over every tensor in the checkpoint's safetensors files.

    `progress(done_bytes, total_bytes)` is called after each tensor when given.
    """
    entries = [e for f in safetensors_files(Path(checkpoint_dir)) for e in _safetensors_entries(f)]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise CheckpointError(f"{checkpoint_dir}: a tensor name appears in two weight files")
    entries.sort(key=lambda e: e.name.encode("utf-8"))
    total = sum(e.end - e.begin for e in entries)
    done = 0
    leaves = []
    for e in entries:
        h = keccak.new(b"")
        with e.file.open("rb") as f:
            f.seek(e.begin)
            left = e.end - e.begin
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    raise CheckpointError(f"{e.file}: truncated while reading {e.name}")
                h.update(chunk)
                left -= len(chunk)
        leaves.append(tensor_leaf(e.name, e.dtype, e.shape, h.digest()))
        done += e.end - e.begin
        if progress is not None:
            progress(done, total)
    return merkle_root(leaves), len(entries), total


def _canonical(name: str, content: bytes) -> bytes:
    if not name.endswith(".json"):
        return content
    try:
        obj = json.loads(content)
    except ValueError as exc:
        raise CheckpointError(f"tokenizer file {name} is not valid JSON: {exc}") from exc
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def tokenizer_hash(checkpoint_dir: str | Path) -> bytes:
    d = Path(checkpoint_dir)
    if not (d / "tokenizer.json").is_file():
        raise CheckpointError(f"{d}: no tokenizer.json (a fast tokenizer is required)")
    parts = [b"veriplex.tokenizer.v1"]
    for name in TOKENIZER_FILES:  # already sorted
        p = d / name
        if not p.is_file():
            continue
        content = _canonical(name, p.read_bytes())
        nb = name.encode("utf-8")
        parts += [struct.pack(">H", len(nb)), nb, struct.pack(">Q", len(content)), content]
    return keccak(b"".join(parts))


def model_hashes(
    checkpoint_dir: str | Path, progress: Callable[[int, int], None] | None = None
) -> ModelHashes:
    root, n, total = weights_root(checkpoint_dir, progress)
    return ModelHashes(root, tokenizer_hash(checkpoint_dir), n, total)
