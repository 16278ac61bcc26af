"""What a stage checks before a frame touches its model, and how a refusal is coded on the wire.

Pure checks (no IO, no state of the server): that a frame is signed by the party the request names
for its sender (`check_signer`, `sender_of`), and that an OPEN is well formed and addressed to this
node (`check_open`: chain, request id and epoch agree, this node is the operator and layer range the
request assigns to the stage, the gateway signed the request and may open requests here, every
stage's operator is registered, the pipeline covers the model, the step matches the tokens).
`code_of` maps the data plane's exceptions to the `ErrorCode` an ERROR frame carries.
"""

from __future__ import annotations

from typing import Any

from node.runtime.models.errors import ModelError
from protocol.dataplane_errors import (
    BadMessage,
    BadSignature,
    FrameTooLarge,
    NoCapacity,
    NotAssigned,
    NotStored,
    Replay,
    StageFailed,
    UnknownRequest,
)
from protocol.frames import ErrorCode, Frame, OpenBody
from protocol.identity import recover

CODES: list[tuple[type[Exception], ErrorCode]] = [
    (NotAssigned, ErrorCode.NOT_ASSIGNED),
    (BadSignature, ErrorCode.BAD_SIGNATURE),
    (BadMessage, ErrorCode.BAD_MESSAGE),
    (Replay, ErrorCode.REPLAY),
    (UnknownRequest, ErrorCode.UNKNOWN_SESSION),
    (NoCapacity, ErrorCode.NO_CAPACITY),
    (FrameTooLarge, ErrorCode.TOO_LARGE),
    (StageFailed, ErrorCode.STAGE_FAILED),
    (NotStored, ErrorCode.NOT_STORED),
    (ModelError, ErrorCode.EXECUTION),
]


def code_of(e: Exception) -> ErrorCode:
    return next((c for cls, c in CODES if isinstance(e, cls)), ErrorCode.EXECUTION)


def sender_of(req: Any, idx: int) -> tuple[str, str]:
    """(address, role) of whoever sends stage `idx` its OPEN / rows / CLOSE: the gateway for the
    first stage, else the previous stage's operator."""
    if idx == 0:
        return req.gateway, "the gateway"
    return req.stages[idx - 1].operator, f"stage {idx - 1}"


def check_signer(f: Frame, expected: str, role: str) -> None:
    got = f.signer()
    if got.lower() != expected.lower():
        raise BadSignature(f"{f.kind.name} signed by {got}, but {role} is operator {expected}")


def check_open(f: Frame, ob: OpenBody, *, chain_id: int, address: str, layers: tuple[int, int],
               num_layers: int, directory: Any) -> int:
    """Refuse an OPEN that is malformed, not for this node, or not properly signed; return its
    step (tokens already generated)."""
    req = ob.request
    if req.chain_id != chain_id or f.request_id != req.rid or f.epoch != req.epoch:
        raise BadMessage(
            f"OPEN frame (chain {f.chain_id}, request {f.request_id.hex()}, epoch {f.epoch}) does not "
            f"match its request (chain {req.chain_id}, request {req.request_id}, epoch {req.epoch})"
        )
    idx = f.stage
    if idx >= len(req.stages):
        raise BadMessage(f"OPEN addresses stage {idx} of a {len(req.stages)}-stage pipeline")
    me = req.stages[idx]
    if me.operator.lower() != address.lower() or (me.start, me.end) != layers:
        raise NotAssigned(
            f"stage {idx} is operator {me.operator} layers [{me.start}, {me.end}); this node is "
            f"{address} layers [{layers[0]}, {layers[1]})"
        )
    if (me.start == 0) != (idx == 0):
        raise NotAssigned(f"stage {idx} cannot serve layers starting at {me.start}")
    gateway = recover(req.digest(ob.raw_request), ob.gateway_sig)
    if gateway.lower() != req.gateway.lower():
        raise BadSignature(f"request is signed by {gateway}, not by its gateway {req.gateway}")
    check_signer(f, *sender_of(req, idx))
    if not directory.gateway_ok(req.gateway):
        raise BadSignature(f"gateway {req.gateway} may not open requests on this node")
    for k, st in enumerate(req.stages):
        if not directory.operator_ok(st.operator):
            raise BadSignature(f"stage {k} operator {st.operator} is not an active registered operator")
    if req.stages[-1].end != num_layers:
        raise BadMessage(f"the pipeline ends at layer {req.stages[-1].end}; the model has {num_layers}")
    step = len(ob.tokens) - req.prompt_len
    if f.step != step:
        raise BadMessage(f"OPEN step {f.step} does not match its {len(ob.tokens)} tokens (step {step})")
    return step
