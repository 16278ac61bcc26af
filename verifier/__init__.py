"""Verifier: commitments over stage outputs, the tolerance test, token checks and their calibration.

Pure logic over arrays (numpy, optionally torch tensors): it never loads a model — re-execution is
the node's job (`audit.recompute` drives the node's executor for `veriplex audit --recompute`).
Modules:

- `encoding`   bf16 bit patterns, leaf / node / root preimages (the byte layout in ENCODING.md)
- `merkle`     a stage's chunked Merkle tree: commit, open chunks and tokens, verify proofs
- `chunk_rule` the integer spot-check rule the contract applies to one opened chunk
- `tolerance`  exponent / mantissa / scaled statistics of claimed vs recomputed rows, `judge`
- `tokens`     greedy and seeded-sampling token checks against logits (the rule: `protocol.sampling`)
- `calibrate`  fit `Thresholds` from benign pairs with a margin, and report on held-out pairs
- `profiles`   the shipped FP32 / BF16 thresholds
- `receipt`    the typed, versioned receipt the gateway writes and `veriplex audit` (package `audit`)
               reads back
- `errors`     the package's exception tree
"""
