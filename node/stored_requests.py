"""A stage's answers about requests it already ran: COMMIT (its signed stage commitment) and FETCH
(its stored output rows and the token ids it saw), both served from the hidden-state store, so they
work after the session closed and until the store evicts the request.

Commitment convention (VERIFY_SPEC §1, verifier/ENCODING.md "Which tokens"): for a request whose
final sequence has L tokens, stage j commits its output rows for positions [0, P), P = L - 1, with
`StageCommitment.build(Domain(chain id, request id, j), rows, tokens)`, where `tokens` is the whole
sequence (the first P + 1 token ids the stage saw) on the first and the last stage and empty on a
middle stage. The answer carries `StageCommit(root, P, d, n_tokens)` and the operator's signature
over `contracts.verification.attestation_digest`. Commitments are cached per (request, P).

Who may ask: COMMIT only the request's gateway (recorded at OPEN); FETCH the gateway or any active
registered operator (`OperatorDirectory.operator_ok`) — verifiers and auditors read inputs that way.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import torch
from coincurve import PrivateKey

from contracts.verification import StageCommit, attestation_digest
from node.dataplane_errors import BadMessage, BadSignature, NotAssigned, NotStored
from node.directory import OperatorDirectory
from node.hidden_store import HiddenStateStore, RequestInfo, StoreEntry
from node.models.errors import StoreError
from node.protocol import (
    Frame,
    Kind,
    committed_body,
    make_frame,
    parse_commit,
    parse_fetch,
    rows_body,
    sign_digest,
)
from verifier.encoding import Domain
from verifier.merkle import StageCommitment

ROWS_OVERHEAD = 4096  # frame header, ROWS head and tensor header, with room to spare
INLINE_VALUES = 16384  # commitments over at most this many values are built on the event loop


def build_commit(chain_id: int, request_id: bytes, stage: int, rows: torch.Tensor,
                 tokens: list[int]) -> StageCommit:
    """The stage commitment of `rows` (P, d) and `tokens` (pure; heavy for long requests)."""
    c = StageCommitment.build(Domain(chain_id, request_id, stage), rows, tokens)
    return StageCommit(c.root, c.shape.positions, c.shape.hidden_size, c.shape.n_tokens)


class StoredRequests:
    """COMMIT and FETCH handling for one `StageServer` (same key, store, directory, chain)."""

    def __init__(self, store: HiddenStateStore, key: PrivateKey, directory: OperatorDirectory,
                 chain_id: int, layers: tuple[int, int], max_frame_bytes: int,
                 cache_size: int = 1024):
        self.store, self.key, self.directory = store, key, directory
        self.chain_id, self.layers, self.max_frame_bytes = chain_id, layers, max_frame_bytes
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[bytes, int], tuple[StageCommit, bytes]] = OrderedDict()
        self.commits_built = 0

    def forget(self, request_id: bytes) -> None:
        """A (re-)OPEN of the request: its rows may change, drop cached commitments."""
        for k in [k for k in self._cache if k[0] == request_id]:
            del self._cache[k]

    def _entry(self, request_id: bytes, a: int, b: int) -> tuple[StoreEntry, RequestInfo]:
        try:
            e = self.store.entry(request_id, a, b)
            return e, self.store.info(request_id, a, b)
        except StoreError as exc:
            raise NotStored(str(exc)) from None

    async def commit(self, f: Frame) -> Frame:
        """Answer a COMMIT frame with a signed COMMITTED frame (or raise a DataPlaneError)."""
        positions = parse_commit(f.body)
        rid = f.request_id
        a, b = self.layers
        e, info = self._entry(rid, a, b)
        signer = f.signer()
        if signer.lower() != info.gateway.lower():
            raise BadSignature(f"COMMIT signed by {signer}; only the request's gateway {info.gateway} "
                               "may ask for its commitment")
        if f.stage != info.stage:
            raise NotAssigned(f"COMMIT addresses stage {f.stage}; this node served request "
                              f"{rid.hex()} as stage {info.stage}")
        hit = self._cache.get((rid, positions))
        if hit is None:
            if positions > e.rows:
                raise NotStored(f"COMMIT for positions [0, {positions}) but stage {info.stage} holds "
                                f"rows for [0, {e.rows}) of request {rid.hex()}")
            tokens: list[int] = []
            if info.commits_tokens:
                if len(info.tokens) < positions + 1:
                    raise NotStored(f"COMMIT for {positions} positions needs {positions + 1} token ids; "
                                    f"stage {info.stage} saw {len(info.tokens)}")
                tokens = info.tokens[: positions + 1]
            rows = self.store.read(rid, a, b, 0, positions)
            if positions * e.hidden <= INLINE_VALUES:  # well under a millisecond: no thread hop
                sc = build_commit(self.chain_id, rid, info.stage, rows, tokens)
            else:  # long requests: keep the event loop (and every other pipeline) moving
                sc = await asyncio.to_thread(build_commit, self.chain_id, rid, info.stage, rows,
                                             tokens)
            sig = sign_digest(self.key, attestation_digest(self.chain_id, rid, info.stage, sc))
            hit = (sc, sig)
            self.commits_built += 1
            self._cache[(rid, positions)] = hit
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end((rid, positions))
        return make_frame(self.key, Kind.COMMITTED, self.chain_id, rid, f.step, f.epoch, f.stage,
                          committed_body(*hit))

    def fetch(self, f: Frame) -> Frame:
        """Answer a FETCH frame with a ROWS frame (or raise a DataPlaneError)."""
        fb = parse_fetch(f.body)
        rid = f.request_id
        e, info = self._entry(rid, fb.layer_start, fb.layer_end)
        signer = f.signer()
        if signer.lower() != info.gateway.lower() and not self.directory.operator_ok(signer):
            raise BadSignature(f"FETCH signed by {signer}, neither the request's gateway nor an "
                               "active registered operator")
        if f.stage != info.stage:
            raise NotAssigned(f"FETCH addresses stage {f.stage}; this node served request "
                              f"{rid.hex()} as stage {info.stage}")
        if fb.pos_to > e.rows:
            raise NotStored(f"FETCH for positions [{fb.pos_from}, {fb.pos_to}) but request "
                            f"{rid.hex()} layers [{fb.layer_start}, {fb.layer_end}) holds [0, {e.rows})")
        n = fb.pos_to - fb.pos_from
        room = (self.max_frame_bytes - ROWS_OVERHEAD - 4 * len(info.tokens)) // (4 * e.hidden)
        if n > room:
            raise BadMessage(f"FETCH for {n} positions exceeds one frame; ask for at most {room}")
        if n:
            rows = self.store.read(rid, fb.layer_start, fb.layer_end, fb.pos_from, fb.pos_to)
        else:
            rows = torch.empty((0, e.hidden), dtype=torch.float32)
        return make_frame(self.key, Kind.ROWS, self.chain_id, rid, f.step, f.epoch, f.stage,
                          rows_body(fb.pos_from, rows, info.tokens))
