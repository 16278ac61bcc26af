"""The gateway's receipt is one typed, versioned model (`protocol.receipt.GatewayReceipt`) that
`veriplex audit` reads back; a version it does not know is refused with a clear message."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from protocol.receipt import RECEIPT_VERSION, GatewayReceipt
from verifier.errors import ReceiptError
from verifier.receipt import parse_receipt

OP = "0x" + "ab" * 20
RID = "0x" + "11" * 32


def _receipt(**over: object) -> GatewayReceipt:
    fields = dict(
        request_id=RID, seq=7, gateway="0x" + "cd" * 20, chain_id=31337, payments="0x" + "ef" * 20,
        batch={"lookup": f"/v1/receipts/{RID}"},
        pipeline=[{"operator": OP, "host": "127.0.0.1", "port": 7000, "layers": [0, 4]}],
        commitment_root="0x" + "22" * 32,
        commitments=[{"stage": 0, "operator": OP, "layers": [0, 4], "root": "0x" + "33" * 32,
                      "positions": 9, "hidden_size": 64, "n_tokens": 9,
                      "signature": "0x" + "44" * 65}],
        commitment_roots=["0x" + "33" * 32], model={"id": 1, "name": "tiny"},
        model_hash="0x" + "55" * 32, tokens={"prompt": 5, "completion": 4},
        price_wei={"prompt": "10", "completion": "20"}, charge_wei="130")
    fields.update(over)
    return GatewayReceipt.model_validate(fields)


def test_a_written_receipt_reads_back_field_for_field():
    r = parse_receipt(_receipt().to_json())
    assert r.kind == "gateway" and r.request_id == bytes.fromhex(RID[2:])
    assert (r.seq, r.chain_id, r.tokens_in, r.tokens_out, r.charge) == (7, 31337, 5, 4, 130)
    assert r.pipeline[0].layers == (0, 4) and r.pipeline[0].port == 7000
    assert r.commitments[0].commit.positions == 9 and r.model_id == 1
    assert _receipt().to_json()["version"] == RECEIPT_VERSION


def test_an_unknown_receipt_version_is_refused_by_the_audit_and_by_the_model():
    doc = _receipt().to_json() | {"version": 2}
    with pytest.raises(ReceiptError, match="receipt version 2 is not supported"):
        parse_receipt(doc)
    with pytest.raises(ValidationError):
        GatewayReceipt.model_validate(doc)


def test_the_model_refuses_malformed_fields_quoting_them():
    with pytest.raises(ValidationError, match="request_id"):
        _receipt(request_id="0x1234")
    with pytest.raises(ValidationError, match="charge_wei"):
        _receipt(charge_wei="-1")
    with pytest.raises(ValidationError, match="surprise"):
        _receipt(surprise=1)
