"""Data-plane wire protocol: frozen, versioned message types, their byte layout, and their signatures.

Every message between the caller and stages, and between stages, is one *frame* on a TCP stream::

    u32   frame length (bytes after this field), at most the receiver's max_frame_bytes
    header (HEADER, 128 bytes, little-endian):
      4s  magic b"VPDP"        u8  version (1)       u8  kind (Kind)       u16 stage index
      u64 chain id             32s request id        u32 step              u32 epoch
      u32 body length          65s signature (r ‖ s ‖ v, v in {0, 1})      3x  zero padding
    body (kind-specific, below)

The signature is secp256k1 over `keccak256("veriplex.dataplane.v1" ‖ header[0:60] ‖ keccak256(body))`
— the header without its signature, so (chain id, request id, step, epoch, stage, kind) and the
body are all bound. The signer's address (keccak of the public key, last 20 bytes) is what receivers
compare with the operator assigned to the sending stage. Bodies:

    OPEN    u32 n ‖ request JSON (n bytes, `PipelineRequest`) ‖ 65s gateway signature ‖ u32 count ‖
            count × u32 token ids (the sequence so far: the prompt, plus generated tokens on resume)
    HIDDEN  u32 start position ‖ VPT1 tensor (protocol.tensors) of shape (T, d)
    TOKEN   u32 token ‖ u32 position ‖ u8 done
    CLOSE   u8 reason (CloseReason)
    ERROR   u16 code (ErrorCode) ‖ u16 stage where it happened ‖ utf-8 message (≤ 1024 bytes)
    PING / PONG   empty
    COMMIT     u32 positions P (ask stage `frame.stage` for its commitment over rows [0, P)), then,
               to every stage but the first, its input stage's answer relayed (`InputRelay`):
               COMMITTED body of stage `frame.stage - 1` ‖ u32 count ‖ count × u32 token ids
               (the ids that commitment covers: P + 1 when the input stage is the first, else 0)
    COMMITTED  32s root ‖ u32 positions ‖ u32 hidden size ‖ u32 n_tokens ‖ 65s attestation signature
               (over `contracts.verification.attestation_digest`, by the stage operator)
    FETCH      u32 layer start ‖ u32 layer end ‖ u32 pos_from ‖ u32 pos_to (read stored rows)
    ROWS       u32 start ‖ u32 count ‖ count × u32 token ids ‖ VPT1 float32 tensor (T, d)

COMMIT / FETCH are answered on the connection they came on, after the request ran (see
`node.dataplane.query` for the caller's side and node/README.md for who may ask).

Never pickle: tensors are raw bytes behind a typed header, structured requests are a validated,
frozen pydantic model serialised as JSON and signed by the gateway as exact bytes.
"""

from __future__ import annotations

import asyncio
import enum
import struct
from dataclasses import dataclass

from coincurve import PrivateKey

from protocol.dataplane_errors import BadMessage, FrameTooLarge
from protocol.identity import recover, sign_digest
from protocol.keccak import keccak
from protocol.messages import (
    MAX_ERROR_TEXT,
    VERSION,
    PipelineRequest,
    StageCommit,
    decode_request,
)

MAGIC = b"VPDP"
DOMAIN = b"veriplex.dataplane.v1"
HEADER = struct.Struct("<4sBBHQ32sIII65s3x")
_SIGNED_PART = 60  # header bytes before the signature
LEN = struct.Struct("<I")


class Kind(enum.IntEnum):
    OPEN = 1
    HIDDEN = 2
    TOKEN = 3
    CLOSE = 4
    ERROR = 5
    PING = 6
    PONG = 7
    COMMIT = 8
    COMMITTED = 9
    FETCH = 10
    ROWS = 11


class CloseReason(enum.IntEnum):
    FINISHED = 1
    CANCELLED = 2


class ErrorCode(enum.IntEnum):
    BAD_MESSAGE = 1  # malformed header, body or tensor; wrong shape or dtype
    BAD_SIGNATURE = 2  # unsigned, wrongly signed, or signer not the assigned operator
    REPLAY = 3  # a step, open or epoch already seen
    UNKNOWN_SESSION = 4
    NO_CAPACITY = 5  # KV-cache budget or hidden-store budget would overflow
    TOO_LARGE = 6  # frame above max_frame_bytes
    EXECUTION = 7  # the executor refused the input
    STAGE_FAILED = 8  # a downstream stage is unreachable or closed its connection
    NOT_ASSIGNED = 9  # this node is not the stage the request names
    NOT_STORED = 10  # COMMIT / FETCH: rows or tokens not held here (never stored, or evicted)


# ── frames ───────────────────────────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class Frame:
    """One signed message. `body` is the kind-specific bytes; use the `*_body` helpers to build it."""

    kind: Kind
    chain_id: int
    request_id: bytes
    step: int
    epoch: int
    stage: int
    body: bytes
    signature: bytes = b"\x00" * 65

    def signed_header(self) -> bytes:
        return self._header(b"\x00" * 65)[:_SIGNED_PART]

    def _header(self, sig: bytes) -> bytes:
        return HEADER.pack(MAGIC, VERSION, int(self.kind), self.stage, self.chain_id,
                           self.request_id, self.step, self.epoch, len(self.body), sig)

    def digest(self) -> bytes:
        return keccak(DOMAIN + self.signed_header() + keccak(self.body))

    def signed(self, key: PrivateKey) -> Frame:
        return Frame(self.kind, self.chain_id, self.request_id, self.step, self.epoch, self.stage,
                     self.body, sign_digest(key, self.digest()))

    def signer(self) -> str:
        return recover(self.digest(), self.signature)

    def to_bytes(self) -> bytes:
        head = self._header(self.signature)
        return LEN.pack(len(head) + len(self.body)) + head + self.body


def make_frame(key: PrivateKey, kind: Kind, chain_id: int, request_id: bytes, step: int = 0,
               epoch: int = 0, stage: int = 0, body: bytes = b"") -> Frame:
    return Frame(kind, chain_id, request_id, step, epoch, stage, body).signed(key)


def parse_frame(buf: bytes) -> Frame:
    """Parse the bytes after the length prefix; checks magic, version, kind and the body length."""
    if len(buf) < HEADER.size:
        raise BadMessage(f"frame of {len(buf)} bytes is shorter than the {HEADER.size}-byte header")
    magic, version, kind, stage, chain_id, rid, step, epoch, blen, sig = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise BadMessage(f"bad frame magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise BadMessage(f"frame version {version} is not supported (this node speaks {VERSION})")
    if kind not in Kind._value2member_map_:
        raise BadMessage(f"unknown message kind {kind}; known: {[int(k) for k in Kind]}")
    if blen != len(buf) - HEADER.size:
        raise BadMessage(f"header says a {blen}-byte body, the frame holds {len(buf) - HEADER.size}")
    return Frame(Kind(kind), chain_id, bytes(rid), step, epoch, stage, bytes(buf[HEADER.size:]), bytes(sig))


# ── bodies ───────────────────────────────────────────────────────────────────────────────────
_U32 = struct.Struct("<I")
_TOKEN = struct.Struct("<IIB")
_ERROR = struct.Struct("<HH")


def open_body(raw_request: bytes, gateway_sig: bytes, tokens: list[int]) -> bytes:
    return (_U32.pack(len(raw_request)) + raw_request + gateway_sig + _U32.pack(len(tokens))
            + struct.pack(f"<{len(tokens)}I", *tokens))


@dataclass(frozen=True)
class OpenBody:
    raw_request: bytes
    request: PipelineRequest
    gateway_sig: bytes
    tokens: tuple[int, ...]


def parse_open(body: bytes) -> OpenBody:
    if len(body) < 4:
        raise BadMessage(f"OPEN body of {len(body)} bytes is too short")
    (n,) = _U32.unpack_from(body, 0)
    if 4 + n + 65 + 4 > len(body):
        raise BadMessage(f"OPEN body of {len(body)} bytes cannot hold a {n}-byte request")
    raw = body[4 : 4 + n]
    sig = body[4 + n : 4 + n + 65]
    (count,) = _U32.unpack_from(body, 4 + n + 65)
    off = 4 + n + 65 + 4
    if len(body) - off != 4 * count:
        raise BadMessage(f"OPEN says {count} tokens but carries {len(body) - off} bytes for them")
    req = decode_request(raw)
    tokens = struct.unpack_from(f"<{count}I", body, off)
    if not (req.prompt_len <= count < req.prompt_len + req.max_new_tokens):
        raise BadMessage(
            f"OPEN carries {count} tokens; a request with a {req.prompt_len}-token prompt and "
            f"{req.max_new_tokens} new tokens needs between {req.prompt_len} and "
            f"{req.prompt_len + req.max_new_tokens - 1}"
        )
    return OpenBody(raw, req, sig, tokens)


def token_body(token: int, position: int, done: bool) -> bytes:
    return _TOKEN.pack(token, position, int(done))


def parse_token(body: bytes) -> tuple[int, int, bool]:
    if len(body) != _TOKEN.size:
        raise BadMessage(f"TOKEN body must be {_TOKEN.size} bytes, got {len(body)}")
    tok, pos, done = _TOKEN.unpack(body)
    if done > 1:
        raise BadMessage(f"TOKEN done flag must be 0 or 1, got {done}")
    return tok, pos, bool(done)


def close_body(reason: CloseReason) -> bytes:
    return bytes([int(reason)])


def parse_close(body: bytes) -> CloseReason:
    if len(body) != 1 or body[0] not in CloseReason._value2member_map_:
        raise BadMessage(f"CLOSE body must be one reason byte in {[int(r) for r in CloseReason]}")
    return CloseReason(body[0])


def error_body(code: ErrorCode, stage: int, message: str) -> bytes:
    return _ERROR.pack(int(code), stage) + message.encode()[:MAX_ERROR_TEXT]


@dataclass(frozen=True)
class ErrorInfo:
    code: ErrorCode
    stage: int
    message: str


def parse_error(body: bytes) -> ErrorInfo:
    if len(body) < _ERROR.size or len(body) > _ERROR.size + MAX_ERROR_TEXT:
        raise BadMessage(f"ERROR body of {len(body)} bytes is malformed")
    code, stage = _ERROR.unpack_from(body, 0)
    if code not in ErrorCode._value2member_map_:
        raise BadMessage(f"unknown error code {code}")
    return ErrorInfo(ErrorCode(code), stage, body[_ERROR.size :].decode("utf-8", "replace"))


# ── commitments and stored rows (after the request ran) ──────────────────────────────────────
_COMMITTED = struct.Struct("<32sIII65s")
_FETCH = struct.Struct("<IIII")
_ROWS_HEAD = struct.Struct("<II")
MAX_TOKENS = 2**24  # token ids one ROWS body may carry


@dataclass(frozen=True)
class InputRelay:
    """What the gateway relays with COMMIT to a stage that has an input stage: that stage's signed
    commitment over the same rows, and the token ids it covers. The asked stage checks it against
    the rows it received before it signs its own (stage-level blame: contracts TaskOpener
    `blame_input`), and keeps it as evidence."""

    commit: StageCommit
    signature: bytes
    tokens: tuple[int, ...] = ()


def commit_body(positions: int, relay: InputRelay | None = None) -> bytes:
    if not 1 <= positions < 2**32:
        raise BadMessage(f"COMMIT positions ({positions}) must be in [1, 2**32)")
    if relay is None:
        return _U32.pack(positions)
    if len(relay.tokens) > MAX_TOKENS:
        raise BadMessage(f"COMMIT relays {len(relay.tokens)} token ids, at most {MAX_TOKENS}")
    return (_U32.pack(positions) + committed_body(relay.commit, relay.signature)
            + _U32.pack(len(relay.tokens)) + struct.pack(f"<{len(relay.tokens)}I", *relay.tokens))


def parse_commit_ask(body: bytes) -> tuple[int, InputRelay | None]:
    """(positions, the relayed input commitment or None)."""
    if len(body) < _U32.size:
        raise BadMessage(f"COMMIT body must be at least {_U32.size} bytes, got {len(body)}")
    (positions,) = _U32.unpack_from(body, 0)
    if positions == 0:
        raise BadMessage("COMMIT asks for 0 positions; a commitment covers at least one row")
    if len(body) == _U32.size:
        return positions, None
    head = _U32.size + _COMMITTED.size
    if len(body) < head + _U32.size:
        raise BadMessage(f"COMMIT body of {len(body)} bytes: a relayed input commitment needs "
                         f"{head + _U32.size}")
    sc, sig = parse_committed(body[_U32.size:head])
    (count,) = _U32.unpack_from(body, head)
    if len(body) != head + _U32.size + 4 * count:
        raise BadMessage(f"COMMIT body of {len(body)} bytes does not hold its {count} relayed token ids")
    tokens = struct.unpack_from(f"<{count}I", body, head + _U32.size)
    return positions, InputRelay(sc, sig, tuple(tokens))


def parse_commit(body: bytes) -> int:
    """The positions a COMMIT asks for (its relay, if any, is `parse_commit_ask`'s)."""
    return parse_commit_ask(body)[0]


def committed_body(sc: StageCommit, attestation_sig: bytes) -> bytes:
    if len(sc.root) != 32 or len(attestation_sig) != 65:
        raise BadMessage(f"COMMITTED needs a 32-byte root and a 65-byte signature, got "
                         f"{len(sc.root)} and {len(attestation_sig)}")
    return _COMMITTED.pack(sc.root, sc.positions, sc.hidden_size, sc.n_tokens, attestation_sig)


def parse_committed(body: bytes) -> tuple[StageCommit, bytes]:
    if len(body) != _COMMITTED.size:
        raise BadMessage(f"COMMITTED body must be {_COMMITTED.size} bytes, got {len(body)}")
    root, positions, hidden, n_tokens, sig = _COMMITTED.unpack(body)
    if positions == 0 or hidden == 0:
        raise BadMessage(f"COMMITTED shape {positions} positions × {hidden} hidden is empty")
    return StageCommit(bytes(root), positions, hidden, n_tokens), bytes(sig)


@dataclass(frozen=True)
class FetchBody:
    layer_start: int
    layer_end: int
    pos_from: int
    pos_to: int


def fetch_body(layer_start: int, layer_end: int, pos_from: int, pos_to: int) -> bytes:
    _check_fetch(layer_start, layer_end, pos_from, pos_to)
    return _FETCH.pack(layer_start, layer_end, pos_from, pos_to)


def parse_fetch(body: bytes) -> FetchBody:
    if len(body) != _FETCH.size:
        raise BadMessage(f"FETCH body must be {_FETCH.size} bytes, got {len(body)}")
    fb = FetchBody(*_FETCH.unpack(body))
    _check_fetch(fb.layer_start, fb.layer_end, fb.pos_from, fb.pos_to)
    return fb


def _check_fetch(a: int, b: int, pos_from: int, pos_to: int) -> None:
    if not 0 <= a < b < 2**32:
        raise BadMessage(f"FETCH layer range [{a}, {b}) is empty or out of range")
    if not 0 <= pos_from <= pos_to < 2**32:
        raise BadMessage(f"FETCH position range [{pos_from}, {pos_to}) is malformed")


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> bytes | None:
    """The next frame's bytes (after the length prefix), None at a clean EOF."""
    try:
        head = await reader.readexactly(LEN.size)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise BadMessage(f"connection closed inside a length prefix ({len(e.partial)} bytes)") from None
        return None
    (n,) = LEN.unpack(head)
    if n > max_bytes:
        raise FrameTooLarge(f"frame of {n} bytes exceeds this node's limit of {max_bytes}")
    return await reader.readexactly(n)
