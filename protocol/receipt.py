"""The receipt every completion carries (the `veriplex` object of a gateway response): one frozen,
versioned type that the gateway writes and `veriplex audit` reads back (`verifier.receipt` accepts it
and the older shapes). JSON-level types only — hex strings, wei as decimal strings — so any language
can read it; `to_json()` is the exact wire form.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RECEIPT_VERSION = 1
HASH = r"^0x[0-9a-fA-F]{64}$"
ADDRESS = r"^0x[0-9a-fA-F]{40}$"
WEI = r"^[0-9]{1,78}$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReceiptStage(_Frozen):
    """One stage of the pipeline that served the request, as a receipt states it (the gateway always
    says where it was reached; the explorer's download, from the chain, cannot)."""

    operator: str = Field(pattern=ADDRESS)
    layers: tuple[int, int]
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)


class ReceiptStageCommit(_Frozen):
    """One stage's signed commitment (`node.dataplane.query.SignedStageCommit.to_json`)."""

    stage: int = Field(ge=0)
    operator: str = Field(pattern=ADDRESS)
    layers: tuple[int, int]
    root: str = Field(pattern=HASH)
    positions: int = Field(ge=0)
    hidden_size: int = Field(ge=0)
    n_tokens: int = Field(ge=0)
    signature: str = Field(pattern=r"^0x[0-9a-fA-F]{130}$")


class ReceiptBatch(_Frozen):
    """Where the record is: pending until the gateway's settlement lands (`lookup` tells)."""

    status: Literal["pending"] = "pending"
    batch_id: int | None = None
    lookup: str


class ReceiptModel(_Frozen):
    id: int = Field(ge=0)
    name: str


class TokenCounts(_Frozen):
    prompt: int = Field(ge=0)
    completion: int = Field(ge=0)


class TokenPrices(_Frozen):
    prompt: str = Field(pattern=WEI)
    completion: str = Field(pattern=WEI)


class GatewayReceipt(_Frozen):
    """What a paid request's response says about itself, for the client and any auditor."""

    version: Literal[1] = RECEIPT_VERSION
    request_id: str = Field(pattern=HASH)
    seq: int = Field(ge=0)
    gateway: str = Field(pattern=ADDRESS)
    chain_id: int = Field(gt=0)
    payments: str = Field(pattern=ADDRESS)
    batch: ReceiptBatch
    pipeline: tuple[ReceiptStage, ...]
    commitment_root: str = Field(pattern=HASH)
    commitments: tuple[ReceiptStageCommit, ...]
    commitment_roots: tuple[str, ...]
    commitments_error: str | None = None  # why the gateway got no stage commitments
    model: ReceiptModel
    model_hash: str = Field(pattern=HASH)
    tokens: TokenCounts
    price_wei: TokenPrices
    charge_wei: str = Field(pattern=WEI)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
