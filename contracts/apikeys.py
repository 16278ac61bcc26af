"""API keys: EIP-712 spending authorizations a client signs for one gateway, and their tokens.

An `ApiKey` (client, gateway, cap, expiry, nonce) is signed with the client's key over the
Payments contract's EIP-712 domain ("Veriplex Payments", "1", chain id, Payments address). The
digest doubles as the key's on-chain id (`key_hash`). The bearer token an OpenAI client sends is
`vpx_` + base64url(abi-encoded key + domain + signature): self-contained, so the gateway can
verify it offline and register it on chain on first use.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

from contracts.errors import ContractsError

TOKEN_PREFIX = "vpx_"
DOMAIN_NAME = "Veriplex Payments"
DOMAIN_VERSION = "1"
_TOKEN_TYPES = [
    "address",
    "address",
    "uint256",
    "uint256",
    "uint256",
    "uint256",
    "address",
    "bytes",
]


class ApiKeyError(ContractsError):
    """A malformed token or a signature that does not match the key's client."""


@dataclass(frozen=True)
class ApiKey:
    client: str
    gateway: str
    cap_wei: int
    expiry: int  # unix seconds
    nonce: int

    def as_tuple(self) -> tuple[object, ...]:
        return (
            to_checksum_address(self.client),
            to_checksum_address(self.gateway),
            self.cap_wei,
            self.expiry,
            self.nonce,
        )


def typed_data(key: ApiKey, chain_id: int, payments: str) -> dict[str, object]:
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "ApiKey": [
                {"name": "client", "type": "address"},
                {"name": "gateway", "type": "address"},
                {"name": "cap", "type": "uint256"},
                {"name": "expiry", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
            ],
        },
        "primaryType": "ApiKey",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": to_checksum_address(payments),
        },
        "message": {
            "client": to_checksum_address(key.client),
            "gateway": to_checksum_address(key.gateway),
            "cap": key.cap_wei,
            "expiry": key.expiry,
            "nonce": key.nonce,
        },
    }


def key_hash(key: ApiKey, chain_id: int, payments: str) -> bytes:
    """The EIP-712 digest: what the client signs and the key's id on chain."""
    msg = encode_typed_data(full_message=typed_data(key, chain_id, payments))
    return keccak(b"\x19" + msg.version + msg.header + msg.body)


def sign_api_key(key: ApiKey, private_key: str | bytes, chain_id: int, payments: str) -> bytes:
    """65-byte (r, s, v) signature of `key` by the client."""
    acct = Account.from_key(private_key)
    if acct.address != to_checksum_address(key.client):
        raise ApiKeyError(f"signing key {acct.address} is not the key's client {key.client}")
    msg = encode_typed_data(full_message=typed_data(key, chain_id, payments))
    return bytes(acct.sign_message(msg).signature)


def recover_signer(key: ApiKey, signature: bytes, chain_id: int, payments: str) -> str:
    msg = encode_typed_data(full_message=typed_data(key, chain_id, payments))
    return str(Account.recover_message(msg, signature=signature))


@dataclass(frozen=True)
class SignedApiKey:
    key: ApiKey
    chain_id: int
    payments: str
    signature: bytes

    @property
    def key_hash(self) -> bytes:
        return key_hash(self.key, self.chain_id, self.payments)

    def token(self) -> str:
        raw = abi_encode(
            _TOKEN_TYPES,
            [
                *self.key.as_tuple(),
                self.chain_id,
                to_checksum_address(self.payments),
                self.signature,
            ],
        )
        return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def from_token(cls, token: str) -> SignedApiKey:
        """Parse and check a bearer token (signature must be the client's)."""
        if not token.startswith(TOKEN_PREFIX):
            raise ApiKeyError(f"API key must start with {TOKEN_PREFIX!r}")
        body = token[len(TOKEN_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            client, gateway, cap, expiry, nonce, chain_id, payments, sig = abi_decode(
                _TOKEN_TYPES, raw
            )
        except Exception as exc:
            raise ApiKeyError(f"malformed API key: {exc}") from None
        key = ApiKey(to_checksum_address(client), to_checksum_address(gateway), cap, expiry, nonce)
        signed = cls(key, int(chain_id), to_checksum_address(payments), bytes(sig))
        try:
            signer = recover_signer(key, signed.signature, signed.chain_id, signed.payments)
        except Exception as exc:
            raise ApiKeyError(f"API key signature is invalid: {exc}") from None
        if signer != to_checksum_address(client):
            raise ApiKeyError("API key signature is not the client's")
        return signed


def create_api_key(
    client_key: str | bytes,
    gateway: str,
    cap_wei: int,
    expiry: int,
    nonce: int,
    chain_id: int,
    payments: str,
) -> SignedApiKey:
    """Build and sign a key in one step (the client's side)."""
    if cap_wei <= 0:
        raise ApiKeyError(f"cap ({cap_wei}) must be > 0")
    client = Account.from_key(client_key).address
    key = ApiKey(client, to_checksum_address(gateway), cap_wei, expiry, nonce)
    payments = to_checksum_address(payments)
    return SignedApiKey(key, chain_id, payments, sign_api_key(key, client_key, chain_id, payments))
