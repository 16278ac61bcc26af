"""The `verifier` package's exception tree.

Every error this package raises for bad input derives from `VerifierError`::

    VerifierError
    ├── EncodingError      values that cannot be committed: wrong shape or dtype, NaN/inf,
    │                      domain fields out of range (chain id, stage, position, chunk, token id)
    ├── ProofError         a Merkle opening that does not verify: malformed sibling, wrong
    │                      number of siblings, leaf index out of range, root mismatch
    ├── ToleranceError     claimed / recomputed rows that cannot be compared (shape mismatch,
    │                      empty input) or thresholds that make no sense
    ├── TokenCheckError    logits / token lists of the wrong shape, bad sampling parameters
    ├── ReceiptError       a receipt `veriplex audit` cannot read: not JSON, missing request id,
    │                      malformed fields (a receipt the chain contradicts is a failed check)
    └── AuditError         an audit that cannot run: RPC unreachable, no deployment found, a model
                           or signing key that cannot be loaded

Messages quote the offending values. `assert` is used only for internal invariants. A *failed*
check on well-formed input (rows outside tolerance, a wrong token) is not an error: it is a
`Verdict` with `passed=False` and its reasons.
"""

from __future__ import annotations


class VerifierError(Exception):
    """Root of the verifier's errors."""


class EncodingError(VerifierError, ValueError):
    """Values or domain fields that the commitment encoding cannot represent."""


class ProofError(VerifierError):
    """A Merkle opening that does not verify against its root; `str(e)` says why."""


class ToleranceError(VerifierError, ValueError):
    """Inputs to the tolerance test that cannot be compared, or inconsistent thresholds."""


class TokenCheckError(VerifierError, ValueError):
    """Inputs to a token check of the wrong shape or with invalid sampling parameters."""


class ReceiptError(VerifierError, ValueError):
    """A receipt file that cannot be read or parsed (missing, not JSON, malformed field)."""


class AuditError(VerifierError):
    """`veriplex audit` cannot run (exit status 2): chain unreachable, no deployment, bad key."""
