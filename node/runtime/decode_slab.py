"""Decode K/V kept between steps: each decoding request's history lives in a *lane* of one slab.

A decode step attends every decode row over its request's whole history in one padded
`scaled_dot_product_attention` call, which wants the histories side by side: `(B, Hkv, L, hd)` per
layer. Copying each request's history into such a buffer every step cost ~9 % of a 16-row SmolLM2
step at ~100 positions, and grows with the context. The slab keeps those copies from one step to
the next instead:

    K, V: (n_layers, lanes, Hkv, Lcap, hd)    lane j mirrors positions [0, valid_j) of one RequestKV

A step's decode requests get lanes side by side, `[lo, lo + B)` (in any order), so the step
attends over the view `K[li, lo:lo + B, :, :L]`: no copy. When a group of requests decodes step
after step (every running request with one micro-batch, or each group with several) its lanes
stay put and only the rows the step itself writes move. A request joining or leaving a group
gets a new window of lanes: the history the lane lacks is copied once, then it stays.

What a lane holds is the request's K/V, never anything else: a lane is tied to its `RequestKV`
object (a weak reference, so a closed session frees nothing late), `valid` counts the positions
known equal, every write to the request's cache outside the decode path (a prefill chunk, a
re-route's recompute) cuts `valid` back to where that write starts (`invalidate`), and a decode
step sets it to its own start before computing (so a failed step leaves nothing stale). Positions
at or past a row's end are masked; they only ever hold K/V values or the zeros the slab was
allocated with (finite, weighted by exactly 0).

Memory: scratch outside the admission budget, bounded by what the open sessions hold. The
executor passes a limit: twice the positions the open sessions' caches hold, plus a block per
decode row. Within it the slab keeps a lane per open session and `Lcap` ≥ the longest decode
context (grown by half, in 64-position blocks; a growth starts all lanes afresh); beyond it, only
this step's lanes; and a slab more than twice the limit (what a burst left) is given back. With
the executor's rule that a step's padded decode rows pad to at most twice their own history
(`BatchedExecutor._padded`), one long request among many short ones cannot make the slab many
times the KV admission reserved.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

import torch

BLOCK = 64  # positions allocated at a time


class _History(Protocol):
    """A request's own K/V (node.runtime.batch.RequestKV): `(n_layers, Hkv, alloc, hd)` each."""

    K: torch.Tensor
    V: torch.Tensor


@dataclass
class _Lane:
    owner: weakref.ReferenceType  # the request's RequestKV this lane mirrors
    valid: int  # positions [0, valid) equal the owner's
    key: int  # id(owner), its key in `DecodeSlab._where`


class DecodeSlab:
    """Lanes of decode history, reused from step to step (see the module docstring)."""

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device):
        self.shape = (n_layers, kv_heads, head_dim)
        self.dtype, self.device = dtype, device
        self.K = self.V = torch.empty(0, dtype=dtype, device=device)
        self.lanes: list[_Lane | None] = []
        self.cap = 0  # positions per lane
        self.limit = 0  # the most positions the slab may hold (see `place`)
        self._where: dict[int, int] = {}  # id(RequestKV) → its lane
        self.copied = 0  # positions copied into lanes (the tests read it)

    def lane_of(self, kv: _History) -> int | None:
        j = self._where.get(id(kv))
        if j is None or j >= len(self.lanes):
            return None
        lane = self.lanes[j]
        return j if lane is not None and lane.owner() is kv else None

    def invalidate(self, kv: _History, start: int) -> None:
        """The request's cache is written from `start` on outside the decode path."""
        j = self.lane_of(kv)
        if j is not None:
            lane = self.lanes[j]
            assert lane is not None
            lane.valid = min(lane.valid, start)

    def place(self, kvs: list[_History], starts: list[int], live: set[int],
              limit: int) -> tuple[int, list[int]]:
        """Lanes `[lo, lo + B)` for this step's decode requests (`kvs`, one row each at `starts`),
        each holding its request's positions [0, start); returns `lo` and each request's lane.
        `live`: ids of every open session's RequestKV (their lanes are kept if possible).
        `limit`: the most positions (lanes × positions per lane) the slab may hold now; a slab
        that would be larger holds only this step's lanes, and one more than twice as large (what
        a burst left) is given back."""
        B, L = len(kvs), max(starts) + 1
        self.limit = limit
        if B > len(self.lanes) or L > self.cap or len(self.lanes) * self.cap > 2 * limit:
            grown = max(L, self.cap + self.cap // 2) if L > self.cap else self.cap
            self._alloc(max(B, len(live), len(self.lanes)), grown, B, L)
        now = [self.lane_of(kv) for kv in kvs]
        held = [j for j in now if j is not None]
        if len(held) == B and max(held) - min(held) + 1 == B:
            lo = min(held)
        else:
            lo = self._window(kvs, now, live)
            now = self._move_in(kvs, now, lo)
        for kv, j, start in zip(kvs, now, starts, strict=True):
            lane = self.lanes[j]
            assert j is not None and lane is not None
            if lane.valid < start:
                self.K[:, j, :, lane.valid:start] = kv.K[:, :, lane.valid:start]
                self.V[:, j, :, lane.valid:start] = kv.V[:, :, lane.valid:start]
                self.copied += start - lane.valid
            lane.valid = start  # the step writes position `start`: nothing past it is known
        return lo, [j for j in now if j is not None]  # every request has its lane by now

    def views(self, lo: int, B: int, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of lanes [lo, lo + B), positions [0, L): `(n_layers, B, Hkv, L, hd)` views."""
        return self.K[:, lo:lo + B, :, :L], self.V[:, lo:lo + B, :, :L]

    def written(self, kv: _History, end: int) -> None:
        """The decode step's row is in the request's own cache too: positions [0, end) agree."""
        j = self.lane_of(kv)
        if j is not None:
            lane = self.lanes[j]
            assert lane is not None
            lane.valid = end

    # ── lanes ─────────────────────────────────────────────────────────────────────────────────
    def _alloc(self, lanes: int, positions: int, need_lanes: int, need: int) -> None:
        """Fresh storage (zeros: finite padding); every lane starts empty. `lanes` × `positions`
        if that fits `self.limit`, else what this step needs (`need_lanes` × `need`)."""
        cap = -(-positions // BLOCK) * BLOCK
        if lanes * cap > self.limit:
            lanes, cap = need_lanes, -(-need // BLOCK) * BLOCK
        n_layers, kv_heads, head_dim = self.shape
        shape = (n_layers, lanes, kv_heads, cap, head_dim)
        self.K = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.V = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.lanes, self.cap, self._where = [None] * lanes, cap, {}

    def _window(self, kvs: list[_History], now: list[int | None], live: set[int]) -> int:
        """The start of B side-by-side lanes free for this step: none held by another open
        session's request, as many of the step's requests already in place as possible."""
        B, n = len(kvs), len(self.lanes)
        mine = {id(kv) for kv in kvs}

        def free(lane: _Lane | None) -> bool:
            o = lane.owner() if lane is not None else None
            return o is None or id(o) in mine or id(o) not in live

        frees = [0, *accumulate(int(free(lane)) for lane in self.lanes)]
        placed = [0] * n
        for j in now:
            if j is not None:
                placed[j] = 1
        inplace = [0, *accumulate(placed)]
        best = max(((inplace[lo + B] - inplace[lo], -lo) for lo in range(n - B + 1)
                    if frees[lo + B] - frees[lo] == B), default=None)
        if best is None:  # fragmented by other open requests: start every lane afresh
            self._alloc(max(n, B + len(live)), self.cap, B, self.cap)
            return 0
        return -best[1]

    def _move_in(self, kvs: list[_History], now: list[int | None], lo: int) -> list[int]:
        """Give every request a lane in [lo, lo + B): those already there keep theirs."""
        B = len(kvs)
        # after a reallocation nothing is held any more
        now = [j if j is not None and self.lane_of(kv) == j else None
               for kv, j in zip(kvs, now, strict=True)]
        keep = {j for j in now if j is not None and lo <= j < lo + B}
        spare = iter(j for j in range(lo, lo + B) if j not in keep)
        out = []
        for kv, j in zip(kvs, now, strict=True):
            if j is None or j not in keep:
                if j is not None:
                    self.lanes[j] = None  # moved out: its old lane is free
                j = next(spare)
                old = self.lanes[j]
                if old is not None and self._where.get(old.key) == j:
                    del self._where[old.key]  # a finished request's entry goes with its lane
                self.lanes[j] = _Lane(weakref.ref(kv), 0, id(kv))
                self._where[id(kv)] = j
            out.append(j)
        return out
