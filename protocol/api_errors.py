"""The coordinator service's exception tree (drawn in the package docstring).

Every refusal carries the HTTP status the API answers with and a message quoting the offending
values, so a node operator reading the 4xx body knows what to fix.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Root of every error raised by `scheduler.service`."""

    status = 500
    code = "internal"


class HeartbeatRejected(ServiceError):
    """A heartbeat was refused; nothing about the sender's state changed."""

    status = 400
    code = "bad_heartbeat"


class MalformedMessage(HeartbeatRejected):
    status = 422
    code = "malformed"


class BadSignature(HeartbeatRejected):
    status = 401
    code = "bad_signature"


class UnknownOperator(HeartbeatRejected):
    status = 403
    code = "unknown_operator"


class WrongChain(HeartbeatRejected):
    status = 400
    code = "wrong_chain"


class StaleMessage(HeartbeatRejected):
    status = 400
    code = "stale"


class Replay(HeartbeatRejected):
    status = 409
    code = "replay"


class NotReady(ServiceError):
    status = 503
    code = "not_ready"


class ModelNotServed(ServiceError):
    status = 404
    code = "model_not_served"


class ModelSpecError(ServiceError):
    """The model's shape (heads, vocab, ...) is unknown or contradicts the ModelRegistry."""

    code = "model_spec"
