"""Typed wrapper of the ModelRegistry contract: served models, their hashes and prices, and how
each is served (precision + verification profile hash)."""

from __future__ import annotations

from dataclasses import dataclass

from eth_abi import encode as abi_encode
from eth_utils import keccak

from contracts.binding import Binding, TxResult
from contracts.rpc import Signer


@dataclass(frozen=True)
class ModelInfo:
    model_id: int
    name: str
    layers: int
    hidden_size: int
    weights_root: bytes
    tokenizer_hash: bytes
    price_in_wei: int  # per input token
    price_out_wei: int  # per output token
    active: bool

    def charge(self, tokens_in: int, tokens_out: int) -> int:
        """What the contract will accept as the charge for a request."""
        return tokens_in * self.price_in_wei + tokens_out * self.price_out_wei


PRECISIONS = {1: "fp32", 2: "bf16", 3: "fp16", 4: "fp8"}  # the contract's PRECISION_* codes
PRECISION_CODES = {v: k for k, v in PRECISIONS.items()}


@dataclass(frozen=True)
class Serving:
    """How a model is served: the registered compute precision and its verification profile."""

    precision: str | None  # None until the admin sets it
    profile_hash: bytes
    chunk_rule: tuple[int, int] | None = None  # the profile's (D, K) the spot check applies


class ModelRegistry(Binding):
    """`chain.model_registry`."""

    def model(self, model_id: int) -> ModelInfo | None:
        t = self._view("models", model_id)
        if int(t[1]) == 0:
            return None
        return ModelInfo(
            model_id,
            str(t[0]),
            int(t[1]),
            int(t[2]),
            bytes(t[3]),
            bytes(t[4]),
            int(t[5]),
            int(t[6]),
            bool(t[7]),
        )

    def model_by_name(self, name: str) -> ModelInfo | None:
        model_id = int(self._view("id_by_name", name))
        return self.model(model_id) if model_id else None

    def model_count(self) -> int:
        return int(self._view("model_count"))

    def models(self) -> list[ModelInfo]:
        out = [self.model(i) for i in range(1, self.model_count() + 1)]
        return [m for m in out if m is not None]

    def register_model(
        self,
        name: str,
        layers: int,
        hidden_size: int,
        weights_root: bytes,
        tokenizer_hash: bytes,
        price_in_wei: int,
        price_out_wei: int,
        sender: Signer | None = None,
    ) -> int:
        """Add a model (admin); returns its id."""
        res = self._send(
            "register_model",
            name,
            layers,
            hidden_size,
            weights_root,
            tokenizer_hash,
            price_in_wei,
            price_out_wei,
            sender=sender,
        )
        return int(res.event("ModelRegistered").args["model_id"])

    def set_prices(
        self, model_id: int, price_in_wei: int, price_out_wei: int, sender: Signer | None = None
    ) -> TxResult:
        return self._send("set_prices", model_id, price_in_wei, price_out_wei, sender=sender)

    def set_active(self, model_id: int, active: bool, sender: Signer | None = None) -> TxResult:
        return self._send("set_active", model_id, active, sender=sender)

    def serving(self, model_id: int) -> Serving:
        t = self._view("serving", model_id)
        precision = PRECISIONS.get(int(t[0]))
        return Serving(precision, bytes(t[1]), (int(t[2]), int(t[3])) if precision else None)

    def queue_serving(self, model_id: int, precision: str, profile_hash: bytes, chunk_rule: tuple[int, int],
                      sender: Signer | None = None) -> TxResult:
        """Announce `set_serving` with these arguments (it may run once the timelock delay passed)."""
        op = keccak(abi_encode(["uint256", "uint8", "bytes32", "uint256", "uint256"],
                           [model_id, PRECISION_CODES[precision], profile_hash, *chunk_rule]))
        return self._send("queue", op, sender=sender)

    def set_serving(self, model_id: int, precision: str, profile_hash: bytes, chunk_rule: tuple[int, int],
                    sender: Signer | None = None) -> TxResult:
        """Record the serving precision ("fp32", "bf16", "fp16", "fp8"), the profile hash and the
        profile's chunk rule (D, K), which the spot check of the model's tasks applies (admin;
        behind the timelock: `queue_serving` with the same arguments first unless the delay is 0)."""
        if precision not in PRECISION_CODES:
            raise ValueError(f"precision {precision!r} is not one of {sorted(PRECISION_CODES)}")
        d, k = chunk_rule
        if not (0 <= d < 65536 and 0 <= k < 32):
            raise ValueError(f"chunk rule (D={d}, K={k}) out of range (D < 65536, K < 32)")
        return self._send("set_serving", model_id, PRECISION_CODES[precision], profile_hash, d, k, sender=sender)
