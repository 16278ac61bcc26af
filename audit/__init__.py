"""`veriplex audit`: a receipt checked against any RPC endpoint — inclusion in its batch, the stage
signatures, the verification outcome (`check`, `outcome`), and with `--recompute` a re-execution of
sampled chunks through the node's runtime (`recompute`); `cli` is the command.
Receipts are parsed by `verifier.receipt`, the typed model the gateway writes."""
