"""Commitment speed and on-chain cost: keccak backends, committing a stage, proofs, gas of the checks.

Measures (median of repeats): one keccak256 of a 118-byte leaf with each available backend;
building the commitment of a 1,024-position × 576-dim float32 stage output (bf16 conversion,
18,432 leaves, the tree); opening and verifying one chunk; and, with titanoboa, the execution gas of
the Vyper reference (`tests/verifier/chunk_check.vy`) verifying that opening and applying the chunk
rule (execution only: add 21,000 + calldata for a transaction). `--quick` uses fewer repeats.

    .venv/bin/python bench/commit.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from verifier import encoding as enc  # noqa: E402
from verifier.encoding import Domain  # noqa: E402
from verifier.merkle import StageCommitment, verify_chunk  # noqa: E402


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def keccak_backends() -> dict:
    out = {}
    try:
        import sha3

        out["pysha3"] = lambda b: sha3.keccak_256(b).digest()
    except ImportError:
        pass
    try:
        from Crypto.Hash import keccak as ck

        out["pycryptodome"] = lambda b: ck.new(data=b, digest_bits=256).digest()
    except ImportError:
        pass
    from eth_hash.auto import keccak as ek

    out["eth_hash"] = ek
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    repeats = 3 if args.quick else 10
    leaf = bytes(range(118))
    n = 20_000
    for name, fn in keccak_backends().items():
        t = timed(lambda fn=fn: [fn(leaf) for _ in range(n)], repeats)
        print(f"keccak_us_{name}: {t / n * 1e6:.2f}")
    print(f"keccak_backend_used: {enc.KECCAK_BACKEND}")

    dom = Domain(31337, b"\x11" * 32, 1)
    x = np.random.default_rng(0).standard_normal((1024, 576)).astype(np.float32)
    t_bits = timed(lambda: enc.bf16_bits(x), repeats)
    t_commit = timed(lambda: StageCommitment.build(dom, x), repeats)
    c = StageCommitment.build(dom, x)
    o = c.open_chunk(1000, 17)
    t_open = timed(lambda: c.open_chunk(1000, 17), repeats)
    t_verify = timed(lambda: verify_chunk(c.root, dom, c.shape, o), repeats)
    print(f"bf16_convert_ms_1024x576: {t_bits * 1e3:.2f}")
    print(f"commit_ms_1024x576: {t_commit * 1e3:.1f}")
    print(f"open_chunk_us: {t_open * 1e6:.1f}")
    print(f"verify_chunk_us: {t_verify * 1e6:.1f}")
    print(f"proof_siblings_1024x576: {len(o.siblings)}")

    gas = ""
    try:
        import boa
    except ImportError:
        print("gas: skipped (titanoboa not installed)")
    else:
        checker = boa.load(str(REPO / "tests" / "verifier" / "chunk_check.vy"))
        raw = o.values.astype(">u2").tobytes()
        boa.env.reset_gas_used()
        root = checker.chunk_root(dom.chain_id, dom.request_id, dom.stage, 1024, 576, 0, 1000, 17,
                                  raw[:32], raw[32:], list(o.siblings))
        g_proof = boa.env.get_gas_used()
        assert root == c.root, "the Vyper reference disagrees with the Python commitment"
        noisy = enc.bf16_bits(enc.bf16_to_float(o.values) * np.float32(1.001)).astype(">u2").tobytes()
        boa.env.reset_gas_used()
        checker.chunk_bad_count(raw[:32], raw[32:], noisy[:32], noisy[32:], 1)
        g_rule = boa.env.get_gas_used()
        print(f"gas_verify_chunk_proof: {g_proof}")
        print(f"gas_chunk_rule: {g_rule}")
        gas = f", on-chain proof {g_proof} gas + chunk rule {g_rule} gas"
    print(f"summary: a 1024x576 stage commits in {t_commit * 1e3:.0f} ms with {enc.KECCAK_BACKEND}"
          f" ({len(o.siblings)}-sibling proofs){gas}")


if __name__ == "__main__":
    main()
