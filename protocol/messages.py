"""Wire messages of the coordinator API: frozen, versioned, bounded pydantic types.

A heartbeat is signed by the node's OPERATOR key (secp256k1, recoverable, 65 bytes r ‖ s ‖ v)
over a domain-separated digest of a fixed binary layout — integers only, so every language
computes the same bytes (no float or JSON canonicalisation)::

    digest = keccak256(b"veriplex.heartbeat.v1" ‖ HB_LAYOUT.pack(
        version u8, kind u8, chain_id u64, operator 20s, seq u64, timestamp_ms u64, model_id u64,
        active u32, queue_ms u32, kv_used_bytes u64, kv_capacity_bytes u64, layer_us u32,
        epoch u64, layer_start u32, layer_end u32))

(little-endian). `epoch`, `layer_start`, `layer_end` say which range the node serves right now and
the epoch of the assignment it serves it for (all 0 while it serves nothing): the coordinator
routes a stage only once its node confirms it this way. Binding the chain id stops a heartbeat from one network counting on another;
the strictly increasing `seq` and the timestamp window stop replays. Route, assignment and status
answers are typed here too, so the gateway and workers parse exactly what the coordinator sends.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

from coincurve import PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from protocol import dataplane_errors
from protocol.api_errors import BadSignature
from protocol.dataplane_errors import BadMessage
from protocol.identity import address_of_key, recover, sign_digest
from protocol.keccak import keccak
from protocol.sampling import Sampling

VERSION = 1
HEARTBEAT_DOMAIN = b"veriplex.heartbeat.v1"
REQUEST_DOMAIN = b"veriplex.request.v1"
MAX_ERROR_TEXT = 1024
MAX_STAGES = 64
HB_LAYOUT = struct.Struct("<BBQ20sQQQIIQQIQII")
ADDRESS = r"^0x[0-9a-fA-F]{40}$"
SIGNATURE = r"^0x[0-9a-fA-F]{130}$"
U64 = 2**64
U32 = 2**32
MAX_QUEUE_MS = 3_600_000  # an hour of backlog: beyond that a node is broken, not busy
MAX_ACTIVE = 1_000_000
MAX_KV_BYTES = 2**50  # 1 PiB: far above any GPU box, far below overflow
MAX_LAYER_US = 60_000_000  # a minute per layer
MAX_TOKENS = 2**20
MAX_EXCLUDE = 256


class HeartbeatKind(enum.IntEnum):
    BEAT = 1  # alive; here is my load
    LEAVE = 2  # going away now: evict me without waiting for the timeout


class Heartbeat(BaseModel):
    """What a node reports about itself. `layer_us` 0 means "not measured yet"."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    version: int = Field(VERSION, ge=VERSION, le=VERSION)
    kind: HeartbeatKind = HeartbeatKind.BEAT
    chain_id: int = Field(gt=0, lt=U64)
    operator: str = Field(pattern=ADDRESS)
    seq: int = Field(ge=1, lt=U64, description="strictly increasing per operator")
    timestamp_ms: int = Field(ge=0, lt=U64, description="sender's Unix time in milliseconds")
    model_id: int = Field(0, ge=0, lt=U64, description="model served (0: none yet)")
    active: int = Field(0, ge=0, le=MAX_ACTIVE, description="sequences in the running batch")
    queue_ms: int = Field(0, ge=0, le=MAX_QUEUE_MS, description="backlog ahead of a new arrival")
    kv_used_bytes: int = Field(0, ge=0, le=MAX_KV_BYTES)
    kv_capacity_bytes: int = Field(0, ge=0, le=MAX_KV_BYTES, description="0: not reported")
    layer_us: int = Field(0, ge=0, le=MAX_LAYER_US, description="measured decode µs per layer")
    epoch: int = Field(0, ge=0, lt=U64, description="epoch of the assignment served (0: none)")
    layer_start: int = Field(0, ge=0, lt=U32, description="first layer served now")
    layer_end: int = Field(0, ge=0, lt=U32, description="end of the range served now (0: none)")

    @model_validator(mode="after")
    def _kv_within_capacity(self) -> Heartbeat:
        if self.kv_capacity_bytes and self.kv_used_bytes > self.kv_capacity_bytes:
            raise ValueError(f"kv_used_bytes ({self.kv_used_bytes}) exceeds kv_capacity_bytes "
                             f"({self.kv_capacity_bytes})")
        if self.layer_end and self.layer_end <= self.layer_start:
            raise ValueError(f"layer range [{self.layer_start}, {self.layer_end}) is empty")
        if not self.layer_end and (self.layer_start or self.epoch):
            raise ValueError(f"layer_start ({self.layer_start}) and epoch ({self.epoch}) need a "
                             f"served range (layer_end is 0)")
        return self

    @property
    def serving(self) -> tuple[int, int, int] | None:
        """`(epoch, layer start, layer end)` the node serves now, or None."""
        return (self.epoch, self.layer_start, self.layer_end) if self.layer_end else None

    def digest(self) -> bytes:
        body = HB_LAYOUT.pack(
            self.version, int(self.kind), self.chain_id, bytes.fromhex(self.operator[2:]),
            self.seq, self.timestamp_ms, self.model_id, self.active, self.queue_ms,
            self.kv_used_bytes, self.kv_capacity_bytes, self.layer_us, self.epoch,
            self.layer_start, self.layer_end)
        return keccak(HEARTBEAT_DOMAIN + body)


class SignedHeartbeat(BaseModel):
    """The body of `POST /heartbeat`."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    heartbeat: Heartbeat
    signature: str = Field(pattern=SIGNATURE)


def address_of(key: PrivateKey) -> str:
    return address_of_key(key)


def sign_heartbeat(private_key: bytes, hb: Heartbeat) -> SignedHeartbeat:
    """Sign `hb` with the operator key (raw 32 bytes). Used by workers and tests."""
    sig = sign_digest(PrivateKey(private_key), hb.digest())
    return SignedHeartbeat(heartbeat=hb, signature="0x" + sig.hex())


def recover_signer(signed: SignedHeartbeat) -> str:
    """The checksummed address whose key produced the signature, or `BadSignature`."""
    try:
        return recover(signed.heartbeat.digest(), bytes.fromhex(signed.signature[2:]))
    except dataplane_errors.BadSignature as e:
        raise BadSignature(str(e)) from None


# ── the data plane's request description ──────────────────────────────────────────────────────────────────
class StageAssignment(BaseModel):
    """One stage of a pipeline: which operator serves layers [start, end) at host:port."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    operator: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$")
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    start: int = Field(ge=0, lt=2**16)
    end: int = Field(ge=1, le=2**16)
    endpoint: str = Field("", max_length=2048,
                          description="the operator's registered endpoint URL, when known (routes)")


class PipelineRequest(BaseModel):
    """What the gateway asks of a pipeline; signed by the gateway and carried by every OPEN."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    version: int = Field(VERSION, ge=VERSION, le=VERSION)
    chain_id: int = Field(gt=0, lt=2**64)
    request_id: str = Field(pattern=r"^0x[0-9a-f]{64}$")
    epoch: int = Field(0, ge=0, lt=2**32)  # bumped on every re-routing (failover)
    gateway: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$")
    stages: tuple[StageAssignment, ...] = Field(min_length=1, max_length=MAX_STAGES)
    sampling: Sampling = Sampling()
    prompt_len: int = Field(ge=1, lt=2**31)
    max_new_tokens: int = Field(ge=1, lt=2**31)
    stop_ids: tuple[int, ...] = Field((), max_length=64)

    @field_validator("stages")
    @classmethod
    def _contiguous(cls, v: tuple[StageAssignment, ...]) -> tuple[StageAssignment, ...]:
        if v[0].start != 0:
            raise ValueError(f"the first stage must start at layer 0, not {v[0].start}")
        for a, b in zip(v, v[1:], strict=False):
            if a.end != b.start:
                raise ValueError(f"stages are not contiguous: [.., {a.end}) then [{b.start}, ..)")
        for s in v:
            if s.end <= s.start:
                raise ValueError(f"empty layer range [{s.start}, {s.end})")
        return v

    @property
    def rid(self) -> bytes:
        return bytes.fromhex(self.request_id[2:])

    @property
    def capacity(self) -> int:
        """Positions a stage must hold: the prompt and every generated token but the last."""
        return self.prompt_len + self.max_new_tokens

    def digest(self, raw: bytes) -> bytes:
        return keccak(REQUEST_DOMAIN + struct.pack("<Q", self.chain_id) + keccak(raw))


def encode_request(req: PipelineRequest) -> bytes:
    return req.model_dump_json().encode()


def decode_request(raw: bytes) -> PipelineRequest:
    try:
        return PipelineRequest.model_validate_json(raw)
    except (ValidationError, ValueError, json.JSONDecodeError) as e:
        raise BadMessage(f"invalid pipeline request: {e}".replace("\n", "; ")[:MAX_ERROR_TEXT]) from None


# ── requests and answers ─────────────────────────────────────────────────────────────────────
class RouteRequest(BaseModel):
    """The body of `POST /route` (from the gateway)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    version: int = Field(VERSION, ge=VERSION, le=VERSION)
    model_id: int = Field(ge=1, lt=U64)
    prompt_tokens: int = Field(1, ge=1, le=MAX_TOKENS)
    output_tokens: int = Field(1, ge=1, le=MAX_TOKENS)
    exclude: tuple[str, ...] = Field((), max_length=MAX_EXCLUDE,
                                     description="operators to avoid (e.g. a stage that failed)")

    @model_validator(mode="after")
    def _addresses(self) -> RouteRequest:
        for a in self.exclude:
            if len(a) != 42 or not a.startswith("0x"):
                raise ValueError(f"exclude entry {a!r} is not a 0x-prefixed 20-byte address")
            int(a[2:], 16)
        return self


class RouteResponse(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    version: int = VERSION
    epoch: int
    model_id: int
    snapshot_hash: str
    stages: tuple[StageAssignment, ...]
    expected_ms: float


class AssignmentResponse(BaseModel):
    """`GET /assignment/{operator}`: what the latest published epoch asks of this operator."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    version: int = VERSION
    operator: str
    epoch: int
    model_id: int
    assigned: bool
    layer_start: int = 0
    layer_end: int = 0
    standby: bool = False
    snapshot_hash: str = ""


class HeartbeatAck(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    version: int = VERSION
    accepted: bool
    seq: int
    epoch: int
    assignment: AssignmentResponse | None = None


class ReportOutcome(enum.Enum):
    """What the coordinator found when it checked a reported node itself."""

    ALIVE = "alive"  # its data port answered a PING signed by its operator: report refuted
    SUSPECTED = "suspected"  # unreachable but heard from lately: re-probed until decided
    EVICTED = "evicted"  # unreachable and silent: evicted, its stage re-placed (or it already was)


class FailureReport(BaseModel):
    """The body of `POST /report`: a gateway saw `operator`'s stage fail a request. A hint only:
    the coordinator evicts nobody on a report's word; it probes the node's data port itself and
    weighs its heartbeats (scheduler/service/suspects.py), so a lying report changes nothing."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    version: int = Field(VERSION, ge=VERSION, le=VERSION)
    model_id: int = Field(ge=1, lt=U64)
    operator: str = Field(pattern=ADDRESS)
    reason: str = Field("", max_length=MAX_ERROR_TEXT)


class FailureReportAck(BaseModel):
    """The answer to a `FailureReport`: the coordinator's own finding so far."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    version: int = VERSION
    operator: str
    outcome: ReportOutcome
    detail: str = ""


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@dataclass(frozen=True)
class StageCommit:
    """One stage's output commitment (verifier/ENCODING.md root and the shape it binds)."""

    root: bytes
    positions: int
    hidden_size: int
    n_tokens: int = 0

    def as_tuple(self) -> tuple[bytes, int, int, int]:
        return (self.root, self.positions, self.hidden_size, self.n_tokens)
