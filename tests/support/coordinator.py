"""Helpers of the scheduler_service tests (moved out of their conftest: fixtures stay there)."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

from eth_utils import to_checksum_address

from protocol.messages import Heartbeat, HeartbeatKind, SignedHeartbeat, sign_heartbeat
from scheduler.model import ModelSpec, NodeSpec
from scheduler.service.state import ChainNode

CHAIN_ID = 31337


REGION = "eu-west"


MODEL = ModelSpec(name="coord-test", layers=8, hidden=2048, heads=16, kv_heads=8,
                  intermediate=5632, vocab=32000, model_id=1)


VRAM_MIB = 1400


_SEQ = [0]


_SEQ_LOCK = threading.Lock()


def next_seq() -> int:
    """Increasing, and from the millisecond clock like `HeartbeatClient`'s, so both can speak
    for the same operator."""
    with _SEQ_LOCK:
        _SEQ[0] = max(_SEQ[0] + 1, time.time_ns() // 1_000_000)
        return _SEQ[0]


@dataclass(frozen=True)
class Operator:
    key: bytes
    address: str


def operator(i: int) -> Operator:
    """Deterministic operator key number `i` (never a dev account)."""
    from coincurve import PrivateKey

    from protocol.messages import address_of

    key = hashlib.sha256(f"veriplex coordinator test operator {i}".encode()).digest()
    return Operator(key, address_of(PrivateKey(key)))


def chain_node(op: Operator, port: int = 9000, vram_mib: int = VRAM_MIB,
               region: str = REGION) -> ChainNode:
    addr = to_checksum_address(op.address)
    spec = NodeSpec(id=addr, operator=addr, region=region, vram_mib=vram_mib, tflops=80.0,
                    mem_bw_gbps=900.0, net_mbps=1000.0, gpu="RTX-test")
    return ChainNode(operator=addr, owner=addr, endpoint=f"http://127.0.0.1:{port}", spec=spec)


def beat(op: Operator, now: float, chain_id: int = CHAIN_ID, seq: int | None = None,
         kind: HeartbeatKind = HeartbeatKind.BEAT, **fields: int) -> SignedHeartbeat:
    hb = Heartbeat(kind=kind, chain_id=chain_id, operator=op.address,
                   seq=next_seq() if seq is None else seq, timestamp_ms=int(now * 1000),
                   model_id=MODEL.model_id, **fields)
    return sign_heartbeat(op.key, hb)


def confirm(st, ops: list[Operator], now: float) -> None:  # type: ignore[no-untyped-def]
    """Each of `ops` that the published epoch of the `CoordinatorState` `st` assigns a range
    heartbeats that it serves that range for that epoch (what a worker does once loaded)."""
    p = st.published
    assert p is not None
    for op in ops:
        for row_op, _, a, b in p.rows:
            if row_op == to_checksum_address(op.address):
                st.heartbeat(beat(op, now, epoch=p.epoch, layer_start=a, layer_end=b), now)


def wait_for(predicate, timeout_s: float, what: str, every_s: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)
