"""The devnet's exception tree, and the JSON-RPC error codes it maps to.

::

    DevnetError                      any devnet failure
    ├── DevnetLocked                 another process already serves this database
    ├── StoreError                   the SQLite file is unusable or belongs to another chain
    └── RpcError(code, message, data)   a JSON-RPC error answer
        ├── ParseError        -32700  the body is not JSON
        ├── InvalidRequest    -32600  not a JSON-RPC 2.0 request object
        ├── MethodNotFound    -32601  unknown method
        ├── InvalidParams     -32602  wrong number or type of parameters
        ├── ServerError       -32000  a refused transaction (nonce too low, insufficient funds, ...)
        └── ExecutionReverted      3  the EVM reverted; `data` holds the raw revert bytes

The codes and messages follow geth and anvil so that any web3 client decodes them the same way.
"""

from __future__ import annotations

from typing import Any


class DevnetError(Exception):
    """Base class of every devnet error."""


class DevnetLocked(DevnetError):
    """Another process holds the database lock."""


class StoreError(DevnetError):
    """The chain database cannot be used."""


class RpcError(DevnetError):
    """An error answered to a JSON-RPC client."""

    code = -32603

    def __init__(self, message: str, data: Any = None, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class ParseError(RpcError):
    code = -32700


class InvalidRequest(RpcError):
    code = -32600


class MethodNotFound(RpcError):
    code = -32601


class InvalidParams(RpcError):
    code = -32602


class ServerError(RpcError):
    code = -32000


class ExecutionReverted(RpcError):
    """The EVM reverted. `data` is the 0x-hex revert payload (e.g. ABI-encoded Error(string))."""

    code = 3
