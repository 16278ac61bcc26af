# pragma version ~=0.4.3
"""
@title API keys of Payments
@notice An API key is an EIP-712 spending authorization a client signs: (client, gateway, cap,
        expiry, nonce). Its digest is its id. Anyone may register a signed key (usually the
        gateway, on first use); the client revokes by nonce, before or after registration.
        Payments charges keys (`spent`) when it settles batches.
"""

from snekmate.utils import ecdsa
from snekmate.utils import eip712_domain_separator as eip712

uses: eip712


# ------------------------------------------------------------------ TYPES

struct ApiKey:
    client: address
    gateway: address
    cap: uint256  # wei the gateway may charge in total under this key
    expiry: uint256  # unix seconds
    nonce: uint256

struct KeyState:
    client: address
    gateway: address
    cap: uint256
    expiry: uint256
    spent: uint256
    revoked: bool


# ------------------------------------------------------------------ EVENTS

event KeyRegistered:
    key_hash: indexed(bytes32)
    client: indexed(address)
    gateway: indexed(address)
    cap: uint256
    expiry: uint256
    nonce: uint256

event KeyRevoked:
    client: indexed(address)
    nonce: indexed(uint256)
    key_hash: bytes32


# ------------------------------------------------------------------ STORAGE

# key_of_nonce marker of a nonce revoked before any key used it
REVOKED: constant(bytes32) = 0xffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff
API_KEY_TYPEHASH: constant(bytes32) = keccak256(
    "ApiKey(address client,address gateway,uint256 cap,uint256 expiry,uint256 nonce)"
)

keys: public(HashMap[bytes32, KeyState])
key_of_nonce: public(HashMap[address, HashMap[uint256, bytes32]])


# ------------------------------------------------------------------ LOGIC

@view
@external
def key_hash(key: ApiKey) -> bytes32:
    """@notice The EIP-712 digest a client signs for `key`; also the key's id."""
    return self._key_digest(key)


@external
def register_key(key: ApiKey, signature: Bytes[65]) -> bytes32:
    """@notice Record a client-signed API key (anyone may submit it, usually the gateway)."""
    assert key.client != empty(address), "payments: client is the zero address"
    assert key.gateway != empty(address), "payments: gateway is the zero address"
    assert key.cap > 0, "payments: zero cap"
    assert key.expiry > block.timestamp, "payments: key expired"
    digest: bytes32 = self._key_digest(key)
    assert ecdsa._recover_sig(digest, signature) == key.client, "payments: bad key signature"
    used: bytes32 = self.key_of_nonce[key.client][key.nonce]
    assert used != REVOKED, "payments: key revoked"
    assert used == empty(bytes32), "payments: nonce already used"
    self.key_of_nonce[key.client][key.nonce] = digest
    self.keys[digest] = KeyState(
        client=key.client,
        gateway=key.gateway,
        cap=key.cap,
        expiry=key.expiry,
        spent=0,
        revoked=False,
    )
    log KeyRegistered(
        key_hash=digest, client=key.client, gateway=key.gateway, cap=key.cap, expiry=key.expiry,
        nonce=key.nonce,
    )
    return digest


@external
def revoke_key(nonce: uint256):
    """@notice Revoke the caller's key with `nonce`, registered or not yet."""
    h: bytes32 = self.key_of_nonce[msg.sender][nonce]
    assert h != REVOKED and (h == empty(bytes32) or not self.keys[h].revoked), (
        "payments: key revoked"
    )
    if h == empty(bytes32):
        self.key_of_nonce[msg.sender][nonce] = REVOKED
    else:
        self.keys[h].revoked = True
    log KeyRevoked(client=msg.sender, nonce=nonce, key_hash=h)


@view
@internal
def _key_digest(key: ApiKey) -> bytes32:
    return eip712._hash_typed_data_v4(
        keccak256(
            abi_encode(API_KEY_TYPEHASH, key.client, key.gateway, key.cap, key.expiry, key.nonce)
        )
    )
