"""The wire format on its own: frames round-trip, signatures bind every header field and the body,
and request descriptions are validated where they come in."""

from __future__ import annotations

import json

import pytest
import torch
from coincurve import PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.dataplane_errors import BadMessage, BadSignature
from protocol.frames import LEN, Kind, make_frame, parse_frame
from protocol.identity import address_of_key
from protocol.messages import PipelineRequest, decode_request
from protocol.rows import hidden_body, parse_hidden

KEY = PrivateKey(b"\x11" * 32)

frames = st.builds(
    lambda kind, chain, rid, step, epoch, stage, body: make_frame(KEY, kind, chain, rid, step, epoch,
                                                                  stage, body),
    st.sampled_from(list(Kind)), st.integers(1, 2**64 - 1), st.binary(min_size=32, max_size=32),
    st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**16 - 1),
    st.binary(max_size=300))


@settings(max_examples=60, deadline=None)
@given(frames)
def test_frames_round_trip_and_recover_their_signer(f):
    raw = f.to_bytes()
    assert LEN.unpack(raw[:4])[0] == len(raw) - 4
    g = parse_frame(raw[4:])
    assert g == f and g.signer() == address_of_key(KEY)


@settings(max_examples=60, deadline=None)
@given(frames, st.data())
def test_any_changed_header_or_body_byte_changes_the_signer_or_fails_to_parse(f, data):
    raw = bytearray(f.to_bytes()[4:])
    signed = [i for i in range(len(raw)) if i < 60 or i >= 128]  # everything but the signature
    i = data.draw(st.sampled_from(signed))
    raw[i] ^= 1 + data.draw(st.integers(0, 254))
    try:
        g = parse_frame(bytes(raw))
    except BadMessage:
        return
    try:
        assert g.signer() != address_of_key(KEY)
    except BadSignature:
        pass


def test_hidden_bodies_check_width_dtype_and_row_count():
    rows = torch.randn(3, 16)
    start, got = parse_hidden(hidden_body(7, rows), 16, torch.float32, 4)
    assert start == 7 and torch.equal(got, rows)
    with pytest.raises(BadMessage, match="expected a torch.bfloat16"):
        parse_hidden(hidden_body(0, rows), 16, torch.bfloat16, 4)
    with pytest.raises(BadMessage, match="3 rows; 1 to 2 allowed"):
        parse_hidden(hidden_body(0, rows), 16, torch.float32, 2)
    with pytest.raises(BadMessage, match="too short"):
        parse_hidden(b"\x00", 16, torch.float32, 2)


def test_requests_with_gaps_between_stages_or_unknown_fields_are_refused():
    stage = {"operator": "0x" + "11" * 20, "host": "h", "port": 1}
    base = {"chain_id": 1, "request_id": "0x" + "00" * 32, "gateway": "0x" + "22" * 20,
            "prompt_len": 1, "max_new_tokens": 1}
    ok = PipelineRequest.model_validate({**base, "stages": [{**stage, "start": 0, "end": 4}]})
    assert decode_request(ok.model_dump_json().encode()) == ok
    gap = {**base, "stages": [{**stage, "start": 0, "end": 4}, {**stage, "start": 5, "end": 8}]}
    with pytest.raises(BadMessage, match="not contiguous"):
        decode_request(json.dumps(gap).encode())
    with pytest.raises(BadMessage, match="invalid pipeline request"):
        decode_request(b'{"surprise": 1}')
