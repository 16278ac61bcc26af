"""`eth_getProof` is refused with the standard unsupported-method error (-32601), the way geth
words it, and the devnet keeps serving: the decision is documented in devnet/README.md (Limits).
Clients that probe for it (`cast proof`, light-client tooling) then fail with a clear message
instead of a made-up proof."""

from __future__ import annotations

import pytest

from tests.devnet.local import LocalDevnet, RpcFailed


def test_get_proof_is_refused_as_an_unsupported_method(local: LocalDevnet) -> None:
    account = local.accounts[0].address
    with pytest.raises(RpcFailed) as info:
        local.rpc("eth_getProof", account, [], "latest")
    assert info.value.code == -32601
    assert "eth_getProof does not exist/is not available" in info.value.message
    assert int(local.rpc("eth_getBalance", account, "latest"), 16) > 0  # still serving
