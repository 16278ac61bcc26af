"""The data plane's tensor bodies: HIDDEN (rows passed between stages) and ROWS (stored rows served to
verifiers and auditors). Split from `protocol.frames` so that clients that never see a tensor (the
gateway) do not load torch.
"""

from __future__ import annotations

import struct

import torch

from protocol.dataplane_errors import BadMessage
from protocol.tensors import TensorCodecError, decode_tensor, encode_tensor

_U32 = struct.Struct("<I")
_ROWS_HEAD = struct.Struct("<II")
MAX_TOKENS = 2**24  # token ids one ROWS body may carry


def hidden_body(start: int, rows: torch.Tensor) -> bytes:
    return _U32.pack(start) + encode_tensor(rows)


def parse_hidden(body: bytes, d: int, dtype: torch.dtype, max_rows: int) -> tuple[int, torch.Tensor]:
    if len(body) < 4:
        raise BadMessage(f"HIDDEN body of {len(body)} bytes is too short")
    (start,) = _U32.unpack_from(body, 0)
    try:
        rows = decode_tensor(memoryview(body)[4:], max_bytes=16 + 8 + max_rows * d * 8,
                             dtype=dtype, shape=(None, d))
    except TensorCodecError as e:
        raise BadMessage(f"HIDDEN tensor: {e}") from None
    if rows.shape[0] == 0 or rows.shape[0] > max_rows:
        raise BadMessage(f"HIDDEN carries {rows.shape[0]} rows; 1 to {max_rows} allowed")
    return start, rows


def rows_body(start: int, rows: torch.Tensor, tokens: list[int] | tuple[int, ...]) -> bytes:
    if rows.dim() != 2:
        raise BadMessage(f"ROWS carries a (T, d) tensor, got shape {tuple(rows.shape)}")
    if len(tokens) > MAX_TOKENS:
        raise BadMessage(f"ROWS carries at most {MAX_TOKENS} token ids, got {len(tokens)}")
    return (_ROWS_HEAD.pack(start, len(tokens)) + struct.pack(f"<{len(tokens)}I", *tokens)
            + encode_tensor(rows.to(torch.float32)))


def parse_rows(body: bytes, d: int | None = None, max_rows: int | None = None
               ) -> tuple[int, torch.Tensor, list[int]]:
    """(start position, float32 rows (T, d), token ids); `d` / `max_rows` check the shape."""
    if len(body) < _ROWS_HEAD.size:
        raise BadMessage(f"ROWS body of {len(body)} bytes is too short")
    start, count = _ROWS_HEAD.unpack_from(body, 0)
    off = _ROWS_HEAD.size + 4 * count
    if count > MAX_TOKENS or off > len(body):
        raise BadMessage(f"ROWS says {count} tokens but the body holds {len(body)} bytes")
    tokens = list(struct.unpack_from(f"<{count}I", body, _ROWS_HEAD.size))
    try:
        rows = decode_tensor(memoryview(body)[off:], dtype=torch.float32, shape=(None, d))
    except TensorCodecError as e:
        raise BadMessage(f"ROWS tensor: {e}") from None
    if max_rows is not None and rows.shape[0] > max_rows:
        raise BadMessage(f"ROWS carries {rows.shape[0]} rows; at most {max_rows} were asked for")
    return start, rows, tokens
