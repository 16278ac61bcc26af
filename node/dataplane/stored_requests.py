"""A stage's answers about requests it already ran: COMMIT (its signed stage commitment) and FETCH
(its stored output rows and the token ids it saw), both served from the hidden-state store, so they
work after the session closed and until the store evicts the request.

Commitment convention (VERIFY_SPEC §1, verifier/ENCODING.md "Which tokens"): for a request whose
final sequence has L tokens, stage j commits its output rows for positions [0, P), P = L - 1, with
`StageCommitment.build(Domain(chain id, request id, j), rows, tokens)`, where `tokens` is the whole
sequence (the first P + 1 token ids the stage saw) on the first and the last stage and empty on a
middle stage. The answer carries `StageCommit(root, P, d, n_tokens)` and the operator's signature
over `contracts.verification.attestation_digest`. Commitments are cached per (request, P).

The tree is grown as rows are stored, not at COMMIT: `CommitLeaves` keeps, per request, a
`verifier.merkle.IncrementalCommitment` fed by `SessionTable.store_rows` / `rewind` (hidden leaf
hashes and every complete inner node, a few tens of µs per decoded row), so COMMIT hashes only the
token leaves and the tree's right edge. It is memory only, bounded by bytes (least recently used
first out); a request without one (after a restart, evicted, re-routed to another stage index) is
committed from its stored rows the old way, with the same result.

Every stage after the first signs only after checking the input stage's commitment the gateway
relays with COMMIT against the rows it received (`node.dataplane.input_check`), and keeps it.

Who may ask: COMMIT only the request's gateway (recorded at OPEN); FETCH the gateway or any active
registered operator (`OperatorDirectory.operator_ok`) — verifiers and auditors read inputs that way.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
from coincurve import PrivateKey

from contracts.verification import attestation_digest
from node.dataplane.directory import OperatorDirectory
from node.dataplane.hidden_store import HiddenStateStore, RequestInfo, StoreEntry
from node.runtime.models.errors import StoreError
from protocol.dataplane_errors import BadMessage, BadSignature, NotAssigned, NotStored
from protocol.frames import Frame, Kind, committed_body, make_frame, parse_commit_ask, parse_fetch
from protocol.identity import sign_digest
from protocol.messages import StageCommit
from protocol.rows import rows_body
from verifier.encoding import Domain
from verifier.merkle import IncrementalCommitment, StageCommitment, append_rows

if TYPE_CHECKING:
    from node.dataplane.input_check import InputCheck

ROWS_OVERHEAD = 4096  # frame header, ROWS head and tensor header, with room to spare
INLINE_VALUES = 16384  # commitments over at most this many values are built on the event loop
INLINE_TOKENS = 2048  # from grown trees: up to this many token leaves (~2 ms) on the event loop
LEAVES_MAX_BYTES = 256 * 2**20  # grown trees kept in memory (a 1024 × 576 request takes ~1.2 MB)


def build_commit(chain_id: int, request_id: bytes, stage: int, rows: torch.Tensor,
                 tokens: list[int]) -> StageCommit:
    """The stage commitment of `rows` (P, d) and `tokens` (pure; heavy for long requests)."""
    c = StageCommitment.build(Domain(chain_id, request_id, stage), rows, tokens)
    return StageCommit(c.root, c.shape.positions, c.shape.hidden_size, c.shape.n_tokens)


def grow_commitment(domain: Domain, rows: torch.Tensor) -> IncrementalCommitment:
    """A grown tree over stored rows (P, d) (pure; heavy for long requests)."""
    acc = IncrementalCommitment(domain, rows.shape[1])
    acc.append(0, rows)
    return acc


class CommitLeaves:
    """The grown commitment trees of one stage's requests, by request id, as rows are stored.

    `stored` / `rewound` mirror the hidden store's appends and truncations; `get` hands out a tree
    only if it was grown under the same domain and holds exactly the rows the store holds. Rows
    that cannot be committed (NaN, infinity) drop the request's tree, so COMMIT rebuilds from the
    store and fails as it did. Trees are evicted least recently used first past `max_bytes`.

    Rows are hashed a step at a time: `stored` queues them, and one pass (`settle_all`, with
    `verifier.merkle.append_rows`) hashes every request's queued rows together — one decoded row of
    576 values costs ~62 µs in a pass over 16 requests against ~145 µs alone (`bench/commit.py`;
    the fixed costs of a pass were most of it). When the pass runs:
    - under an event loop with `defer` on (the default): in a callback the loop runs once the
      current step yields — after the stage sent its rows (or tokens) on, while it waits for its
      next input — so hashing stays off the pipeline's critical path;
    - with `defer` off: when the owner calls `settle_all` (the step loop, once a step's rows are
      all stored and before it sends them on; see `StageServer`);
    - without a running loop (tools, tests): at once.
    Anything that reads or changes a tree (`get`, `rewound`, `in`) first settles that request's
    queue, in order.
    """

    def __init__(self, max_bytes: int = LEAVES_MAX_BYTES):
        self.max_bytes = max_bytes
        self._trees: OrderedDict[bytes, IncrementalCommitment] = OrderedDict()
        self._pending: dict[bytes, list[tuple[Domain, int, int, torch.Tensor]]] = {}
        self._scheduled = False  # a settle_all callback is queued on the loop
        self._bytes = 0
        self.changes = 0  # bumped by every store/rewind: a tree built meanwhile may be stale
        self.defer = True  # hash once the loop yields (False: when the owner settles, see above)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __contains__(self, request_id: bytes) -> bool:
        self.settle(request_id)
        return request_id in self._trees

    def drop(self, request_id: bytes) -> None:
        acc = self._trees.pop(request_id, None)
        if acc is not None:
            self._bytes -= acc.nbytes

    def put(self, request_id: bytes, acc: IncrementalCommitment) -> None:
        self._pending.pop(request_id, None)
        self.drop(request_id)
        self._trees[request_id] = acc
        self._bytes += acc.nbytes
        self._evict()

    def stored(self, request_id: bytes, domain: Domain, hidden_size: int, start: int,
               rows: torch.Tensor) -> None:
        """Rows (T, d) were stored for positions [start, start + T): queue them for the next pass
        (hashed now, without a running loop)."""
        self.changes += 1
        self._pending.setdefault(request_id, []).append((domain, hidden_size, start, rows))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a tool, a test): hash now
            self.settle_all()
            return
        if self.defer and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._settle_scheduled)

    def _settle_scheduled(self) -> None:
        self._scheduled = False
        self.settle_all()

    def settle(self, request_id: bytes) -> None:
        """Hash one request's queued rows now."""
        queue = self._pending.pop(request_id, None)
        if queue:
            self._hash({request_id: queue})

    def settle_all(self) -> None:
        """Hash every request's queued rows now, in one pass."""
        pending, self._pending = self._pending, {}
        if pending:
            self._hash(pending)

    def _hash(self, pending: dict[bytes, list[tuple[Domain, int, int, torch.Tensor]]]) -> None:
        # Pass k takes each request's k-th queued rows (one tree appears once in a pass); almost
        # always a single pass.
        queues = [(rid, iter(queue)) for rid, queue in pending.items()]
        while queues:
            items, owners, later = [], [], []
            for rid, queue in queues:
                job = next(queue, None)
                if job is None:
                    continue
                later.append((rid, queue))
                domain, hidden_size, start, rows = job
                acc = self._tree_for(rid, domain, hidden_size, start)
                if acc is not None:
                    items.append((acc, start, rows))
                    owners.append((rid, acc, acc.nbytes))
            queues = later
            for (rid, acc, before), error in zip(owners, append_rows(items), strict=True):
                self._bytes += acc.nbytes - before
                if error is not None:
                    self.drop(rid)
                else:
                    self._trees.move_to_end(rid)
            self._evict()

    def _tree_for(self, request_id: bytes, domain: Domain, hidden_size: int,
                  start: int) -> IncrementalCommitment | None:
        """The tree rows from `start` extend, new at position 0; None when earlier rows were never
        seen here (COMMIT then rebuilds from the store)."""
        acc = self._trees.get(request_id)
        if acc is not None and (acc.domain != domain or acc.rows != start
                                or acc.hidden_size != hidden_size):
            self.drop(request_id)
            acc = None
        if acc is None:
            if start != 0:
                return None
            acc = IncrementalCommitment(domain, hidden_size)
            self._trees[request_id] = acc
        return acc

    def rewound(self, request_id: bytes, rows: int) -> None:
        """The store kept only rows [0, rows) of the request."""
        self.changes += 1
        self.settle(request_id)
        acc = self._trees.get(request_id)
        if acc is None:
            return
        if rows > acc.rows:
            self.drop(request_id)
            return
        before = acc.nbytes
        acc.truncate(rows)
        self._bytes += acc.nbytes - before

    def get(self, request_id: bytes, domain: Domain, rows: int) -> IncrementalCommitment | None:
        """The request's tree if it matches `domain` and holds exactly `rows` rows, else None."""
        self.settle(request_id)
        acc = self._trees.get(request_id)
        if acc is None or acc.domain != domain or acc.rows != rows:
            return None
        self._trees.move_to_end(request_id)
        return acc

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._trees:
            _, acc = self._trees.popitem(last=False)
            self._bytes -= acc.nbytes


class StoredRequests:
    """COMMIT and FETCH handling for one `StageServer` (same key, store, directory, chain).

    `leaves` is the `CommitLeaves` the stage's `SessionTable` feeds (shared); without one, every
    COMMIT builds its tree from the stored rows."""

    def __init__(self, store: HiddenStateStore, key: PrivateKey, directory: OperatorDirectory,
                 chain_id: int, layers: tuple[int, int], max_frame_bytes: int,
                 cache_size: int = 1024, leaves: CommitLeaves | None = None,
                 inputs: InputCheck | None = None):
        self.store, self.key, self.directory = store, key, directory
        self.inputs = inputs  # the received-rows trees (stage-level blame); None: a store-only node
        self.chain_id, self.layers, self.max_frame_bytes = chain_id, layers, max_frame_bytes
        self.cache_size = cache_size
        self.leaves = leaves if leaves is not None else CommitLeaves()
        self.commits_grown = 0  # answered from a tree grown as rows were stored
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
        positions, relay = parse_commit_ask(f.body)
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
            if info.stage > 0:  # sign only on inputs the input stage committed to (input_check)
                if self.inputs is None:
                    raise NotStored(f"stage {info.stage} cannot check its input stage's commitment "
                                    "here (no received-rows trees)")
                self.inputs.check(self.chain_id, rid, info.stage, e.hidden, e.rows, positions, relay)
                assert relay is not None
                self.store.put_input(rid, a, b, committed_body(relay.commit, relay.signature))
            sc = await self._stage_commit(rid, info.stage, e, positions, tokens)
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

    async def _stage_commit(self, rid: bytes, stage: int, e: StoreEntry, positions: int,
                            tokens: list[int]) -> StageCommit:
        """The commitment over rows [0, positions): from the grown tree if there is one, else
        grown from the stored rows now (and kept for the next COMMIT)."""
        domain = Domain(self.chain_id, rid, stage)
        a, b = self.layers
        acc = self.leaves.get(rid, domain, e.rows)
        if acc is not None:
            self.commits_grown += 1
            if len(tokens) <= INLINE_TOKENS:  # token leaves + the right edge: about a µs per token
                root, shape = acc.root(positions, tokens)
            else:  # a copy, so rows stored meanwhile cannot change the tree under the thread
                root, shape = await asyncio.to_thread(acc.copy().root, positions, tokens)
        else:
            changes, held = self.leaves.changes, e.rows
            rows = self.store.read(rid, a, b, 0, positions)
            if positions * e.hidden <= INLINE_VALUES:  # well under a millisecond: no thread hop
                acc = grow_commitment(domain, rows)
            else:  # long requests: keep the event loop (and every other pipeline) moving
                acc = await asyncio.to_thread(grow_commitment, domain, rows)
            if positions == held and self.leaves.changes == changes:
                self.leaves.put(rid, acc)  # it holds every row and none changed meanwhile
            root, shape = acc.root(positions, tokens)
        return StageCommit(root, shape.positions, shape.hidden_size, shape.n_tokens)

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
