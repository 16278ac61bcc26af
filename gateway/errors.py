"""The gateway's exception tree. `ApiError`s become OpenAI-shaped error bodies
(`{"error": {"message", "type", "param", "code"}}`) with their HTTP status; nothing is charged for
a request refused with one.

```
GatewayError
├── ApiError                  .status .type .code .param
│   ├── InvalidRequest        400 invalid_request_error (malformed body, context length)
│   ├── AuthError             401 authentication_error (missing/invalid/revoked/foreign key)
│   ├── InsufficientFunds     402 insufficient_quota (cap, deposit, expiry)
│   ├── ModelNotFound         404 invalid_request_error model_not_found
│   └── Unavailable           503 service_unavailable (no pipeline, chain unreadable)
└── SettlementError           a batch could not be built or sent (retried later)
```
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of the gateway's errors."""


class ApiError(GatewayError):
    status = 500
    type = "server_error"

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class AuthError(ApiError):
    status = 401
    type = "authentication_error"


class InsufficientFunds(ApiError):
    status = 402
    type = "insufficient_quota"


class ModelNotFound(ApiError):
    status = 404
    type = "invalid_request_error"


class Unavailable(ApiError):
    status = 503
    type = "service_unavailable"


class SettlementError(GatewayError):
    """A batch could not be settled now; the batcher retries it."""
