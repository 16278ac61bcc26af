"""Verifier: commitments over stage outputs, the tolerance test, token checks and their calibration.

Pure logic over arrays (numpy, optionally torch tensors): it never loads a model — re-execution is
the node's job. Modules:

- `encoding`   bf16 bit patterns, leaf / node / root preimages (the byte layout in ENCODING.md)
- `merkle`     a stage's chunked Merkle tree: commit, open chunks and tokens, verify proofs
- `tolerance`  exponent / mantissa statistics of claimed vs recomputed rows, `judge`, the chunk rule
- `tokens`     greedy and seeded-sampling token checks against logits
- `calibrate`  fit `Thresholds` from benign pairs with a margin, and report on held-out pairs
- `errors`     the package's exception tree
"""
