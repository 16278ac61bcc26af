"""A stage's commitment: a chunked Merkle tree over its output rows (and, on the last stage, tokens).

Leaves, in tree order: every hidden chunk leaf by (position, chunk) — index `position × chunks +
chunk` — then, on the last stage, one token leaf per committed token — index `positions × chunks +
i`. Inner nodes hash pairs of neighbours (`encoding.node_hash`); a level with an odd number of nodes
carries its last node up unchanged (no duplication, so no two leaf lists share a root). The stage
root wraps the top node with the tree's shape (positions, hidden size, token count), so a verifier
that knows the root derives every leaf's index and the exact proof length from the opened
(position, chunk) alone, and a prover cannot commit two leaves for one position.

`StageCommitment.build` commits; `open_chunk` / `open_token` produce openings; `check_chunk` /
`check_token` verify an opening against a root (raising `ProofError` with the reason) and
`verify_chunk` / `verify_token` return a bool. The contract does the same walk (ENCODING.md).
`StageCommitment.from_leaves` commits from hidden leaf hashes computed earlier, and
`IncrementalCommitment` grows the tree as rows arrive (what a stage does while it serves), so that
committing hashes only the token leaves and the right edge; both give `build`'s bytes exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from verifier import encoding as enc
from verifier.encoding import Domain
from verifier.errors import EncodingError, ProofError


@dataclass(frozen=True)
class Shape:
    """What the root binds besides the leaves: rows committed, hidden size, tokens committed."""

    positions: int
    hidden_size: int
    n_tokens: int = 0

    def __post_init__(self) -> None:
        if self.positions < 1 or self.hidden_size < 1 or self.n_tokens < 0:
            raise EncodingError(
                f"a commitment needs positions >= 1, hidden_size >= 1, n_tokens >= 0; got "
                f"{self.positions}, {self.hidden_size}, {self.n_tokens}"
            )
        if self.hidden_size > enc.MAX_HIDDEN or self.positions > 2**32 - 1 or self.n_tokens > 2**32 - 1:
            raise EncodingError(f"shape out of range: {self}")

    @property
    def chunks(self) -> int:
        return enc.chunk_count(self.hidden_size)

    @property
    def leaf_count(self) -> int:
        return self.positions * self.chunks + self.n_tokens

    def hidden_index(self, position: int, chunk: int) -> int:
        if not 0 <= position < self.positions:
            raise ProofError(f"position {position} is outside the committed rows [0, {self.positions})")
        if not 0 <= chunk < self.chunks:
            raise ProofError(f"chunk {chunk} is outside [0, {self.chunks}) for hidden size {self.hidden_size}")
        return position * self.chunks + chunk

    def token_index(self, i: int) -> int:
        if not 0 <= i < self.n_tokens:
            raise ProofError(f"token index {i} is outside the committed tokens [0, {self.n_tokens})")
        return self.positions * self.chunks + i


def proof_length(index: int, count: int) -> int:
    """Siblings on the path of leaf `index` in a tree of `count` leaves (odd last nodes carried up)."""
    k = 0
    while count > 1:
        if index % 2 == 1 or index + 1 < count:
            k += 1
        index //= 2
        count = (count + 1) // 2
    return k


def fold_path(leaf_hash: bytes, index: int, count: int, siblings: Sequence[bytes]) -> bytes:
    """The top node reached from a leaf hash along its proof. Raises `ProofError` if malformed."""
    if not 0 <= index < count:
        raise ProofError(f"leaf index {index} is outside the tree [0, {count})")
    want = proof_length(index, count)
    if len(siblings) != want:
        raise ProofError(f"proof for leaf {index} of {count} needs {want} siblings, got {len(siblings)}")
    h, k = leaf_hash, 0
    while count > 1:
        if index % 2 == 1:
            sib = _sibling(siblings, k)
            h, k = enc.node_hash(sib, h), k + 1
        elif index + 1 < count:
            sib = _sibling(siblings, k)
            h, k = enc.node_hash(h, sib), k + 1
        index //= 2
        count = (count + 1) // 2
    return h


def _sibling(siblings: Sequence[bytes], k: int) -> bytes:
    s = siblings[k]
    if not isinstance(s, bytes | bytearray) or len(s) != 32:
        raise ProofError(f"sibling {k} must be 32 bytes, got {s!r:.80}")
    return bytes(s)


def _levels(level: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every level of the tree over leaf hashes `level` (uint8 (n, 32)), leaves first, top last."""
    levels = [level]
    while len(level) > 1:
        n = len(level)
        pairs = np.empty((n // 2, enc.NODE_LEN), dtype=np.uint8)
        pairs[:, 0] = enc.PREFIX_NODE
        pairs[:, 1:] = level[: n - n % 2].reshape(n // 2, 64)
        nxt = enc.hash_rows(pairs)
        if n % 2:
            nxt = np.concatenate([nxt, level[-1:]])
        levels.append(nxt)
        level = nxt
    return tuple(levels)


def _token_hashes(domain: Domain, tokens: Sequence[int]) -> np.ndarray:
    if not len(tokens):
        return np.empty((0, 32), dtype=np.uint8)
    return enc.hash_rows(enc.token_leaves(domain, tokens))


def _node_array(nodes: Any, count: int, what: str) -> np.ndarray:
    """32-byte hashes as uint8 (count, 32), from such an array or their concatenation."""
    if isinstance(nodes, bytes | bytearray | memoryview):
        arr = np.frombuffer(bytes(nodes), dtype=np.uint8)
    else:
        arr = np.asarray(nodes)
        if arr.dtype != np.uint8:
            raise EncodingError(f"{what} must be uint8, got {arr.dtype}")
    if arr.size != count * 32 or (arr.ndim == 2 and arr.shape[1] != 32) or arr.ndim > 2:
        raise EncodingError(f"want {count} {what} of 32 bytes, got an array of shape {arr.shape}")
    return np.ascontiguousarray(arr).reshape(count, 32)


@dataclass(frozen=True)
class ChunkOpening:
    """One opened hidden chunk: its 32 bf16 bit patterns and the Merkle siblings, leaf to top."""

    position: int
    chunk: int
    values: np.ndarray  # uint16 (32,), bf16 bit patterns, zero-padded past the hidden size
    siblings: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {"position": self.position, "chunk": self.chunk,
                "values": "0x" + enc.payload(self.values).hex(),
                "siblings": ["0x" + s.hex() for s in self.siblings]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChunkOpening:
        try:
            raw = bytes.fromhex(str(d["values"]).removeprefix("0x"))
            if len(raw) != enc.PAYLOAD_LEN:
                raise ProofError(f"values must be {enc.PAYLOAD_LEN} bytes, got {len(raw)}")
            return cls(int(d["position"]), int(d["chunk"]),
                       np.frombuffer(raw, dtype=">u2").astype(np.uint16),
                       tuple(bytes.fromhex(str(s).removeprefix("0x")) for s in d["siblings"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ProofError(f"malformed chunk opening: {e}") from e


@dataclass(frozen=True)
class TokenOpening:
    """One opened token leaf: index i in the committed token list, its id and the siblings."""

    index: int
    token_id: int
    siblings: tuple[bytes, ...]


@dataclass(frozen=True)
class StageCommitment:
    """The committed tree of one stage of one request; `levels[0]` are leaf hashes, last is the top."""

    domain: Domain
    shape: Shape
    levels: tuple[np.ndarray, ...]  # uint8 (n_level, 32) each
    bits: np.ndarray | None  # uint16 (positions, chunks × 32), padded; None: built from leaf hashes
    tokens: tuple[int, ...]

    @classmethod
    def build(cls, domain: Domain, hidden: Any, tokens: Sequence[int] = ()) -> StageCommitment:
        """Commit (T, d) output rows (floats, torch tensor or uint16 bf16 bits) and optional tokens."""
        bits = enc.bf16_bits(hidden)
        if bits.ndim != 2:
            raise EncodingError(f"hidden rows must be 2-D (positions, hidden size), got shape {bits.shape}")
        shape = Shape(bits.shape[0], bits.shape[1], len(tokens))
        toks = tuple(int(t) for t in tokens)
        leaf_rows = [enc.hash_rows(enc.hidden_leaves(domain, bits))]
        if toks:
            leaf_rows.append(np.frombuffer(
                b"".join(enc.keccak(enc.token_leaf(domain, i, t)) for i, t in enumerate(toks)),
                dtype=np.uint8).reshape(len(toks), 32))
        level = np.concatenate(leaf_rows) if len(leaf_rows) > 1 else leaf_rows[0]
        return cls(domain, shape, _levels(level), enc.pad_rows(bits), toks)

    @classmethod
    def from_leaves(cls, domain: Domain, shape: Shape, hidden_leaf_hashes: Any,
                    tokens: Sequence[int] = (), bits: Any = None) -> StageCommitment:
        """The commitment `build` gives, from hidden leaf hashes already computed (uint8
        (positions × chunks, 32), or their 32-byte concatenation, in leaf order) and the tokens:
        only the token leaves and the inner nodes are hashed. Without `bits` (the (positions, d)
        rows) the result has the root and every proof but cannot open chunk values."""
        toks = tuple(int(t) for t in tokens)
        if len(toks) != shape.n_tokens:
            raise EncodingError(f"{shape} commits {shape.n_tokens} tokens, got {len(toks)}")
        hidden = _node_array(hidden_leaf_hashes, shape.positions * shape.chunks, "hidden leaf hashes")
        padded = None
        if bits is not None:
            b = enc.bf16_bits(bits)
            if b.shape != (shape.positions, shape.hidden_size):
                raise EncodingError(f"rows of shape {b.shape} do not match {shape}")
            padded = enc.pad_rows(b)
        level = np.concatenate([hidden, _token_hashes(domain, toks)]) if toks else hidden
        return cls(domain, shape, _levels(level), padded, toks)

    @property
    def top(self) -> bytes:
        return self.levels[-1][0].tobytes()

    @property
    def root(self) -> bytes:
        s = self.shape
        return enc.root_hash(s.positions, s.hidden_size, s.n_tokens, self.top)

    def _siblings(self, index: int) -> tuple[bytes, ...]:
        out = []
        for level in self.levels[:-1]:
            n = len(level)
            if index % 2 == 1:
                out.append(level[index - 1].tobytes())
            elif index + 1 < n:
                out.append(level[index + 1].tobytes())
            index //= 2
        return tuple(out)

    def open_chunk(self, position: int, chunk: int) -> ChunkOpening:
        i = self.shape.hidden_index(position, chunk)
        if self.bits is None:
            raise ProofError("this commitment was made from leaf hashes without the rows; "
                             "it cannot open chunk values (pass bits= to from_leaves)")
        vals = self.bits[position, chunk * enc.CHUNK:(chunk + 1) * enc.CHUNK].copy()
        return ChunkOpening(position, chunk, vals, self._siblings(i))

    def open_token(self, index: int) -> TokenOpening:
        i = self.shape.token_index(index)
        return TokenOpening(index, self.tokens[index], self._siblings(i))


def _check_root(root: bytes, shape: Shape, top: bytes) -> None:
    got = enc.root_hash(shape.positions, shape.hidden_size, shape.n_tokens, top)
    if got != bytes(root):
        raise ProofError(f"opening does not lead to the committed root (got 0x{got.hex()}, "
                         f"committed 0x{bytes(root).hex()})")


def check_chunk(root: bytes, domain: Domain, shape: Shape, opening: ChunkOpening) -> None:
    """Verify a hidden chunk opening; raises `ProofError` saying why it fails."""
    index = shape.hidden_index(opening.position, opening.chunk)
    vals = np.asarray(opening.values)
    if vals.dtype != np.uint16 or vals.shape != (enc.CHUNK,):
        raise ProofError(f"opened values must be uint16 ({enc.CHUNK},), got {vals.dtype} {vals.shape}")
    pad_from = shape.hidden_size - opening.chunk * enc.CHUNK
    if pad_from < enc.CHUNK and vals[pad_from:].any():
        raise ProofError(f"padding values past hidden size {shape.hidden_size} must be zero")
    leaf = enc.keccak(enc.hidden_leaf(domain, opening.position, opening.chunk, vals))
    _check_root(root, shape, fold_path(leaf, index, shape.leaf_count, opening.siblings))


def check_token(root: bytes, domain: Domain, shape: Shape, opening: TokenOpening) -> None:
    """Verify a token opening; raises `ProofError` saying why it fails."""
    index = shape.token_index(opening.index)
    try:
        leaf = enc.keccak(enc.token_leaf(domain, opening.index, opening.token_id))
    except EncodingError as e:
        raise ProofError(str(e)) from e
    _check_root(root, shape, fold_path(leaf, index, shape.leaf_count, opening.siblings))


def verify_chunk(root: bytes, domain: Domain, shape: Shape, opening: ChunkOpening) -> bool:
    try:
        check_chunk(root, domain, shape, opening)
    except ProofError:
        return False
    return True


def verify_token(root: bytes, domain: Domain, shape: Shape, opening: TokenOpening) -> bool:
    try:
        check_token(root, domain, shape, opening)
    except ProofError:
        return False
    return True


class IncrementalCommitment:
    """A stage's commitment grown row by row: hidden leaf hashes and every *complete* inner node
    over them (a node whose leaves are all hidden leaves already held) are hashed as rows arrive,
    so committing later hashes only the token leaves and the right edge of the tree.

    Sound because a tree level pairs nodes (2i, 2i + 1) from the left whatever the leaf count:
    node k of level ℓ covering leaves [k·2^ℓ, (k + 1)·2^ℓ) ⊆ [0, positions × chunks) is the same in
    every tree that starts with those hidden leaves; only nodes touching the end of the hidden
    leaves (and the token leaves after them) depend on the committed positions and tokens.
    `commitment(...)` / `root(...)` equal `StageCommitment.build` over the first `positions` rows
    byte for byte. `append` takes rows in order; `truncate` forgets rows from a position on.
    """

    def __init__(self, domain: Domain, hidden_size: int):
        Shape(1, hidden_size)  # validates the size
        self.domain, self.hidden_size = domain, hidden_size
        self.chunks = enc.chunk_count(hidden_size)
        self.rows = 0
        self._levels: list[bytearray] = [bytearray()]  # level ℓ: the (rows × chunks) >> ℓ complete nodes

    @property
    def nbytes(self) -> int:
        return sum(len(level) for level in self._levels)

    def copy(self) -> IncrementalCommitment:
        """An independent copy (rows appended to either later do not reach the other)."""
        c = IncrementalCommitment(self.domain, self.hidden_size)
        c.rows, c._levels = self.rows, [bytearray(level) for level in self._levels]
        return c

    def leaf_hashes(self, positions: int | None = None) -> np.ndarray:
        """Hidden leaf hashes of rows [0, positions) (default: all held), uint8 (positions × chunks, 32)."""
        p = self.rows if positions is None else positions
        if not 0 <= p <= self.rows:
            raise EncodingError(f"positions {p} outside the {self.rows} rows held")
        return np.frombuffer(bytes(self._levels[0][: 32 * p * self.chunks]), dtype=np.uint8).reshape(-1, 32)

    def append(self, start: int, hidden: Any) -> None:
        """Hash rows (T, d) for positions [start, start + T); `start` must be the rows held."""
        error = append_rows([(self, start, hidden)])[0]
        if error is not None:
            raise error

    def truncate(self, rows: int) -> None:
        """Forget rows from position `rows` on (complete nodes below it stay valid)."""
        if not 0 <= rows <= self.rows:
            raise EncodingError(f"cannot truncate {self.rows} rows to {rows}")
        n = rows * self.chunks
        for lv, level in enumerate(self._levels):
            del level[32 * (n >> lv):]
        self.rows = rows

    def _tails(self, positions: int, tokens: Sequence[int]) -> tuple[Shape, tuple[int, ...],
                                                                      list[tuple[int, bytes]]]:
        """Per level: (a, tail) — the level is the first `a` complete nodes, then `tail`."""
        if not 1 <= positions <= self.rows:
            raise EncodingError(f"a commitment over {positions} positions needs them held; "
                                f"{self.rows} rows are")
        toks = tuple(int(t) for t in tokens)
        shape = Shape(positions, self.hidden_size, len(toks))
        h = positions * self.chunks
        tail = _token_hashes(self.domain, toks).tobytes()
        out, lv = [], 0
        while True:
            a = h >> lv
            out.append((a, tail))
            if a + len(tail) // 32 == 1:
                return shape, toks, out
            seq = (bytes(self._levels[lv][32 * (a - 1): 32 * a]) if a % 2 else b"") + tail
            m = len(seq) // 32
            tail = enc.hash_pairs(seq[: 64 * (m // 2)]) + (seq[-32:] if m % 2 else b"")
            lv += 1

    def root(self, positions: int, tokens: Sequence[int] = ()) -> tuple[bytes, Shape]:
        """The stage root over rows [0, positions) and `tokens`, with the shape it binds."""
        shape, _, tails = self._tails(positions, tokens)
        a, tail = tails[-1]
        top = bytes(self._levels[len(tails) - 1][:32]) if a else tail
        return enc.root_hash(shape.positions, shape.hidden_size, shape.n_tokens, top), shape

    def commitment(self, positions: int, tokens: Sequence[int] = (), bits: Any = None) -> StageCommitment:
        """The whole tree over rows [0, positions) and `tokens` (`bits` as in `from_leaves`)."""
        shape, toks, tails = self._tails(positions, tokens)
        levels = tuple(np.frombuffer((bytes(self._levels[lv][: 32 * a]) if a else b"") + tail,
                                     dtype=np.uint8).reshape(-1, 32)
                       for lv, (a, tail) in enumerate(tails))
        padded = None
        if bits is not None:
            b = enc.bf16_bits(bits)
            if b.shape != (positions, self.hidden_size):
                raise EncodingError(f"rows of shape {b.shape} do not match {shape}")
            padded = enc.pad_rows(b)
        return StageCommitment(self.domain, shape, levels, padded, toks)


def append_rows(items: Sequence[tuple[IncrementalCommitment, int, Any]]) -> list[EncodingError | None]:
    """`acc.append(start, rows)` for many trees at once, with the same bytes tree by tree: one bf16
    conversion, one leaf build and one keccak pass over every tree's new rows, then each level's
    new inner nodes of every tree in one pass. A stage grows one tree per request every step, and
    per call the fixed costs were most of the hashing (one decoded row of 576 values: ~145 µs
    alone, ~62 µs in a step of 16 requests; `bench/commit.py`). Each tree appears at most once.
    The answer holds, per item, None or the error that left that tree unchanged (rows not in
    order, of the wrong width, past position 2**32 - 1, NaN/infinite)."""
    if len({id(acc) for acc, _, _ in items}) != len(items):
        raise ValueError("append_rows takes each tree at most once")
    errors: list[EncodingError | None] = [None] * len(items)
    bits = _bits_of([rows for _, _, rows in items])
    good: dict[int, list[int]] = {}  # hidden size -> indices of the items that hash
    for k, ((acc, start, _), b) in enumerate(zip(items, bits, strict=True)):
        try:
            if isinstance(b, EncodingError):
                raise b
            if start != acc.rows:
                raise EncodingError(f"rows must arrive in order: got position {start}, {acc.rows} held")
            if b.ndim != 2 or b.shape[1] != acc.hidden_size:
                raise EncodingError(f"rows must be (T, {acc.hidden_size}), got shape {b.shape}")
            enc.check_positions(start, len(b))
            enc.check_finite_bits(b)
        except EncodingError as e:
            errors[k] = e
            continue
        if len(b):
            good.setdefault(acc.hidden_size, []).append(k)
    for ks in good.values():
        leaves = enc.hidden_leaves_many([(items[k][0].domain, items[k][1], len(bits[k])) for k in ks],
                                        np.concatenate([bits[k] for k in ks]))
        hashes = enc.hash_rows(leaves).tobytes()
        at = 0
        for k in ks:
            acc = items[k][0]
            n = 32 * len(bits[k]) * acc.chunks
            acc._levels[0] += hashes[at:at + n]
            acc.rows += len(bits[k])
            at += n
        _grow([items[k][0] for k in ks])
    return errors


def _bits_of(rows: list[Any]) -> list[np.ndarray | EncodingError]:
    """bf16 bits of each item's rows (NaN kept as a NaN pattern, checked by the caller): one
    conversion for 2-D torch float tensors of one dtype and width, else one per item."""
    if len(rows) > 1 and all(type(r).__module__.startswith("torch") and r.dim() == 2
                             and r.is_floating_point() for r in rows) \
            and len({(r.dtype, r.shape[1]) for r in rows}) == 1:
        import torch

        whole = enc.bf16_bits(torch.cat([r.detach() for r in rows]), finite=False)
        return list(np.split(whole, np.cumsum([r.shape[0] for r in rows])[:-1]))
    answer: list[np.ndarray | EncodingError] = []
    for r in rows:
        try:
            answer.append(enc.bf16_bits(r, finite=False))
        except EncodingError as e:
            answer.append(e)
    return answer


def _grow(trees: list[IncrementalCommitment]) -> None:
    """Hash every complete inner node the trees' new leaves made, level by level, all trees at once."""
    lv = 0
    while trees:
        spans = []
        for acc in trees:
            below = acc._levels[lv]
            have = len(acc._levels[lv + 1]) // 32 if lv + 1 < len(acc._levels) else 0
            want = len(below) // 64
            if want > have:  # else this level did not grow, so no level above it does
                spans.append((acc, bytes(below[64 * have:64 * want])))
        if not spans:
            return
        nodes = enc.hash_pairs(b"".join(seg for _, seg in spans))
        at = 0
        for acc, seg in spans:
            if lv + 1 == len(acc._levels):
                acc._levels.append(bytearray())
            acc._levels[lv + 1] += nodes[at:at + len(seg) // 2]
            at += len(seg) // 2
        trees = [acc for acc, _ in spans]
        lv += 1
