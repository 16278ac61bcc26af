"""Tensors as raw bytes with a small typed header — the network's only tensor serialisation (never pickle).

Used by the hidden-state store's files and meant for the data plane's messages. Layout (little-endian,
like the tensor bytes themselves and like safetensors)::

    offset 0   4s   magic b"VPT1"
           4   u8   dtype code (DTYPE_CODES)
           5   u8   ndim (0..4)
           6   u16  reserved, 0
           8   u32 × ndim   shape
           then prod(shape) × itemsize bytes, C order; bf16 as its raw 16-bit patterns

`decode_tensor` checks everything before touching the payload: magic, dtype code, ndim, that the
byte count matches the shape exactly, an optional size cap, and optional expected dtype / shape —
each failure a `TensorCodecError` that quotes the values.
"""

from __future__ import annotations

import struct
import sys

import torch

MAGIC = b"VPT1"
MAX_NDIM = 4
DTYPE_CODES: dict[int, torch.dtype] = {
    1: torch.float32,
    2: torch.bfloat16,
    3: torch.float16,
    4: torch.int64,
    5: torch.int32,
}
CODE_OF: dict[torch.dtype, int] = {v: k for k, v in DTYPE_CODES.items()}
_FIXED = struct.Struct("<4sBBH")

assert sys.byteorder == "little", "the raw-bytes tensor format assumes a little-endian host"


class TensorCodecError(ValueError):
    """Malformed, oversized or unexpected tensor bytes."""


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw C-order bytes of a tensor (moved to CPU), bf16 included."""
    # reshape(-1): a 0-dim tensor cannot be viewed as bytes directly.
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def tensor_from_bytes(
    buf: bytes | bytearray | memoryview, dtype: torch.dtype, shape: tuple[int, ...]
) -> torch.Tensor:
    """The inverse of `tensor_bytes` (a copy, so the tensor owns writable memory)."""
    n = itemsize(dtype)
    for d in shape:
        n *= d
    if len(buf) != n:
        raise TensorCodecError(
            f"{len(buf)} bytes cannot hold a {dtype} tensor of shape {shape} ({n} bytes)"
        )
    if n == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(buf), dtype=torch.uint8).view(dtype).reshape(shape)


def encode_tensor(t: torch.Tensor) -> bytes:
    if t.dtype not in CODE_OF:
        raise TensorCodecError(f"dtype {t.dtype} has no wire code; supported: {list(CODE_OF)}")
    if t.dim() > MAX_NDIM:
        raise TensorCodecError(f"tensor of {t.dim()} dims; at most {MAX_NDIM}")
    if any(d >= 2**32 for d in t.shape):
        raise TensorCodecError(f"shape {tuple(t.shape)} has a dimension too large for u32")
    head = _FIXED.pack(MAGIC, CODE_OF[t.dtype], t.dim(), 0) + struct.pack(f"<{t.dim()}I", *t.shape)
    return head + tensor_bytes(t)


def decode_tensor(
    buf: bytes | bytearray | memoryview,
    *,
    max_bytes: int | None = None,
    dtype: torch.dtype | None = None,
    shape: tuple[int | None, ...] | None = None,
) -> torch.Tensor:
    """Parse `encode_tensor`'s output; `shape` may use None for "any size" in a dimension."""
    if max_bytes is not None and len(buf) > max_bytes:
        raise TensorCodecError(
            f"tensor message of {len(buf)} bytes exceeds the limit of {max_bytes}"
        )
    if len(buf) < _FIXED.size:
        raise TensorCodecError(
            f"tensor message of {len(buf)} bytes is shorter than its {_FIXED.size}-byte header"
        )
    magic, code, ndim, reserved = _FIXED.unpack_from(buf, 0)
    if magic != MAGIC:
        raise TensorCodecError(f"bad tensor magic {bytes(magic)!r}, expected {MAGIC!r}")
    if code not in DTYPE_CODES:
        raise TensorCodecError(f"unknown dtype code {code}; known: {sorted(DTYPE_CODES)}")
    if ndim > MAX_NDIM or reserved != 0:
        raise TensorCodecError(
            f"bad tensor header: ndim {ndim} (max {MAX_NDIM}), reserved {reserved} (must be 0)"
        )
    off = _FIXED.size + 4 * ndim
    if len(buf) < off:
        raise TensorCodecError(f"tensor header truncated: {len(buf)} bytes, shape needs {off}")
    got_shape = struct.unpack_from(f"<{ndim}I", buf, _FIXED.size)
    got_dtype = DTYPE_CODES[code]
    if dtype is not None and got_dtype != dtype:
        raise TensorCodecError(f"expected a {dtype} tensor, got {got_dtype}")
    if shape is not None and (
        len(shape) != ndim
        or any(e is not None and e != g for e, g in zip(shape, got_shape, strict=True))
    ):
        raise TensorCodecError(f"expected shape {shape}, got {got_shape}")
    return tensor_from_bytes(memoryview(buf)[off:], got_dtype, got_shape)
