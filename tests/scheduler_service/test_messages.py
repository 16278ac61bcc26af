"""Heartbeat wire format: every field is bound by the signature; bounds are enforced."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from protocol.messages import (
    MAX_QUEUE_MS,
    Heartbeat,
    HeartbeatKind,
    RouteRequest,
    SignedHeartbeat,
    recover_signer,
    sign_heartbeat,
)
from tests.support.coordinator import CHAIN_ID, operator

BASE = dict(chain_id=CHAIN_ID, operator=operator(0).address, seq=3, timestamp_ms=1_700_000_000_000,
            model_id=1, active=2, queue_ms=40, kv_used_bytes=1000, kv_capacity_bytes=4000,
            layer_us=250, epoch=5, layer_start=2, layer_end=6)
CHANGED = dict(kind=HeartbeatKind.LEAVE, chain_id=1, operator=operator(1).address, seq=4,
               timestamp_ms=1_700_000_000_001, model_id=2, active=3, queue_ms=41,
               kv_used_bytes=1001, kv_capacity_bytes=4001, layer_us=251, epoch=6, layer_start=3,
               layer_end=7)


def test_the_signature_recovers_the_operator_and_round_trips_through_json() -> None:
    signed = sign_heartbeat(operator(0).key, Heartbeat(**BASE))
    again = SignedHeartbeat.model_validate_json(signed.model_dump_json())
    assert recover_signer(again) == operator(0).address


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_changing_any_field_changes_the_digest(field: str) -> None:
    assert Heartbeat(**{**BASE, field: CHANGED[field]}).digest() != Heartbeat(**BASE).digest()


@pytest.mark.parametrize("field,value", [
    ("active", -1), ("queue_ms", MAX_QUEUE_MS + 1), ("kv_used_bytes", 2**60), ("layer_us", -5),
    ("seq", 0), ("chain_id", 0), ("operator", "0x1234"), ("version", 2),
])
def test_out_of_range_fields_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Heartbeat(**{**BASE, field: value})


def test_kv_use_above_the_reported_capacity_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"kv_used_bytes \(5000\) exceeds"):
        Heartbeat(**{**BASE, "kv_used_bytes": 5000})


def test_a_served_range_must_be_non_empty_and_an_epoch_needs_a_range() -> None:
    with pytest.raises(ValidationError, match=r"layer range \[6, 6\) is empty"):
        Heartbeat(**{**BASE, "layer_start": 6})
    with pytest.raises(ValidationError, match=r"epoch \(5\) need a served range"):
        Heartbeat(**{**BASE, "layer_start": 0, "layer_end": 0})
    assert Heartbeat(**{**BASE, "epoch": 0, "layer_start": 0, "layer_end": 0}).serving is None
    assert Heartbeat(**BASE).serving == (5, 2, 6)


def test_floats_strings_and_unknown_fields_are_refused_in_json() -> None:
    good = sign_heartbeat(operator(0).key, Heartbeat(**BASE)).model_dump(mode="json")
    SignedHeartbeat.model_validate_json(json.dumps(good))  # the unpatched document parses
    for patch in ({"active": 1.5}, {"active": "2"}, {"extra": 1}, {"kind": 9}):
        doc = {**good, "heartbeat": {**good["heartbeat"], **patch}}
        with pytest.raises(ValidationError):
            SignedHeartbeat.model_validate_json(json.dumps(doc))


def test_route_requests_check_token_counts_and_excluded_addresses() -> None:
    with pytest.raises(ValidationError, match="prompt_tokens"):
        RouteRequest(model_id=1, prompt_tokens=0)
    with pytest.raises(ValidationError, match="not a 0x-prefixed"):
        RouteRequest(model_id=1, exclude=("nope",))
