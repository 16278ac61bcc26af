"""Decode lanes kept between steps compute exactly what fresh copies of every history compute.

`BatchedExecutor` keeps each decoding request's K/V history in a lane of its `DecodeSlab` from one
step to the next. A reference executor over the same shard gets a fresh slab before every step, so
every history is copied in anew (what the executor did before lanes were kept). Both see the same
steps — requests joining, leaving, decoding in changing groups, a re-route rewinding a request and
recomputing it from other rows, a closed request's lane going to a new one — and must produce
bit-identical rows (atol=0: the same values go through the same kernels; only where a history sits
differs). A lane that served stale or foreign K/V would change rows by O(1).
"""

from __future__ import annotations

from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.runtime.batch import BatchedExecutor, Work
from node.runtime.decode_slab import DecodeSlab
from node.runtime.shard import load_shard

CAPACITY = 160  # more than one 64-position block: lanes grow while requests decode


class Twin:
    """The executor under test and a reference that copies every history afresh each step."""

    def __init__(self, model: Path):
        self.ex = BatchedExecutor(load_shard(model, 2, 5))
        self.ref = BatchedExecutor(load_shard(model, 2, 5))
        self.d = self.ex.shard.hidden_size
        self.n = 0

    def open(self) -> bytes:
        self.n += 1
        rid = self.n.to_bytes(32, "big")
        for e in (self.ex, self.ref):
            e.open(rid, capacity=CAPACITY)
        return rid

    def close(self, rid: bytes) -> None:
        for e in (self.ex, self.ref):
            e.close(rid)

    def rewind(self, rid: bytes, length: int) -> None:
        """A re-route's rewind, as `SessionTable.rewind` does it."""
        for e in (self.ex, self.ref):
            s = e.session(rid)
            s.cache.crop(length - s.length)
            s.length = length

    def step(self, work: list[tuple[bytes, int]], gen: torch.Generator) -> None:
        """One step: `work` lists (request, rows) at each request's current length."""
        xs = [torch.randn(t, self.d, generator=gen) for _, t in work]
        r = self.ref
        r._slab = DecodeSlab(r.n_layers, r.kv_heads, r.head_dim, r.shard.dtype, r.shard.device)
        outs = [e.step([Work(rid, x, e.session(rid).length, "none") for (rid, _), x in
                        zip(work, xs, strict=True)]) for e in (self.ex, self.ref)]
        for a, b in zip(*outs, strict=True):
            assert torch.equal(a.hidden, b.hidden)


def test_a_group_decoding_step_after_step_copies_its_history_once(tiny_llama: Path):
    t, gen = Twin(tiny_llama), torch.Generator().manual_seed(0)
    group = [t.open() for _ in range(4)]
    t.step([(r, 9) for r in group], gen)  # prefills
    t.step([(r, 1) for r in group], gen)
    copied = t.ex._slab.copied
    assert copied == 4 * 9  # each history once, into its lane
    for _ in range(70):  # past the first 64-position block: lanes grow once
        t.step([(r, 1) for r in group], gen)
    grown = t.ex._slab.copied - copied
    assert grown <= 4 * 64  # one regrowth re-copies each history once, not every step


def test_two_groups_taking_turns_keep_their_lanes(tiny_llama: Path):
    t, gen = Twin(tiny_llama), torch.Generator().manual_seed(1)
    a, b = [t.open() for _ in range(3)], [t.open() for _ in range(3)]
    t.step([(r, 5) for r in a + b], gen)
    for _ in range(2):
        t.step([(r, 1) for r in a], gen)
        t.step([(r, 1) for r in reversed(b)], gen)  # the rows' order need not be the lanes'
    copied = t.ex._slab.copied
    for _ in range(10):
        t.step([(r, 1) for r in a], gen)
        t.step([(r, 1) for r in b], gen)
    assert t.ex._slab.copied == copied


def test_a_rewound_request_recomputed_from_other_rows_never_attends_to_its_old_lane(tiny_llama):
    t, gen = Twin(tiny_llama), torch.Generator().manual_seed(2)
    rs = [t.open() for _ in range(3)]
    t.step([(r, 6) for r in rs], gen)
    for _ in range(4):
        t.step([(r, 1) for r in rs], gen)
    # a re-route: request 0 goes back 3 positions and gets other rows for them (a prefill chunk)
    t.rewind(rs[0], 7)
    t.step([(rs[0], 3), (rs[1], 1), (rs[2], 1)], gen)
    for _ in range(3):
        t.step([(r, 1) for r in rs], gen)
    # the last stage's kind of rewind: one position back, then a decode row at that position
    t.rewind(rs[1], t.ex.session(rs[1]).length - 1)
    for _ in range(3):
        t.step([(r, 1) for r in rs], gen)


def test_a_closed_requests_lane_serves_the_next_request_only_its_own_history(tiny_llama: Path):
    t, gen = Twin(tiny_llama), torch.Generator().manual_seed(3)
    rs = [t.open() for _ in range(3)]
    t.step([(r, 20) for r in rs], gen)
    for _ in range(3):
        t.step([(r, 1) for r in rs], gen)
    t.close(rs[1])
    new = t.open()
    t.step([(new, 2), (rs[0], 1), (rs[2], 1)], gen)  # shorter than the lane's old history
    for _ in range(4):
        t.step([(r, 1) for r in (rs[0], new, rs[2])], gen)
    for _ in range(30):  # requests come and go: the lane index keeps only lanes' owners
        t.close(new)
        new = t.open()
        t.step([(new, 2), (rs[0], 1), (rs[2], 1)], gen)
        t.step([(r, 1) for r in (rs[0], new, rs[2])], gen)
    assert len(t.ex._slab._where) <= len(t.ex._slab.lanes)


def test_long_requests_attending_alone_for_a_while_keep_their_lanes_valid(tiny_llama: Path):
    """Two long requests decode together, then beside short ones (too short to pad to theirs:
    the long ones attend alone, writing their caches directly), then together again."""
    t, gen = Twin(tiny_llama), torch.Generator().manual_seed(6)
    long = [t.open() for _ in range(2)]
    short = [t.open() for _ in range(6)]
    t.step([(r, 100) for r in long], gen)
    t.step([(r, 3) for r in short], gen)  # their KV counts toward the slab's limit from now on
    t.step([(r, 1) for r in long], gen)
    for _ in range(3):
        t.step([(r, 1) for r in [*short, *long]], gen)
        assert t.ex._slab.lane_of(t.ex.session(long[0]).cache) is not None  # kept, not padded
    copied = t.ex._slab.copied
    for r in short:
        t.close(r)
    t.step([(r, 1) for r in long], gen)
    assert t.ex._slab.copied - copied <= 2 * 3  # only the rows they wrote alone


def test_a_slab_left_large_by_a_burst_is_given_back(tiny_llama: Path):
    t, gen = Twin(tiny_llama), torch.Generator().manual_seed(5)
    burst = [t.open() for _ in range(20)]
    t.step([(r, 4) for r in burst], gen)
    t.step([(r, 1) for r in burst], gen)
    slab = t.ex._slab
    assert len(slab.lanes) >= 20
    for r in burst[2:]:
        t.close(r)
    t.step([(r, 1) for r in burst[:2]], gen)
    assert len(slab.lanes) * slab.cap <= 2 * 64 + 64 * 2


@given(st.data())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_schedule_of_joins_leaves_groups_and_rewinds_matches_fresh_copies(tiny_llama, data):
    t, gen = Twin(tiny_llama), torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    running = [t.open() for _ in range(3)]
    t.step([(r, data.draw(st.integers(1, 5))) for r in running], gen)
    for _ in range(data.draw(st.integers(10, 30), label="steps")):
        op = data.draw(st.sampled_from(["open", "close", "rewind"] + ["step"] * 4))
        if op == "open" and len(running) < 6:
            rid = t.open()
            t.step([(rid, data.draw(st.integers(1, 5)))], gen)
            running.append(rid)
        elif op == "close" and running:
            t.close(running.pop(data.draw(st.integers(0, len(running) - 1))))
        elif op == "rewind" and running:
            rid = data.draw(st.sampled_from(running))
            length = t.ex.session(rid).length
            back = data.draw(st.integers(max(length - 4, 1), length))
            t.rewind(rid, back)
            if back < length - 1:  # recomputed from other rows, as a re-route does
                t.step([(rid, length - back)], gen)
        elif running:
            size = data.draw(st.integers(1, len(running)))
            group = data.draw(st.permutations(running))[:size]
            room = [r for r in group if t.ex.session(r).length + 3 < CAPACITY]
            t.step([(r, data.draw(st.sampled_from([1, 1, 1, 2]))) for r in room], gen)
