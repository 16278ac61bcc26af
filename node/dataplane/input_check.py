"""Stage-level blame, the stage's side: before a stage signs its commitment, it checks that the
commitment its input stage signed for the request is the one over the rows it received.

The attack it stops: an input stage computes honestly and settles a commitment to its true rows,
but sends the next stage other rows. The next stage computes on what it received; verifiers
re-execute it from the settled rows, disagree, and would convict it. So every stage after the
first grows a second tree as it computes — over the rows it *received*, in the input stage's
domain (`Domain(chain, request, stage - 1)`), exactly as that stage grows its own — and at COMMIT
the gateway relays the input stage's signed answer (`protocol.frames.InputRelay`). The stage signs
only if that commitment is signed by the input stage's operator, has the asked shape and has the
root of the received rows; it then keeps it next to its stored rows (`HiddenStateStore.put_input`).
If a different commitment of the input stage is ever settled, the kept one is the proof
(`contracts` TaskOpener.blame_input, submitted by the verifier agent): the input stage is
slashed and the checked stage is not judged.

Trees live in memory (`CommitLeaves`, bounded); a request whose tree is gone (restart, eviction)
cannot be checked, and its COMMIT is refused rather than signed blind.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from contracts.verification import attestation_digest
from node.dataplane.query import input_tokens
from node.dataplane.stored_requests import CommitLeaves
from protocol.dataplane_errors import BadMessage, BadSignature, NotStored
from protocol.frames import InputRelay
from protocol.identity import recover
from verifier.encoding import Domain

MAX_SENDERS = 65536  # requests whose input stage operator is remembered (least recent first out)


class InputCheck:
    """The received-rows trees of one stage's requests and who sent them."""

    def __init__(self, leaves: CommitLeaves | None = None):
        self.leaves = leaves if leaves is not None else CommitLeaves()
        self._senders: OrderedDict[bytes, str] = OrderedDict()
        self.checked = 0  # relays that matched the received rows

    def stored(self, request_id: bytes, domain: Domain, hidden_size: int, start: int,
               rows: torch.Tensor, sender: str) -> None:
        """Rows (T, d) received for positions [start, start + T) from `sender` (the input stage's
        operator), in the input stage's `domain`."""
        self._senders[request_id] = sender
        self._senders.move_to_end(request_id)
        while len(self._senders) > MAX_SENDERS:
            self._senders.popitem(last=False)
        self.leaves.stored(request_id, domain, hidden_size, start, rows)

    def rewound(self, request_id: bytes, rows: int) -> None:
        self.leaves.rewound(request_id, rows)

    def check(self, chain_id: int, request_id: bytes, stage: int, hidden_size: int, held: int,
              positions: int, relay: InputRelay | None) -> None:
        """Raise unless `relay` is the input stage's signed commitment over the first `positions`
        of the `held` rows this stage received for the request (stage > 0)."""
        if relay is None:
            raise BadMessage(f"COMMIT to stage {stage} must relay stage {stage - 1}'s signed "
                             "commitment (the stage checks it against the rows it received)")
        sender = self._senders.get(request_id)
        domain = Domain(chain_id, request_id, stage - 1)
        acc = self.leaves.get(request_id, domain, held)
        if sender is None or acc is None:
            raise NotStored(f"stage {stage} no longer holds the tree of the rows it received for "
                            f"request {request_id.hex()}; it cannot check its input stage's commitment")
        sc = relay.commit
        want_tokens = input_tokens(stage, positions)
        if (sc.positions, sc.hidden_size, sc.n_tokens, len(relay.tokens)) != (
                positions, hidden_size, want_tokens, want_tokens):
            raise BadMessage(f"relayed input commitment has shape {sc.positions} positions × "
                             f"{sc.hidden_size} hidden, {sc.n_tokens} tokens ({len(relay.tokens)} "
                             f"relayed); this COMMIT needs {positions} × {hidden_size}, {want_tokens}")
        signer = recover(attestation_digest(chain_id, request_id, stage - 1, sc), relay.signature)
        if signer.lower() != sender.lower():
            raise BadSignature(f"relayed input commitment signed by {signer}, but stage {stage - 1} "
                               f"sent the rows as {sender}")
        root, _ = acc.root(positions, list(relay.tokens))
        if root != sc.root:
            raise BadMessage(f"stage {stage - 1} committed root 0x{sc.root.hex()}, but the rows it "
                             f"sent here give 0x{root.hex()}: refusing to commit on its input")
        self.checked += 1
