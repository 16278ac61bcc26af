"""The hidden-state store: rows by position range, retention, eviction, disk budget, restart."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from node.dataplane.hidden_store import HEADER_SIZE, HiddenStateStore, disk_usage
from node.runtime.models.errors import StoreError, StoreFull
from protocol.tensors import TensorCodecError, decode_tensor, encode_tensor

RID = bytes(range(32))
D = 16


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def make_store(root: Path, clock: Clock, max_bytes: int = 1 << 20) -> HiddenStateStore:
    return HiddenStateStore(
        root, max_bytes=max_bytes, retention_s=100.0, max_open_s=50.0, clock=clock
    )


def rows(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rows_written_by_prefill_and_decode_are_served_by_position_range(
    tmp_path: Path, dtype: torch.dtype
):
    store = make_store(tmp_path, Clock())
    store.open(RID, 3, 6, D, dtype, capacity=20)
    prompt, step1, step2 = rows(7, 1, dtype), rows(1, 2, dtype), rows(1, 3, dtype)
    store.append(RID, 3, 6, 0, prompt)
    store.append(RID, 3, 6, 7, step1)
    store.append(RID, 3, 6, 8, step2)
    everything = torch.cat([prompt, step1, step2])
    assert torch.equal(store.read(RID, 3, 6, 0, 9), everything)
    assert torch.equal(store.read(RID, 3, 6, 5, 8), everything[5:8])
    assert store.read(RID, 3, 6, 5, 8).dtype == dtype


def test_rows_survive_a_restart_of_the_store(tmp_path: Path):
    clock = Clock()
    store = make_store(tmp_path, clock)
    store.open(RID, 0, 4, D, torch.float32, capacity=10)
    store.append(RID, 0, 4, 0, rows(6))
    store.close(RID, 0, 4)
    again = make_store(tmp_path, clock)
    assert torch.equal(again.read(RID, 0, 4, 0, 6), rows(6))
    assert again.entry(RID, 0, 4).expires_at == clock.now + 100.0


def test_a_torn_last_row_after_a_crash_is_ignored(tmp_path: Path):
    clock = Clock()
    store = make_store(tmp_path, clock)
    e = store.open(RID, 0, 4, D, torch.float32, capacity=10)
    store.append(RID, 0, 4, 0, rows(3))
    with e.path.open("ab") as f:
        f.write(b"\x01" * 10)  # a partial fourth row
    again = make_store(tmp_path, clock)
    assert again.entry(RID, 0, 4).rows == 3
    again.append(RID, 0, 4, 3, rows(1, 9))  # overwrites the torn bytes
    assert torch.equal(again.read(RID, 0, 4, 3, 4), rows(1, 9))


def test_finished_requests_are_evicted_after_the_retention_window(tmp_path: Path):
    clock = Clock()
    store = make_store(tmp_path, clock)
    store.open(RID, 0, 4, D, torch.float32, capacity=10)
    store.append(RID, 0, 4, 0, rows(2))
    store.close(RID, 0, 4)
    clock.now += 99.0
    assert store.evict_expired() == 0
    assert store.read(RID, 0, 4, 0, 2).shape == (2, D)
    clock.now += 2.0
    assert store.evict_expired() == 1
    with pytest.raises(StoreError, match="evicted after its retention window"):
        store.read(RID, 0, 4, 0, 2)
    assert disk_usage(tmp_path) == 0


def test_requests_never_finished_are_evicted_as_abandoned(tmp_path: Path):
    clock = Clock()
    store = make_store(tmp_path, clock)
    store.open(RID, 0, 4, D, torch.float32, capacity=10)
    clock.now += 51.0
    assert store.evict_expired() == 1


def test_admission_refuses_a_request_that_would_exceed_the_disk_budget(tmp_path: Path):
    clock = Clock()
    row_bytes = D * 4
    budget = 2 * (HEADER_SIZE + 100 * row_bytes)
    store = make_store(tmp_path, clock, max_bytes=budget)
    store.open(b"\x01" * 32, 0, 4, D, torch.float32, capacity=100)
    store.open(b"\x02" * 32, 0, 4, D, torch.float32, capacity=100)
    with pytest.raises(
        StoreFull, match=r"needs 6472 bytes \(100 positions × 64 \+ 72\); 12944 of 12944"
    ):
        store.open(b"\x03" * 32, 0, 4, D, torch.float32, capacity=100)
    # Once one request's window has passed, admission evicts it and makes room.
    store.close(b"\x01" * 32, 0, 4)
    clock.now += 101.0
    assert store.open(b"\x03" * 32, 0, 4, D, torch.float32, capacity=100).capacity == 100
    assert store.reserved_bytes <= budget
    assert disk_usage(tmp_path) <= budget


def test_bad_appends_and_reads_are_clear_errors(tmp_path: Path):
    store = make_store(tmp_path, Clock())
    store.open(RID, 0, 4, D, torch.float32, capacity=4)
    with pytest.raises(StoreError, match=r"rows must be \(T, 16\) torch.float32; got \(2, 15\)"):
        store.append(RID, 0, 4, 0, torch.zeros(2, 15))
    with pytest.raises(StoreError, match="appended in order: got position 1, 0 held"):
        store.append(RID, 0, 4, 1, rows(1))
    with pytest.raises(StoreError, match="exceed the 4 reserved"):
        store.append(RID, 0, 4, 0, rows(5))
    store.append(RID, 0, 4, 0, rows(2))
    with pytest.raises(StoreError, match=r"holds positions \[0, 2\)"):
        store.read(RID, 0, 4, 1, 3)
    with pytest.raises(StoreError, match="no hidden states"):
        store.read(RID, 4, 8, 0, 1)
    with pytest.raises(StoreError, match="32 bytes"):
        store.open(b"short", 0, 4, D, torch.float32, capacity=4)
    with pytest.raises(StoreError, match="already open"):
        store.open(RID, 0, 4, D, torch.float32, capacity=4)


def test_a_corrupt_file_is_dropped_at_startup_and_the_rest_kept(tmp_path: Path):
    clock = Clock()
    store = make_store(tmp_path, clock)
    store.open(RID, 0, 4, D, torch.float32, capacity=4)
    (tmp_path / ("ab" * 32 + "-0-4.vphs")).write_bytes(b"PICKLE?" + b"\x00" * 100)
    again = make_store(tmp_path, clock)
    assert list(again.entries) == [(RID, 0, 4)]


@settings(deadline=None)  # torch's first calls can take >200 ms on a busy 2-core box
@given(
    st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32]),
    st.lists(st.integers(0, 5), min_size=0, max_size=4),
)
def test_tensor_codec_round_trips_every_dtype_and_shape(dtype: torch.dtype, shape: list[int]):
    t = (
        (torch.arange(int(torch.tensor(shape).prod().item()) if shape else 1) * 3 - 7)
        .to(dtype)
        .reshape(shape)
    )
    back = decode_tensor(encode_tensor(t))
    assert back.dtype == dtype and back.shape == t.shape
    assert torch.equal(back, t)


def test_tensor_codec_refuses_malformed_and_unexpected_payloads():
    good = encode_tensor(torch.zeros(3, 4))
    with pytest.raises(TensorCodecError, match="bad tensor magic"):
        decode_tensor(b"XXXX" + good[4:])
    with pytest.raises(TensorCodecError, match="unknown dtype code 99"):
        decode_tensor(good[:4] + bytes([99]) + good[5:])
    with pytest.raises(TensorCodecError, match="cannot hold"):
        decode_tensor(good[:-1])
    with pytest.raises(TensorCodecError, match="exceeds the limit of 10"):
        decode_tensor(good, max_bytes=10)
    with pytest.raises(TensorCodecError, match="expected a torch.bfloat16 tensor"):
        decode_tensor(good, dtype=torch.bfloat16)
    with pytest.raises(TensorCodecError, match=r"expected shape \(None, 5\), got \(3, 4\)"):
        decode_tensor(good, shape=(None, 5))
    assert decode_tensor(good, dtype=torch.float32, shape=(None, 4)).shape == (3, 4)


def test_running_requests_keep_their_files_open_within_a_bound(tmp_path: Path, monkeypatch):
    """Rows and tokens are written through descriptors kept open while a request runs (opening
    the file per decoded position cost more than the write); at most MAX_OPEN_FILES stay open,
    a finished or evicted request closes its own, and a closed descriptor reopens on demand."""
    import os

    import node.dataplane.hidden_store as hs

    monkeypatch.setattr(hs, "MAX_OPEN_FILES", 3)
    clock = Clock()
    store = make_store(tmp_path, clock)
    rids = [bytes([i]) * 32 for i in range(1, 4)]
    for i, rid in enumerate(rids):
        store.open(rid, 0, 2, D, torch.float32, capacity=8)
        store.set_info(rid, 0, 2, "0x" + "11" * 20, 0, 2, [5, 6])
        store.append(rid, 0, 2, 0, rows(2, i))
        assert store.put_token(rid, 0, 2, 2, 7 + i)
    assert len(store._fds) == 3  # two per request, the oldest closed past the bound
    fds = list(store._fds.values())
    for rid in rids:  # a file whose descriptor was closed reopens
        store.append(rid, 0, 2, 2, rows(1, 9))
        assert store.put_token(rid, 0, 2, 1, 8)  # rewrites from position 1: the file is cut there
    for i, rid in enumerate(rids):
        assert torch.equal(store.read(rid, 0, 2, 0, 3), torch.cat([rows(2, i), rows(1, 9)]))
        assert store.info(rid, 0, 2).tokens == [5, 8]
    for rid in rids:
        store.close(rid, 0, 2)
    assert store._fds == {}
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    restarted = make_store(tmp_path, clock)  # what was written is on disk
    assert restarted.info(rids[2], 0, 2).tokens == [5, 8]
    clock.now += 1_000
    assert store.evict_expired() == 3 and store._fds == {}
