"""Pure parts of the package: revert decoding, batch Merkle trees, API key tokens, the build
cache, and the timeout path of the RPC layer."""

from __future__ import annotations

import shutil
import socket
import threading
from pathlib import Path

import pytest
from eth_abi import encode as abi_encode
from hypothesis import given
from hypothesis import strategies as st

from contracts import build
from contracts.apikeys import ApiKeyError, SignedApiKey, create_api_key
from contracts.batch import merkle_proof, merkle_root, verify_proof
from contracts.errors import (
    ERROR_SELECTOR,
    PANIC_SELECTOR,
    OwnershipRevert,
    Panic,
    PaymentsRevert,
    RegistryRevert,
    Revert,
    RpcTimeout,
    decode_revert,
)
from contracts.rpc import Rpc


def error_data(msg: str) -> bytes:
    return ERROR_SELECTOR + abi_encode(["string"], [msg])


@pytest.mark.parametrize(
    "reason, cls, message",
    [
        ("registry: stake below minimum", RegistryRevert, "stake below minimum"),
        ("payments: key expired", PaymentsRevert, "key expired"),
        ("ownable: caller is not the owner", OwnershipRevert, "caller is not the owner"),
        (
            "ownable_2step: caller is not the new owner",
            OwnershipRevert,
            "caller is not the new owner",
        ),
        ("something else", Revert, "something else"),
    ],
)
def test_error_string_reverts_decode_to_the_module_exception(reason, cls, message):
    exc = decode_revert("0x" + error_data(reason).hex())
    assert type(exc) is cls and exc.reason == reason and exc.message == message


def test_panic_and_empty_and_unknown_revert_data_decode_clearly():
    p = decode_revert(PANIC_SELECTOR + (0x11).to_bytes(32, "big"))
    assert isinstance(p, Panic) and p.code == 0x11
    assert "no reason" in decode_revert(b"").reason
    assert "no reason" in decode_revert(None).reason
    assert "0xdeadbeef" in decode_revert(bytes.fromhex("deadbeef")).reason
    assert "malformed" in decode_revert(ERROR_SELECTOR + b"\x01").reason
    assert decode_revert(error_data("payments: caller is not the verification role")).unauthorized


leaves = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40, unique=True)


@given(leaves)
def test_every_leaf_has_a_proof_that_verifies(hs):
    root = merkle_root(hs)
    for i, h in enumerate(hs):
        assert verify_proof(merkle_proof(hs, i), root, h)


@given(leaves, st.data())
def test_changing_any_leaf_changes_the_root(hs, data):
    i = data.draw(st.integers(0, len(hs) - 1))
    changed = list(hs)
    changed[i] = bytes([hs[i][0] ^ 1]) + hs[i][1:]
    assert merkle_root(changed) != merkle_root(hs)


def test_merkle_rejects_empty_batches_and_bad_indices():
    with pytest.raises(ValueError):
        merkle_root([])
    with pytest.raises(ValueError):
        merkle_proof([b"\x00" * 32], 1)


def test_api_key_token_round_trips_and_tampering_is_detected():
    from eth_account import Account

    acct = Account.create()
    pk = "0x" + bytes(acct.key).hex()
    signed = create_api_key(pk, "0x" + "22" * 20, 10**18, 2_000_000_000, 3, 31337, "0x" + "33" * 20)
    assert SignedApiKey.from_token(signed.token()) == signed
    with pytest.raises(ApiKeyError, match="start with"):
        SignedApiKey.from_token("sk-123")
    with pytest.raises(ApiKeyError):
        SignedApiKey.from_token("vpx_" + "A" * 40)
    forged = SignedApiKey(
        signed.key.__class__(signed.key.client, signed.key.gateway, 10**20, signed.key.expiry, 3),
        31337,
        signed.payments,
        signed.signature,
    )
    with pytest.raises(ApiKeyError, match="not the client"):
        SignedApiKey.from_token(forged.token())


def test_build_cache_hits_until_a_source_changes(tmp_path):
    # Two of the contracts (with every interface and module they import) make a source tree of
    # their own: the cache logic is the same for any set, and compiling all nine twice took ~40 s.
    kept = {"ModelRegistry.vy", "NodeRegistry.vy"}
    src = tmp_path / "vy"
    shutil.copytree(build.SOURCE_DIR, src, ignore=lambda d, names: [
        n for n in names if Path(d) == build.SOURCE_DIR and n.endswith(".vy") and n not in kept])
    assert set(build.contract_sources(src)) == {"ModelRegistry", "NodeRegistry"}
    out = tmp_path / "out"
    first = build.compile_all(build_dir=out, source_dir=src)
    stamp = (out / "NodeRegistry.json").stat().st_mtime_ns
    assert build.compile_all(build_dir=out, source_dir=src) == first
    assert (out / "NodeRegistry.json").stat().st_mtime_ns == stamp
    path = src / "ModelRegistry.vy"
    path.write_text(path.read_text().replace('"models: empty name"', '"models: no name"'))
    again = build.compile_all(build_dir=out, source_dir=src)
    assert again["ModelRegistry"].hash != first["ModelRegistry"].hash
    assert again["NodeRegistry"].hash == first["NodeRegistry"].hash


def test_a_node_that_never_answers_raises_rpc_timeout():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    conns = []
    threading.Thread(target=lambda: conns.append(srv.accept()), daemon=True).start()
    try:
        rpc = Rpc(f"http://127.0.0.1:{srv.getsockname()[1]}", timeout_s=0.3)
        with pytest.raises(RpcTimeout):
            rpc.block_number()
    finally:
        for c, _ in conns:
            c.close()
        srv.close()


def test_a_signer_never_shows_its_private_key():
    from contracts.rpc import Signer

    key = "0x" + "ab" * 32
    s = Signer.from_key(key)
    assert "ab" * 32 not in repr(s) and "ab" * 32 not in str(s)
    assert s.address in repr(s)
