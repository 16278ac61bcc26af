"""keccak256, from the fastest backend installed: one definition for the frames, messages,
identities and commitments every process hashes.

Measured per call on a 118-byte commitment leaf: safe-pysha3 ~0.7 µs, eth_hash (its pycryptodome
backend) and pycryptodome ~3.5 µs (`bench/commit.py`). Every backend computes the same digest:
Ethereum's keccak256 (the pre-standard padding), not SHA3-256.
"""

from __future__ import annotations

from collections.abc import Callable


def _pick() -> tuple[Callable[[bytes], bytes], str]:
    try:
        import sha3  # safe-pysha3

        k = sha3.keccak_256
        return (lambda data: k(data).digest()), "pysha3"
    except ImportError:  # pragma: no cover - depends on the environment
        pass
    try:  # pragma: no cover - depends on the environment
        from Crypto.Hash import keccak as ck

        return (lambda data: ck.new(data=data, digest_bits=256).digest()), "pycryptodome"
    except ImportError:  # pragma: no cover
        from eth_hash.auto import keccak as ek

        return ek, "eth_hash"


keccak, KECCAK_BACKEND = _pick()
