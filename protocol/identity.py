"""One signing identity for every process: secp256k1 keys, Ethereum addresses, recoverable signatures.

Signatures are 65 bytes r ‖ s ‖ v over a 32-byte digest (no further hashing); `recover` accepts the
raw recovery id (0/1) and Ethereum's 27/28. The data plane, heartbeats, stage attestations and audits
all sign and recover through here, so a key means the same address everywhere.
"""

from __future__ import annotations

import functools

from coincurve import PrivateKey, PublicKey

from protocol.dataplane_errors import BadSignature
from protocol.keccak import keccak


def address_of_key(key: PrivateKey) -> str:
    """The checksummed Ethereum address of a private key."""
    return address_of_public(key.public_key)


def address_of_public(pub: PublicKey) -> str:
    return _address_of_point(pub.format(compressed=False)[1:])


@functools.lru_cache(maxsize=4096)
def _address_of_point(point: bytes) -> str:
    """The checksummed address of an uncompressed public key (x ‖ y): every received frame
    recovers one of a few keys, and the checksum costs ~29 µs of a ~72 µs recovery."""
    from eth_utils import to_checksum_address

    return to_checksum_address(keccak(point)[-20:])


def sign_digest(key: PrivateKey, digest: bytes) -> bytes:
    """65 bytes r ‖ s ‖ v (v = recovery id 0/1) over a 32-byte digest (no further hashing)."""
    return key.sign_recoverable(digest, hasher=None)


def recover(digest: bytes, signature: bytes) -> str:
    """The address that signed `digest`, or `BadSignature` (v may be 0/1 or 27/28)."""
    if len(signature) != 65 or signature == b"\x00" * 65:
        raise BadSignature("message is unsigned (empty signature)")
    sig = bytearray(signature)
    if sig[64] >= 27:  # accept Ethereum's 27/28 as well as the raw recovery id 0/1
        sig[64] -= 27
    if sig[64] > 1:
        raise BadSignature(f"signature recovery id {signature[64]} is not 0/1 or 27/28")
    try:
        return address_of_public(PublicKey.from_signature_and_message(bytes(sig), digest,
                                                                      hasher=None))
    except Exception as e:  # coincurve raises ValueError / its own errors on garbage
        raise BadSignature(f"signature does not recover a public key: {e}") from None
