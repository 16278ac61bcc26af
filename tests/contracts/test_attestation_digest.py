"""The stage attestation digest (VERIFY_SPEC §1): its exact preimage, that every field is bound,
that an operator's signature over it recovers to the operator, and clear errors on bad fields."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from coincurve import PrivateKey
from eth_utils import keccak

from contracts.errors import ContractsError
from contracts.verification import attestation_digest
from protocol.messages import StageCommit

SC = StageCommit(bytes(range(32)), 41, 576, 42)
RID = b"\xab" * 32


def test_the_digest_is_keccak_of_the_documented_big_endian_preimage():
    pre = b"veriplex-stage-commit-v1" + struct.pack(">Q32sH32sIII", 31337, RID, 2, SC.root, 41, 576, 42)
    assert len(pre) == 24 + 8 + 32 + 2 + 32 + 12
    assert attestation_digest(31337, RID, 2, SC) == keccak(pre)


def test_every_field_changes_the_digest():
    base = attestation_digest(1, RID, 0, SC)
    variants = [attestation_digest(2, RID, 0, SC), attestation_digest(1, b"\x00" * 32, 0, SC),
                attestation_digest(1, RID, 1, SC)]
    for field, value in [("root", b"\x01" * 32), ("positions", 40), ("hidden_size", 64),
                         ("n_tokens", 0)]:
        variants.append(attestation_digest(1, RID, 0, dataclasses.replace(SC, **{field: value})))
    assert base not in variants and len(set(variants)) == len(variants)


def test_an_operator_signature_over_the_digest_recovers_to_the_operator():
    from protocol.identity import address_of_key, recover, sign_digest

    key = PrivateKey(b"\x21" * 32)
    d = attestation_digest(31337, RID, 1, SC)
    assert recover(d, sign_digest(key, d)) == address_of_key(key)
    assert recover(attestation_digest(31337, RID, 0, SC), sign_digest(key, d)) != address_of_key(key)


@pytest.mark.parametrize("args, message", [
    ((-1, RID, 0, SC), "chain id"),
    ((1, b"\x00" * 31, 0, SC), "request id must be 32 bytes"),
    ((1, RID, 2**16, SC), "stage"),
    ((1, RID, 0, StageCommit(b"\x00" * 31, 1, 1, 0)), "root must be 32 bytes"),
    ((1, RID, 0, StageCommit(b"\x00" * 32, 2**32, 1, 0)), "positions"),
])
def test_out_of_range_fields_are_refused_with_the_field_named(args, message):
    with pytest.raises(ContractsError, match=message):
        attestation_digest(*args)
