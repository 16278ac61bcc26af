"""Errors of the data plane (worker server, sessions, pipeline client).

Each maps to one wire `ErrorCode`, so a server answers the sender with a clear ERROR frame and keeps
serving everyone else::

    DataPlaneError
    ├── BadMessage          malformed header, body or tensor; wrong shape or dtype   BAD_MESSAGE
    ├── BadSignature        unsigned, wrongly signed, or not the assigned operator    BAD_SIGNATURE
    │   └── NotAssigned     this node is not the operator the request names           NOT_ASSIGNED
    ├── Replay              a step / open / epoch already seen                        REPLAY
    ├── UnknownRequest      no session for this request on this stage                 UNKNOWN_SESSION
    ├── NoCapacity          KV-cache or hidden-store budget would overflow            NO_CAPACITY
    ├── FrameTooLarge       frame above the receiver's max_frame_bytes                TOO_LARGE
    ├── StageFailed         a downstream stage is unreachable or went away            STAGE_FAILED
    ├── NotStored           COMMIT / FETCH for rows or tokens this stage does not hold NOT_STORED
    └── RemoteError         the caller's view of an ERROR frame from the pipeline     (its code)

Executor errors (`node.runtime.models.errors.ModelError`) are answered with code EXECUTION.
"""

from __future__ import annotations


class DataPlaneError(Exception):
    """Root of the data plane's errors."""


class BadMessage(DataPlaneError):
    """A frame or body that does not parse, or a tensor of the wrong shape or dtype."""


class BadSignature(DataPlaneError):
    """Missing or invalid signature, or a signer that is not the operator assigned to the sender."""


class NotAssigned(BadSignature):
    """The request does not name this node's operator for the stage it addresses."""


class Replay(DataPlaneError):
    """A message for a step, open or epoch this node has already processed."""


class UnknownRequest(DataPlaneError):
    """No session for this request on this stage."""


class NoCapacity(DataPlaneError):
    """Admitting the request would overflow the KV-cache budget or the hidden-state store."""


class FrameTooLarge(DataPlaneError):
    """A frame longer than the receiver accepts."""


class StageFailed(DataPlaneError):
    """A stage of the pipeline could not be reached or closed its connection mid-request."""

    def __init__(self, message: str, stage: int | None = None):
        super().__init__(message)
        self.stage = stage


class NotStored(DataPlaneError):
    """COMMIT or FETCH for a request, rows or tokens this stage does not hold (never, or evicted)."""


class RemoteError(DataPlaneError):
    """An ERROR frame received by the caller: `code` (protocol.ErrorCode), `stage` where it arose."""

    def __init__(self, code: int, stage: int, message: str):
        super().__init__(f"stage {stage}: {message} (code {code})")
        self.code = code
        self.stage = stage
