"""Commitment speed and on-chain cost: keccak backends, committing a stage, proofs, gas of the checks.

Measures (median of repeats): one keccak256 of a 118-byte leaf with each available backend;
building the commitment of a 1,024-position × 576-dim float32 stage output (bf16 conversion,
18,432 leaves, the tree); opening and verifying one chunk; and, with titanoboa, the execution gas of
the Vyper reference (`tests/verifier/chunk_check.vy`) verifying that opening and applying the chunk
rule (execution only: add 21,000 + calldata for a transaction). `--quick` uses fewer repeats.

Then the grown tree (`verifier.merkle.IncrementalCommitment`, what a stage keeps as it stores rows)
against building at COMMIT, for 128 and 1,024 positions × 576: `commit_ms_*` builds everything at
COMMIT (the old path; `_tokens` with the P + 1 token leaves a first or last stage commits);
`grown_commit_ms_*` is what is left at COMMIT with a grown tree (token leaves and the right edge);
`grow_us_per_decoded_row_576` the cost added to each decode step (one row: bf16, 18 leaves, the
inner nodes it completes) for a request hashed alone, `grow_us_per_decoded_row_576_batch16` the
same per row when a step's rows of 16 requests are hashed in one pass (`append_rows`, what a stage
does); `grow_ms_prefill_*` the cost added to a prefill of that many rows.

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
from verifier.merkle import (  # noqa: E402
    IncrementalCommitment,
    StageCommitment,
    append_rows,
    verify_chunk,
)


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

    grown = incremental(dom, repeats)

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
          f" ({len(o.siblings)}-sibling proofs), {grown} with a tree grown as rows are stored{gas}")


def incremental(dom: Domain, repeats: int) -> str:
    """Building at COMMIT vs growing the tree as rows are stored (see the module docstring)."""
    import torch

    rng = np.random.default_rng(1)
    out = ""
    for n in (128, 1024):
        x = torch.from_numpy(rng.standard_normal((n, 576)).astype(np.float32))
        toks = [int(t) for t in rng.integers(0, 49152, n + 1)]
        acc = IncrementalCommitment(dom, 576)
        acc.append(0, x)
        assert acc.root(n, toks)[0] == StageCommitment.build(dom, x, toks).root
        t_build = timed(lambda x=x: StageCommitment.build(dom, x), repeats)
        t_build_tok = timed(lambda x=x, toks=toks: StageCommitment.build(dom, x, toks), repeats)
        t_grown = timed(lambda acc=acc, n=n: acc.root(n), repeats)
        t_grown_tok = timed(lambda acc=acc, n=n, toks=toks: acc.root(n, toks), repeats)
        t_prefill = timed(lambda x=x: IncrementalCommitment(dom, 576).append(0, x), repeats)
        if n == 128:
            print(f"commit_ms_{n}x576: {t_build * 1e3:.2f}")
        print(f"commit_ms_{n}x576_tokens: {t_build_tok * 1e3:.2f}")
        print(f"grown_commit_ms_{n}x576: {t_grown * 1e3:.3f}")
        print(f"grown_commit_ms_{n}x576_tokens: {t_grown_tok * 1e3:.2f}")
        print(f"grow_ms_prefill_{n}x576: {t_prefill * 1e3:.2f}")
        print(f"grown_tree_kib_{n}x576: {acc.nbytes / 1024:.0f}")
        out = (f"{t_grown_tok * 1e3:.1f} ms (with {n + 1} token leaves; "
               f"{t_grown * 1e3:.2f} ms without)")
    rows = [x[i:i + 1] for i in range(len(x))]  # decode: one row per step, as SessionTable stores them

    def decode() -> None:
        acc = IncrementalCommitment(dom, 576)
        for i, r in enumerate(rows):
            acc.append(i, r)

    t_decode = timed(decode, repeats) / len(rows)
    print(f"grow_us_per_decoded_row_576: {t_decode * 1e6:.1f}")

    def decode_batched(b: int = 16) -> None:  # one step's rows of b requests, one pass
        trees = [IncrementalCommitment(Domain(dom.chain_id, bytes([k]) * 32, dom.stage), 576)
                 for k in range(b)]
        for i in range(len(rows) // b):
            append_rows([(acc, i, rows[i * b + k]) for k, acc in enumerate(trees)])

    t_batched = timed(decode_batched, repeats) / (len(rows) // 16 * 16)
    print(f"grow_us_per_decoded_row_576_batch16: {t_batched * 1e6:.1f}")
    return (f"{out} at {t_decode * 1e6:.0f} us per decoded row alone, {t_batched * 1e6:.0f} us in "
            "a step of 16 requests")


if __name__ == "__main__":
    main()
