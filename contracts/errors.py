"""The `contracts` package's exception tree, and decoding of revert data into it.

Every error this package raises derives from `ContractsError`:

    ContractsError
    ├── BuildError              a contract failed to compile, or an artifact is unknown
    ├── ManifestError           manifest missing/invalid, wrong chain id, or no code at an address
    ├── ChainError              talking to the node failed
    │   ├── RpcUnreachable      nothing answers at the RPC URL
    │   ├── RpcTimeout          the node did not answer (or mine) in time
    │   └── RpcRejected         the node refused a request (nonce too low, insufficient funds, ...)
    └── Revert                  the EVM reverted; `.reason` is the decoded message
        ├── RegistryRevert      "registry: ..."   (NodeRegistry)
        ├── ModelsRevert        "models: ..."     (ModelRegistry)
        ├── SchedulerRevert     "scheduler: ..."  (Scheduler)
        ├── PaymentsRevert      "payments: ..."   (Payments)
        ├── VerificationRevert  "verification: ..." / "randomness: ..." (Verification, its sources)
        ├── OwnershipRevert     "ownable: ..." / "ownable_2step: ..." (snekmate admin modules)
        └── Panic               Panic(uint256): arithmetic overflow, bounds, ... (`.code`)

Vyper's `assert cond, "registry: stake below minimum"` reverts with the ABI encoding of
`Error(string)`; nodes return it in the JSON-RPC error's `data` (anvil: code 3). `decode_revert`
turns those bytes into the subclass chosen by the message's module prefix, so callers can write
`except RegistryRevert as e: print(e.message)`.
"""

from __future__ import annotations

from enum import StrEnum

from eth_abi import decode as abi_decode

ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)


class ContractsError(Exception):
    """Root of every error raised by the `contracts` package."""


class BuildError(ContractsError):
    """A contract does not compile, or an artifact is missing."""


class ManifestError(ContractsError):
    """The deployment manifest is missing, malformed, or does not match the chain."""


class ChainError(ContractsError):
    """A JSON-RPC exchange with the node failed."""


class RpcUnreachable(ChainError):
    """Nothing answers at the RPC URL."""


class RpcTimeout(ChainError):
    """The node did not answer, or did not mine a transaction, in time."""


class RpcRejected(ChainError):
    """The node refused the request (nonce too low, insufficient funds, bad signature, ...)."""


class Reason(StrEnum):
    """Revert messages (module prefix dropped) that off-chain code acts on: match them with
    `Revert.says(Reason.X)`, never by substring. The contracts' assert strings are the source;
    tests/contracts/test_reasons.py holds each one to a `.vy` assert."""

    TASK_ALREADY_OPEN = "task already open"
    BATCH_ALREADY_RELEASED = "batch already released"
    BLOCK_TOO_OLD = "block too old"


class Revert(ContractsError):
    """Execution reverted. `reason` is the full decoded message ("registry: not registered"),
    `message` the part after the module prefix, `module` the prefix, `data` the raw bytes."""

    module: str | None = None

    def __init__(self, reason: str, data: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = data
        prefix, sep, rest = reason.partition(": ")
        self.message = rest if sep else reason
        if sep and self.module is None:
            self.module = prefix

    def says(self, reason: Reason) -> bool:
        """True when this revert is `reason` (any module's assert with that message)."""
        return self.message == reason.value

    @property
    def unauthorized(self) -> bool:
        """True when the revert says the caller lacks a role."""
        return "caller" in self.message


class RegistryRevert(Revert):
    module = "registry"


class ModelsRevert(Revert):
    module = "models"


class SchedulerRevert(Revert):
    module = "scheduler"


class PaymentsRevert(Revert):
    module = "payments"


class VerificationRevert(Revert):
    module = "verification"


class OwnershipRevert(Revert):
    module = "ownable"


class Panic(Revert):
    """Panic(uint256): `code` as defined by Solidity (0x11 overflow, 0x32 out of bounds, ...)."""

    def __init__(self, code: int, data: bytes = b"") -> None:
        super().__init__(f"panic: code {code:#x}", data)
        self.code = code


_BY_PREFIX: dict[str, type[Revert]] = {
    "registry": RegistryRevert,
    "models": ModelsRevert,
    "scheduler": SchedulerRevert,
    "payments": PaymentsRevert,
    "verification": VerificationRevert,
    "randomness": VerificationRevert,
    "ownable": OwnershipRevert,
    "ownable_2step": OwnershipRevert,
}


def revert_from_reason(reason: str, data: bytes = b"") -> Revert:
    """The typed exception for a decoded revert message."""
    prefix = reason.partition(": ")[0]
    cls = _BY_PREFIX.get(prefix, Revert)
    return cls(reason, data)


def decode_revert(data: bytes | str | None) -> Revert:
    """Turn revert data (bytes or 0x-hex) into a typed `Revert`."""
    if data is None:
        return Revert("execution reverted (no reason)")
    if isinstance(data, str):
        try:
            data = bytes.fromhex(data.removeprefix("0x"))
        except ValueError:
            return revert_from_reason(data)
    if data[:4] == ERROR_SELECTOR:
        try:
            (reason,) = abi_decode(["string"], data[4:])
        except Exception:  # malformed payload: keep the bytes, say so
            return Revert("execution reverted (malformed Error(string))", data)
        return revert_from_reason(reason, data)
    if data[:4] == PANIC_SELECTOR and len(data) >= 36:
        return Panic(int.from_bytes(data[4:36], "big"), data)
    if not data:
        return Revert("execution reverted (no reason)", data)
    return Revert(f"execution reverted (data 0x{data.hex()})", data)
