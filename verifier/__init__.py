"""Verifier: commitments over stage outputs, the tolerance test, token checks and their calibration.

Pure logic over arrays (numpy, optionally torch tensors): it never loads a model — re-execution is
the node's job. Modules:

- `encoding`   bf16 bit patterns, leaf / node / root preimages (the byte layout in ENCODING.md)
- `merkle`     a stage's chunked Merkle tree: commit, open chunks and tokens, verify proofs
- `chunk_rule` the integer spot-check rule the contract applies to one opened chunk
- `tolerance`  exponent / mantissa / scaled statistics of claimed vs recomputed rows, `judge`
- `tokens`     greedy and seeded-sampling token checks against logits
- `calibrate`  fit `Thresholds` from benign pairs with a margin, and report on held-out pairs
- `profiles`   the shipped FP32 / BF16 thresholds
- `errors`     the package's exception tree
"""
