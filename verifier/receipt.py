"""Reading a receipt for `veriplex audit`: the gateway's, the explorer's, or a bare request id.

Accepted inputs (DESIGN §5.7, session spec §2), all reduced to one frozen `Receipt`:

- the gateway's receipt object — the `veriplex` field of a completion response, the whole response
  (the field is taken from it), or `GET /v1/receipts/{request_id}`: `request_id`, `chain_id`,
  `payments`, `gateway`, `seq`, `tokens {prompt, completion}`, `charge_wei`, `commitment_root`,
  `commitments [{stage, operator, layers, root, positions, hidden_size, n_tokens, signature}]`,
  `pipeline` (objects with operator / host / port / layers, or `[operator, start, end]` lists) and,
  once settled, `batch_id`, `tx_hash`, `leaf_index`, `proof`, `pipelines` (top level or under
  `batch`) and `record` (its `key_hash`, `pipeline_index`); `commitments_error` is quoted when the
  receipt carries no commitments;
- the explorer's download (`"kind": "veriplex.explorer.request"`): the settled record under
  `request` (tokens_in / tokens_out / charge_wei / key_hash / commitment_root / pipeline ...);
- a bare request id (0x + 64 hex digits): everything else comes from the chain.

Every field but the request id is optional: what the receipt states is compared with the chain,
what it omits is read from the chain. Malformed values raise `ReceiptError` quoting the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.batch import Pipeline, Stage
from protocol.messages import StageCommit
from protocol.receipt import RECEIPT_VERSION, ReceiptStage
from verifier.errors import ReceiptError

EXPLORER_KIND = "veriplex.explorer.request"
MAX_RECEIPT_BYTES = 16 * 1024 * 1024
_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


@dataclass(frozen=True)
class StageClaim:
    """One stage's signed commitment as the receipt states it."""

    stage: int
    commit: StageCommit
    signature: bytes | None
    operator: str | None = None
    layers: tuple[int, int] | None = None


@dataclass(frozen=True)
class Receipt:
    kind: str  # "gateway" | "explorer" | "request id"
    request_id: bytes
    chain_id: int | None = None
    payments: str | None = None
    gateway: str | None = None
    seq: int | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    charge: int | None = None
    commitment_root: bytes | None = None
    commitments: tuple[StageClaim, ...] = ()
    pipeline: tuple[ReceiptStage, ...] = ()
    batch_id: int | None = None
    tx_hash: str | None = None
    leaf_index: int | None = None
    proof: tuple[bytes, ...] | None = None
    pipelines: tuple[Pipeline, ...] | None = None
    key_hash: bytes | None = None
    pipeline_index: int | None = None
    commitments_error: str | None = None  # why the gateway got no stage commitments
    model_id: int | None = None

    def rid_hex(self) -> str:
        return "0x" + self.request_id.hex()


# ------------------------------------------------------------------ field parsers
def _hash(v: Any, field: str) -> bytes:
    if not isinstance(v, str) or not _HASH.match(v):
        raise ReceiptError(f"{field} must be 0x + 64 hex digits, got {v!r:.80}")
    return bytes.fromhex(v[2:])


def _address(v: Any, field: str) -> str:
    if not isinstance(v, str) or not _ADDRESS.match(v):
        raise ReceiptError(f"{field} must be an address (0x + 40 hex digits), got {v!r:.80}")
    from web3 import Web3

    return str(Web3.to_checksum_address(v))


def _int(v: Any, field: str, lo: int = 0, hi: int = 2**256 - 1) -> int:
    if isinstance(v, bool):
        raise ReceiptError(f"{field} must be an integer, got {v!r}")
    if isinstance(v, str) and re.fullmatch(r"\d{1,78}", v):
        v = int(v)
    if not isinstance(v, int) or not lo <= v <= hi:
        raise ReceiptError(f"{field} must be an integer in [{lo}, {hi}], got {v!r:.80}")
    return v


def _opt(d: dict[str, Any], key: str, parse: Any, field: str | None = None) -> Any:
    v = d.get(key)
    return None if v is None else parse(v, field or key)


def _hexbytes(v: Any, field: str, length: int) -> bytes:
    if not isinstance(v, str) or not re.fullmatch(r"0x[0-9a-fA-F]*", v) or len(v) != 2 + 2 * length:
        raise ReceiptError(f"{field} must be 0x + {2 * length} hex digits, got {v!r:.80}")
    return bytes.fromhex(v[2:])


def _layers(v: Any, field: str) -> tuple[int, int]:
    if not isinstance(v, list | tuple) or len(v) != 2:
        raise ReceiptError(f"{field} must be [start, end], got {v!r:.80}")
    a, b = _int(v[0], field, 0, 2**16), _int(v[1], field, 1, 2**16)
    if a >= b:
        raise ReceiptError(f"{field} must have start < end, got [{a}, {b}]")
    return a, b


def _stage_claim(v: Any, i: int) -> StageClaim:
    f = f"commitments[{i}]"
    if not isinstance(v, dict):
        raise ReceiptError(f"{f} must be an object, got {v!r:.80}")
    try:
        commit = StageCommit(
            _hash(v["root"], f + ".root"),
            _int(v["positions"], f + ".positions", 0, 2**32 - 1),
            _int(v["hidden_size"], f + ".hidden_size", 0, 2**32 - 1),
            _int(v.get("n_tokens", 0), f + ".n_tokens", 0, 2**32 - 1),
        )
    except KeyError as e:
        raise ReceiptError(f"{f} lacks {e.args[0]!r}") from None
    return StageClaim(
        stage=_int(v.get("stage", i), f + ".stage", 0, 2**16 - 1),
        commit=commit,
        signature=_opt(v, "signature", lambda x, n: _hexbytes(x, n, 65), f + ".signature"),
        operator=_opt(v, "operator", _address, f + ".operator"),
        layers=_opt(v, "layers", _layers, f + ".layers"),
    )


def _endpoint(v: Any, i: int) -> ReceiptStage:
    f = f"pipeline[{i}]"
    if isinstance(v, list | tuple) and len(v) == 3:  # [operator, start, end]
        return ReceiptStage(operator=_address(v[0], f + ".operator"),
                            layers=_layers(v[1:], f + ".layers"))
    if not isinstance(v, dict) or "operator" not in v:
        raise ReceiptError(f"{f} must be {{operator, layers, ...}} or [operator, start, end]")
    if "layers" in v:
        layers = _layers(v["layers"], f + ".layers")
    else:
        layers = _layers([v.get("layer_start", v.get("start")), v.get("layer_end", v.get("end"))],
                         f + ".layers")
    return ReceiptStage(
        operator=_address(v["operator"], f + ".operator"),
        layers=layers,
        host=str(v["host"]) if v.get("host") is not None else None,
        port=_opt(v, "port", lambda x, n: _int(x, n, 1, 65535), f + ".port"),
    )


def _pipeline(v: Any, i: int) -> Pipeline:
    f = f"pipelines[{i}]"
    if isinstance(v, dict):
        model_id, stages = v.get("model_id"), v.get("stages")
    elif isinstance(v, list | tuple) and len(v) == 2:
        model_id, stages = v
    else:
        raise ReceiptError(f"{f} must be {{model_id, stages}}, got {v!r:.80}")
    if not isinstance(stages, list) or not stages:
        raise ReceiptError(f"{f}.stages must be a non-empty list")
    eps = [_endpoint(s, k) for k, s in enumerate(stages)]
    return Pipeline(_int(model_id, f + ".model_id"),
                    tuple(Stage(e.operator, e.layers[0], e.layers[1]) for e in eps))


def _list(v: Any, field: str) -> list[Any]:
    if not isinstance(v, list):
        raise ReceiptError(f"{field} must be a list, got {v!r:.80}")
    return v


# ------------------------------------------------------------------ the two shapes
def _from_gateway(d: dict[str, Any]) -> Receipt:
    version = d.get("version", RECEIPT_VERSION)  # receipts from before versioning are version 1
    if version != RECEIPT_VERSION:
        raise ReceiptError(f"receipt version {version!r} is not supported (this audit reads "
                           f"version {RECEIPT_VERSION})")
    batch = d.get("batch") if isinstance(d.get("batch"), dict) else {}

    def pick(key: str) -> Any:
        return d[key] if d.get(key) is not None else batch.get(key)

    tokens = d.get("tokens") if isinstance(d.get("tokens"), dict) else {}
    commitments = tuple(_stage_claim(c, i)
                        for i, c in enumerate(_list(d.get("commitments") or [], "commitments")))
    proof = pick("proof")
    pipelines = pick("pipelines")
    record = d.get("record") if isinstance(d.get("record"), dict) else {}
    model = d.get("model") if isinstance(d.get("model"), dict) else None
    return Receipt(
        kind="gateway",
        request_id=_hash(d.get("request_id"), "request_id"),
        chain_id=_opt(d, "chain_id", _int),
        payments=_opt(d, "payments", _address),
        gateway=_opt(d, "gateway", _address),
        seq=_opt(d, "seq", _int),
        tokens_in=_opt(tokens, "prompt", _int, "tokens.prompt"),
        tokens_out=_opt(tokens, "completion", _int, "tokens.completion"),
        charge=_opt(d, "charge_wei", _int),
        commitment_root=_opt(d, "commitment_root", _hash),
        commitments=commitments,
        pipeline=tuple(_endpoint(s, i) for i, s in enumerate(_list(d.get("pipeline") or [],
                                                                    "pipeline"))),
        batch_id=None if pick("batch_id") is None else _int(pick("batch_id"), "batch_id"),
        tx_hash=None if pick("tx_hash") is None else _hash(pick("tx_hash"), "tx_hash").hex(),
        leaf_index=None if pick("leaf_index") is None else _int(pick("leaf_index"), "leaf_index"),
        proof=None if proof is None else tuple(
            _hash(p, f"proof[{i}]") for i, p in enumerate(_list(proof, "proof"))),
        pipelines=None if pipelines is None else tuple(
            _pipeline(p, i) for i, p in enumerate(_list(pipelines, "pipelines"))),
        key_hash=_opt(record, "key_hash", _hash, "record.key_hash"),
        pipeline_index=_opt(record, "pipeline_index", _int, "record.pipeline_index"),
        commitments_error=str(d["commitments_error"]) if d.get("commitments_error") else None,
        model_id=_opt(model, "id", _int, "model.id") if model else _opt(d, "model_id", _int),
    )


def _from_explorer(d: dict[str, Any]) -> Receipt:
    r = d.get("request")
    if not isinstance(r, dict):
        raise ReceiptError("explorer receipt lacks its 'request' object")
    pipe = r.get("pipeline") or {}
    stages = pipe.get("stages", []) if isinstance(pipe, dict) else []
    return Receipt(
        kind="explorer",
        request_id=_hash(r.get("request_id"), "request.request_id"),
        chain_id=_opt(d, "chain_id", _int),
        payments=_opt(r, "payments", _address, "request.payments"),
        gateway=_opt(r, "gateway", _address, "request.gateway"),
        tokens_in=_opt(r, "tokens_in", _int, "request.tokens_in"),
        tokens_out=_opt(r, "tokens_out", _int, "request.tokens_out"),
        charge=_opt(r, "charge_wei", _int, "request.charge_wei"),
        commitment_root=_opt(r, "commitment_root", _hash, "request.commitment_root"),
        pipeline=tuple(_endpoint(s, i) for i, s in enumerate(_list(stages, "request.pipeline"))),
        batch_id=_opt(r, "batch_id", _int, "request.batch_id"),
        key_hash=_opt(r, "key_hash", _hash, "request.key_hash"),
        model_id=_opt(r, "model_id", _int, "request.model_id"),
    )


def parse_receipt(data: Any) -> Receipt:
    """A `Receipt` from a decoded JSON document (any accepted shape); `ReceiptError` if malformed."""
    if not isinstance(data, dict):
        raise ReceiptError(f"a receipt is a JSON object, got {type(data).__name__}")
    if data.get("kind") == EXPLORER_KIND:
        return _from_explorer(data)
    if isinstance(data.get("veriplex"), dict):  # a whole completion response
        data = data["veriplex"]
    if "request_id" not in data:
        raise ReceiptError("not a Veriplex receipt: no request_id (expected the gateway's "
                           "`veriplex` receipt object or the explorer's receipt download)")
    return _from_gateway(data)


def load_receipt(arg: str) -> Receipt:
    """The receipt in file `arg`, or a bare request id (0x + 64 hex digits)."""
    path = Path(arg)
    if not path.exists() and _HASH.match(arg):
        return Receipt(kind="request id", request_id=bytes.fromhex(arg[2:]))
    try:
        if path.stat().st_size > MAX_RECEIPT_BYTES:
            raise ReceiptError(f"{arg} is larger than {MAX_RECEIPT_BYTES} bytes: not a receipt")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReceiptError(f"no receipt file {arg} (pass a receipt JSON file or a request id)") \
            from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReceiptError(f"cannot read receipt {arg}: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReceiptError(f"receipt {arg} is not JSON: {e}") from None
    return parse_receipt(data)
