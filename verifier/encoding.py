"""Byte encoding of commitments: bf16 bit patterns and the fixed-size leaf, node and root preimages.

Everything a contract needs to re-hash is laid out here, packed like Solidity's `abi.encodePacked`
(big-endian integers of fixed width, no padding, no length prefixes); `verifier/ENCODING.md` gives
the same layout byte by byte. Three preimage kinds start with distinct one-byte prefixes (`0x00`
leaf, `0x01` inner node, `0x02` root) and have distinct fixed lengths, so no value of one level can
be passed off as another (no second preimage across levels). Leaves carry a tag (`"vpx"`), a version
and a kind byte (hidden-state chunk or token id), and the full domain (chain id, request id, stage,
position, chunk), so a leaf cannot be replayed into another request, stage or position.

Floats are committed as bf16 bit patterns: float32 inputs are rounded to nearest, ties to even
(exactly what `torch.Tensor.to(torch.bfloat16)` does for finite values); NaN and infinity (also a
float32 beyond the bf16 range, which rounds to infinity) are refused. A `numpy.uint16` array is taken
to be bf16 bit patterns already. torch tensors are accepted without importing torch here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.keccak import KECCAK_BACKEND, keccak  # noqa: F401 (re-exported)
from verifier.errors import EncodingError

CHUNK = 32  # bf16 values per leaf
TAG = b"vpx"
VERSION = 1
PREFIX_LEAF = 0x00
PREFIX_NODE = 0x01
PREFIX_ROOT = 0x02
KIND_HIDDEN = 0x01
KIND_TOKEN = 0x02

HEADER_LEN = 54  # prefix..chunk, see ENCODING.md
PAYLOAD_LEN = 2 * CHUNK  # 64
HIDDEN_LEAF_LEN = HEADER_LEN + PAYLOAD_LEN  # 118
TOKEN_LEAF_LEN = HEADER_LEN + 4  # 58
NODE_LEN = 65
ROOT_LEN = 49

MAX_CHAIN_ID = 2**64 - 1
MAX_STAGE = 2**16 - 1
MAX_POSITION = 2**32 - 1
MAX_CHUNK = 2**16 - 1
MAX_TOKEN = 2**32 - 1
MAX_HIDDEN = MAX_CHUNK * CHUNK  # chunk indices must fit a u16

_HEADER = struct.Struct(">B3sBBQ32sHIH")  # prefix tag version kind chain request stage position chunk
_ROOT = struct.Struct(">B3sBIII32s")  # prefix tag version positions hidden tokens top
assert _HEADER.size == HEADER_LEN and _ROOT.size == ROOT_LEN


@dataclass(frozen=True)
class Domain:
    """Who committed: the chain, the request and the stage (index in the request's pipeline)."""

    chain_id: int
    request_id: bytes
    stage: int

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, bytes | bytearray) or len(self.request_id) != 32:
            got = len(self.request_id) if isinstance(self.request_id, bytes | bytearray) else type(
                self.request_id).__name__
            raise EncodingError(f"request_id must be 32 bytes, got {got}")
        if not 0 <= self.chain_id <= MAX_CHAIN_ID:
            raise EncodingError(f"chain_id ({self.chain_id}) must be in [0, 2**64)")
        if not 0 <= self.stage <= MAX_STAGE:
            raise EncodingError(f"stage ({self.stage}) must be in [0, 2**16)")

    def header(self, kind: int, position: int, chunk: int) -> bytes:
        """The 54-byte leaf header (prefix, tag, version, kind, domain, position, chunk)."""
        if not 0 <= position <= MAX_POSITION:
            raise EncodingError(f"position ({position}) must be in [0, 2**32)")
        if not 0 <= chunk <= MAX_CHUNK:
            raise EncodingError(f"chunk ({chunk}) must be in [0, 2**16)")
        return _HEADER.pack(PREFIX_LEAF, TAG, VERSION, kind, self.chain_id, bytes(self.request_id),
                            self.stage, position, chunk)


# ── bf16 ───────────────────────────────────────────────────────────────────────────────────────────
def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def bf16_bits(values: Any, finite: bool = True) -> np.ndarray:
    """bf16 bit patterns (numpy uint16, same shape) of float values.

    Accepts numpy arrays (float16/32/64, or uint16 = bit patterns already), torch tensors (any float
    dtype; bf16 tensors are read bit for bit) and nested lists of floats. Rounds float32 to nearest,
    ties to even; float64 goes through float32 first. With `finite` (the default, for commitments)
    NaN or infinity raise `EncodingError`; without it (for comparing untrusted rows) NaN becomes
    the quiet NaN 0x7FC0 (sign kept) and infinities stay infinities.
    """
    check = check_finite_bits if finite else (lambda b: b)
    if _is_torch(values):
        t = values.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            import torch

            bits = t.contiguous().view(torch.int16).numpy().view(np.uint16).copy()
            return check(bits)
        if not t.is_floating_point():
            raise EncodingError(f"cannot commit a torch tensor of dtype {t.dtype}; want floats")
        arr = t.float().numpy()
    else:
        arr = np.asarray(values)
    if arr.dtype == np.uint16:
        return check(arr.copy())
    if arr.dtype.kind != "f":
        raise EncodingError(f"cannot commit values of dtype {arr.dtype}; want floats or uint16 bf16 bits")
    f32 = np.ascontiguousarray(arr, dtype=np.float32).reshape(arr.shape)  # keeps 0-d as 0-d
    nan = np.isnan(f32)
    if finite and not np.isfinite(f32).all():
        raise EncodingError(f"values contain {int((~np.isfinite(f32)).sum())} NaN or infinite entries")
    u = f32.view(np.uint32)
    rounded = ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16))
    bits = rounded.astype(np.uint16)
    if nan.any():  # rounding a NaN's payload could carry into the sign bit
        bits = np.where(nan, ((u >> np.uint32(16)) & np.uint32(0x8000)).astype(np.uint16) | 0x7FC0, bits)
    return check(bits)


def check_finite_bits(bits: np.ndarray) -> np.ndarray:
    """bf16 bits, refused if any is NaN or infinite."""
    bad = (bits & 0x7F80) == 0x7F80
    if bad.any():
        raise EncodingError(
            f"values contain {int(bad.sum())} entries that are NaN or infinite in bf16 "
            f"(float32 beyond ±3.39e38 rounds to infinity)"
        )
    return bits


def bf16_to_float(bits: np.ndarray) -> np.ndarray:
    """float32 values of bf16 bit patterns (exact)."""
    b = np.asarray(bits, dtype=np.uint16)
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def chunk_count(hidden_size: int) -> int:
    """Leaves per row: ceil(hidden_size / 32); the last chunk is padded with bf16 zeros (0x0000)."""
    return -(-hidden_size // CHUNK)


def pad_rows(bits: np.ndarray) -> np.ndarray:
    """(T, d) bf16 bits → (T, chunks × 32), zero-padded on the right."""
    t, d = bits.shape
    width = chunk_count(d) * CHUNK
    if width == d:
        return bits
    out = np.zeros((t, width), dtype=np.uint16)
    out[:, :d] = bits
    return out


# ── preimages ──────────────────────────────────────────────────────────────────────────────────────
def payload(chunk_bits: np.ndarray) -> bytes:
    """64 bytes: 32 bf16 values, big-endian uint16 each, value 0 first."""
    c = np.asarray(chunk_bits, dtype=np.uint16)
    if c.shape != (CHUNK,):
        raise EncodingError(f"a chunk holds exactly {CHUNK} bf16 values, got shape {c.shape}")
    return c.astype(">u2").tobytes()


def hidden_leaf(domain: Domain, position: int, chunk: int, chunk_bits: np.ndarray) -> bytes:
    """The 118-byte preimage of one hidden-state chunk leaf."""
    return domain.header(KIND_HIDDEN, position, chunk) + payload(chunk_bits)


def token_leaf(domain: Domain, index: int, token_id: int) -> bytes:
    """The 58-byte preimage of one token leaf: header (position = index, chunk = 0) + u32 token id."""
    if not 0 <= token_id <= MAX_TOKEN:
        raise EncodingError(f"token id ({token_id}) must be in [0, 2**32)")
    return domain.header(KIND_TOKEN, index, 0) + struct.pack(">I", token_id)


def node_hash(left: bytes, right: bytes) -> bytes:
    """keccak256(0x01 ‖ left ‖ right): an inner node."""
    return keccak(bytes([PREFIX_NODE]) + left + right)


def root_hash(positions: int, hidden_size: int, n_tokens: int, top: bytes) -> bytes:
    """keccak256(0x02 ‖ "vpx" ‖ version ‖ u32 positions ‖ u32 hidden size ‖ u32 tokens ‖ top): the
    stage root, which binds the tree's shape (and so every leaf's index) to its top node."""
    for name, v in (("positions", positions), ("hidden_size", hidden_size), ("n_tokens", n_tokens)):
        if not 0 <= v <= 2**32 - 1:
            raise EncodingError(f"{name} ({v}) must be in [0, 2**32)")
    return keccak(_ROOT.pack(PREFIX_ROOT, TAG, VERSION, positions, hidden_size, n_tokens, top))


def hidden_leaves(domain: Domain, bits: np.ndarray, start: int = 0) -> np.ndarray:
    """All hidden leaf preimages of (T, d) bits at once: uint8 (T × chunks, 118), row-major by
    (position, chunk) — the leaf order of the tree. Row i is position `start + i`."""
    return hidden_leaves_many([(domain, start, bits.shape[0])], bits)


def check_positions(start: int, t: int) -> None:
    """Positions [start, start + t) must lie in [0, 2**32): a leaf holds its position in a u32."""
    if start < 0 or start + t - 1 > MAX_POSITION:
        raise EncodingError(f"positions [{start}, {start + t}) must lie in [0, 2**32)")


def hidden_leaves_many(parts: list[tuple[Domain, int, int]], bits: np.ndarray) -> np.ndarray:
    """The hidden leaf preimages of many trees' rows in one pass: `parts` lists (domain, start, T)
    in the order of `bits`' rows (N = ΣT, d); part k's T rows are positions [start, start + T) of
    its domain. uint8 (N × chunks, 118): each part's leaves in tree order, parts one after another."""
    n, _ = bits.shape
    if sum(t for _, _, t in parts) != n:
        raise EncodingError(f"parts cover {sum(t for _, _, t in parts)} rows; bits hold {n}")
    for _, start, t in parts:
        check_positions(start, t)
    padded = pad_rows(bits)
    c = padded.shape[1] // CHUNK
    if c - 1 > MAX_CHUNK:
        raise EncodingError(f"hidden size {bits.shape[1]} needs {c} chunks, more than 2**16")
    counts = [t for _, _, t in parts]
    headers = np.frombuffer(b"".join(dom.header(KIND_HIDDEN, 0, 0) for dom, _, _ in parts),
                            dtype=np.uint8).reshape(len(parts), HEADER_LEN)
    positions = np.concatenate([np.arange(start, start + t, dtype=np.int64) for _, start, t in parts]
                               ).astype(">u4") if parts else np.empty(0, dtype=">u4")
    out = np.empty((n, c, HIDDEN_LEAF_LEN), dtype=np.uint8)
    out[:, :, :HEADER_LEN] = np.repeat(headers, counts, axis=0).reshape(n, 1, HEADER_LEN)
    out[:, :, 48:52] = positions.view(np.uint8).reshape(n, 1, 4)
    out[:, :, 52:54] = np.arange(c, dtype=">u2").view(np.uint8).reshape(1, c, 2)
    out[:, :, HEADER_LEN:] = padded.astype(">u2").view(np.uint8).reshape(n, c, PAYLOAD_LEN)
    return out.reshape(n * c, HIDDEN_LEAF_LEN)


def hash_rows(rows: np.ndarray) -> np.ndarray:
    """keccak256 of every row of a uint8 (n, L) array → uint8 (n, 32)."""
    n, width = rows.shape
    buf = memoryview(np.ascontiguousarray(rows).tobytes())
    return np.frombuffer(
        b"".join([keccak(buf[i * width:(i + 1) * width]) for i in range(n)]), dtype=np.uint8
    ).reshape(n, 32)


def token_leaves(domain: Domain, tokens: Any) -> np.ndarray:
    """All token leaf preimages at once: uint8 (n, 58), token i at index (position) i."""
    ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
    n = len(ids)
    if n and (ids.min() < 0 or ids.max() > MAX_TOKEN):
        raise EncodingError(f"token ids must be in [0, 2**32); got one of {ids.min()}..{ids.max()}")
    if n - 1 > MAX_POSITION:
        raise EncodingError(f"token count ({n}) must be at most 2**32")
    out = np.empty((n, TOKEN_LEAF_LEN), dtype=np.uint8)
    out[:, :HEADER_LEN] = np.frombuffer(domain.header(KIND_TOKEN, 0, 0), dtype=np.uint8)
    out[:, 48:52] = np.arange(n, dtype=">u4").view(np.uint8).reshape(n, 4)
    out[:, HEADER_LEN:] = ids.astype(">u4").view(np.uint8).reshape(n, 4)
    return out


def hash_pairs(nodes: bytes | bytearray | memoryview) -> bytes:
    """Inner nodes over consecutive (left, right) pairs: `nodes` is 64·k bytes, the answer 32·k
    bytes, node i = keccak256(0x01 ‖ nodes[64i : 64i + 64])."""
    mv = memoryview(nodes).cast("B")
    if len(mv) % 64:
        raise EncodingError(f"pairs of 32-byte nodes take a multiple of 64 bytes, got {len(mv)}")
    prefix = bytes([PREFIX_NODE])
    return b"".join([keccak(prefix + mv[i:i + 64]) for i in range(0, len(mv), 64)])
