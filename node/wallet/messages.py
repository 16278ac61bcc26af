"""EIP-191 personal messages (`personal_sign`): sign with an unlocked account, recover the signer.

The signed bytes are "\\x19Ethereum Signed Message:\\n" + len(message) + message, exactly what
wallets (MetaMask's personal_sign, `cast wallet sign`, geth's `personal.sign`) produce, so
signatures made here verify there and the reverse.
"""

from __future__ import annotations

import re

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from node.wallet.errors import BadSecret


def message_bytes(text: str | None = None, hex_data: str | None = None) -> bytes:
    """The message as bytes: UTF-8 text, or raw bytes given as 0x-hex."""
    if (text is None) == (hex_data is None):
        raise BadSecret("give the message either as text or as hex, not both")
    if hex_data is not None:
        raw = hex_data.strip().removeprefix("0x")
        if len(raw) % 2 or not re.fullmatch(r"[0-9a-fA-F]*", raw):
            raise BadSecret(f"message hex {hex_data[:20]!r} is not an even number of hex digits")
        return bytes.fromhex(raw)
    assert text is not None
    return text.encode("utf-8")


def sign_message(account: LocalAccount, message: bytes) -> str:
    """0x-hex 65-byte (r, s, v) signature, v in {27, 28}."""
    return "0x" + bytes(account.sign_message(encode_defunct(primitive=message)).signature).hex()


def parse_signature(signature: str) -> bytes:
    raw = signature.strip().removeprefix("0x")
    if len(raw) != 130 or not re.fullmatch(r"[0-9a-fA-F]{130}", raw):
        raise BadSecret("a signature must be 65 bytes as 130 hex digits (optionally 0x-prefixed)")
    return bytes.fromhex(raw)


def recover_signer(message: bytes, signature: str) -> str:
    """Checksummed address that signed `message`; `BadSecret` if the signature is invalid."""
    sig = parse_signature(signature)
    try:
        return str(Account.recover_message(encode_defunct(primitive=message), signature=sig))
    except Exception as exc:  # eth-keys raises several types for out-of-range r, s, v
        raise BadSecret(f"invalid signature: {exc}") from None
