"""Benchmark of the block explorer: indexing speed against a real devnet, and page latency over an
index holding 100,000 events.

- ``explorer_blocks_per_s``: blocks indexed per second by `Indexer.sync_once` from a real
  `veriplex devnet up` subprocess over HTTP JSON-RPC, on a chain of blocks that each carry one
  signed transfer, interleaved with empty blocks (both kinds are printed);
- ``explorer_tx_blocks_per_s``: the same over the transaction-carrying blocks only;
- ``explorer_page_p95_ms``: p95 latency of the explorer's HTML pages (home, block, tx, address,
  node, request, epoch, model, network, nodes: the highest of their p95s), fetched over HTTP from a real uvicorn,
  with ``explorer_events`` events in the index (target <= 200 ms). The 100,000-event index is
  SYNTHESIZED: rows written straight into the index tables in the shape the indexer writes them
  (settlement batches of four requests over 2-stage pipelines across 50 nodes, one request in five
  batches checked by a verification task, one task in ten convicting), because settling
  that many requests through the devnet would take far longer than the page figure needs.

``explorer_page_first_ms_{network,nodes,node}``: the first fetch of those pages, before the
explorer's per-tip cache holds them (the node page's fetches cycle over 50 nodes, so a quarter
of them are uncached anyway).

``--quick`` uses a shorter chain and fewer page fetches (still 100,000 events), and says so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from eth_account import Account
from sqlalchemy import insert
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts.client import dev_key  # noqa: E402
from contracts.manifest import Manifest  # noqa: E402
from contracts.rpc import Rpc  # noqa: E402
from devnet.explorer.app import create_app  # noqa: E402
from devnet.explorer.decode import Decoder  # noqa: E402
from devnet.explorer.indexer import Indexer, IndexerStatus, set_charged_total  # noqa: E402
from devnet.explorer.models import Block, Log, Request, Served, Tx, make_engine  # noqa: E402
from devnet.explorer.queries import topic_of  # noqa: E402
from devnet.process import running_devnet  # noqa: E402
from protocol.settings import DEV_MNEMONIC  # noqa: E402

NODES = 50
PER_BATCH = 4
CHECK_EVERY = 5


def index_speed(work: Path, tx_blocks: int, empty_blocks: int) -> tuple[float, float]:
    with running_devnet(work / "devnet") as dn:
        rpc = Rpc(dn.url, timeout_s=30)
        w3 = rpc.w3
        acct = Account.from_key(dev_key(3, DEV_MNEMONIC))
        nonce = w3.eth.get_transaction_count(acct.address)
        fee = 2 * int(w3.eth.get_block("latest")["baseFeePerGas"]) + 10**9
        to = Account.create().address
        raws = [acct.sign_transaction({"chainId": dn.chain_id, "nonce": nonce + i, "to": to,
                                       "value": i + 1, "gas": 21_000, "maxFeePerGas": fee,
                                       "maxPriorityFeePerGas": 10**9}).raw_transaction
                for i in range(tx_blocks)]
        start_tx = rpc.block_number() + 1
        last = None
        for raw in raws:
            last = w3.eth.send_raw_transaction(raw)
        w3.eth.wait_for_transaction_receipt(last, timeout=120)
        tx_end = rpc.block_number()
        reply = w3.provider.make_request("evm_mine", [{"blocks": hex(empty_blocks)}])
        assert "error" not in reply, reply
        status = IndexerStatus(rpc_url=dn.url)
        manifest = Manifest.load(dn.manifest_path)
        engine = make_engine(f"sqlite:///{work / 'speed.sqlite'}")
        ix = Indexer(rpc, engine, Decoder.load(manifest), status)
        ix.sync_once(max_blocks=start_tx)  # genesis and deployment: not timed
        t0 = time.perf_counter()
        n_tx = ix.sync_once(max_blocks=tx_end - start_tx + 1)
        t1 = time.perf_counter()
        n_all = n_tx + ix.sync_once()
        t2 = time.perf_counter()
        return n_all / (t2 - t0), n_tx / (t1 - t0)


def _h(i: int, tag: int) -> str:
    return "0x" + (tag.to_bytes(4, "big") + i.to_bytes(28, "big")).hex()


def synthesize(engine: Any, events: int, decoder: Decoder) -> int:
    """Write `events` logs (plus their blocks, txs, requests) shaped as the indexer writes them."""
    t_req = decoder.event_topic("Payments", "RequestSettled")
    t_batch = decoder.event_topic("Payments", "BatchSettled")
    t_node = decoder.event_topic("NodeRegistry", "NodeRegistered")
    t_model = decoder.event_topic("ModelRegistry", "ModelRegistered")
    ops = ["0x" + f"{i + 1:040x}" for i in range(NODES)]
    owners = ["0x" + f"{i + 1001:040x}" for i in range(NODES)]
    blocks, txs, logs, reqs, served = [], [], [], [], []
    hw = {"gpu": "NVIDIA L4", "vram_mib": 23034, "tflops_milli": 121000, "mem_bw_gbps": 300,
          "net_bw_mbps": 10000, "region": "eu"}
    for i, (o, op) in enumerate(zip(owners, ops, strict=True)):
        logs.append(dict(block_number=0, tx_hash=_h(0, 9), log_index=i, address="0x" + "aa" * 20,
                         topic0=t_node, topic1=topic_of(o), topic2=topic_of(op), topic3=None,
                         data="0x", contract="NodeRegistry", event="NodeRegistered",
                         args={"owner": o, "operator": op, "endpoint": f"http://n{i}:9000",
                               "hardware": hw, "stake": 2 * 10**18}))
    logs.append(dict(block_number=0, tx_hash=_h(0, 9), log_index=NODES, address="0x" + "bb" * 20,
                     topic0=t_model, topic1=topic_of(1), topic2=None, topic3=None, data="0x",
                     contract="ModelRegistry", event="ModelRegistered",
                     args={"model_id": 1, "name": "synthetic", "layers": 30, "hidden_size": 576,
                           "weights_root": _h(1, 7), "tokenizer_hash": _h(2, 7),
                           "price_in_wei": 10**12, "price_out_wei": 3 * 10**12}))
    t_epoch = decoder.event_topic("Scheduler", "EpochPublished")
    t_alloc = decoder.event_topic("Scheduler", "AllocationAssigned")
    logs.append(dict(block_number=0, tx_hash=_h(0, 9), log_index=len(logs), address="0x" + "dd" * 20,
                     topic0=t_epoch, topic1=topic_of(1), topic2=topic_of(owners[0]), topic3=None,
                     data="0x", contract="Scheduler", event="EpochPublished",
                     args={"epoch": 1, "publisher": owners[0], "snapshot_hash": _h(3, 7),
                           "entry_count": NODES}))
    for i, op in enumerate(ops):
        logs.append(dict(block_number=0, tx_hash=_h(0, 9), log_index=len(logs),
                         address="0x" + "dd" * 20, topic0=t_alloc, topic1=topic_of(1),
                         topic2=topic_of(op), topic3=topic_of(1), data="0x", contract="Scheduler",
                         event="AllocationAssigned",
                         args={"epoch": 1, "operator": op, "model_id": 1,
                               "layer_start": 0 if i % 2 == 0 else 15,
                               "layer_end": 15 if i % 2 == 0 else 30}))
    txs.append(dict(hash=_h(0, 9), block_number=0, tx_index=0, sender=owners[0], to=None,
                    created=None, value_wei="0", nonce=0, input="0x", status=True, gas_used=0,
                    fee_wei="0", contract=None, method=None, args=None, revert_reason=None))
    blocks.append(dict(number=0, hash=_h(0, 1), parent_hash="0x" + "00" * 32, timestamp=1_700_000_000,
                       miner="0x" + "00" * 20, gas_used=0, gas_limit=30_000_000, tx_count=1))
    t_open = decoder.event_topic("Verification", "TaskOpened")
    t_final = decoder.event_topic("Verification", "TaskFinalized")
    per_batch = PER_BATCH + 1 + 2 / CHECK_EVERY  # every CHECK_EVERY-th batch: a task, opened and closed
    n_batches = int((events - len(logs)) // per_batch)
    assert n_batches > 0, f"--events must exceed {len(logs)}"
    for b in range(1, n_batches + 1):
        th = _h(b, 2)
        blocks.append(dict(number=b, hash=_h(b, 1), parent_hash=_h(b - 1, 1),
                           timestamp=1_700_000_000 + b, miner="0x" + "00" * 20, gas_used=300_000,
                           gas_limit=30_000_000, tx_count=1))
        txs.append(dict(hash=th, block_number=b, tx_index=0, sender=owners[0], to="0x" + "cc" * 20,
                        created=None, value_wei="0", nonce=b, input="0x85acf34e", status=True,
                        gas_used=300_000, fee_wei="1", contract="Payments", method="settle_batch",
                        args={}, revert_reason=None))
        stages = [{"operator": ops[b % NODES], "layer_start": 0, "layer_end": 15},
                  {"operator": ops[(b + 1) % NODES], "layer_start": 15, "layer_end": 30}]
        pipe = {"model_id": 1, "stages": stages}
        for k in range(PER_BATCH):
            rid = _h(b * PER_BATCH + k, 3)
            args = {"batch_id": b, "request_id": rid, "key_hash": _h(k, 4), "pipeline_index": 0,
                    "tokens_in": 100, "tokens_out": 50, "charge": 250 * 10**12,
                    "commitment_root": _h(b * PER_BATCH + k, 5)}
            logs.append(dict(block_number=b, tx_hash=th, log_index=k, address="0x" + "cc" * 20,
                             topic0=t_req, topic1=topic_of(b), topic2=rid, topic3=_h(k, 4),
                             data="0x", contract="Payments", event="RequestSettled", args=args))
            reqs.append(dict(request_id=rid, block_number=b, tx_hash=th, batch_id=b,
                             payments="0x" + "cc" * 20,
                             gateway=owners[0], key_hash=_h(k, 4), model_id=1, tokens_in=100,
                             tokens_out=50, charge_wei=str(250 * 10**12),
                             commitment_root=args["commitment_root"], pipeline=pipe))
            served += [dict(block_number=b, operator=s["operator"], request_id=rid,
                            layer_start=s["layer_start"], layer_end=s["layer_end"]) for s in stages]
        if b % CHECK_EVERY == 0:  # its first request checked: passed, or fraud now and then
            rid, task = _h(b * PER_BATCH, 3), b // CHECK_EVERY
            common = dict(block_number=b, tx_hash=th, address="0x" + "ee" * 20,
                          topic1=topic_of(task), topic2=topic_of(b), topic3=rid, data="0x",
                          contract="Verification")
            logs.append(dict(common, log_index=PER_BATCH + 1, topic0=t_open, event="TaskOpened",
                             args={"task_id": task, "batch_id": b, "request_id": rid, "stage": 0,
                                   "stage_operator": stages[0]["operator"], "layer_start": 0,
                                   "layer_end": 15, "seed": _h(b, 8), "opener": owners[1],
                                   "stage_commit": {"root": _h(b, 10), "positions": 150,
                                                    "hidden_size": 576, "n_tokens": 50}}))
            logs.append(dict(common, log_index=PER_BATCH + 2, topic0=t_final,
                             event="TaskFinalized",
                             args={"task_id": task, "batch_id": b, "request_id": rid,
                                   "status": 4 if task % 10 == 0 else 3, "round": 0,
                                   "passes": 2, "fails": 0}))
        logs.append(dict(block_number=b, tx_hash=th, log_index=PER_BATCH, address="0x" + "cc" * 20,
                         topic0=t_batch, topic1=topic_of(b), topic2=topic_of(owners[0]), topic3=None,
                         data="0x", contract="Payments", event="BatchSettled",
                         args={"batch_id": b, "gateway": owners[0], "root": _h(b, 6),
                               "record_count": PER_BATCH, "total_charge": PER_BATCH * 250 * 10**12,
                               "release_block": b + 10, "keys": [], "pipelines": [pipe]}))
    with Session(engine) as s:
        for model, rows in ((Block, blocks), (Tx, txs), (Log, logs), (Request, reqs),
                            (Served, served)):
            for i in range(0, len(rows), 20_000):
                s.execute(insert(model), rows[i:i + 20_000])
        set_charged_total(s, sum(int(r["charge_wei"]) for r in reqs))
        s.commit()
    return len(logs), n_batches


def page_latency(work: Path, events: int,
                 fetches: int) -> tuple[int, dict[str, float], dict[str, float]]:
    engine = make_engine(f"sqlite:///{work / 'pages.sqlite'}")
    n_events, last_block = synthesize(engine, events, Decoder.load(None))
    status = IndexerStatus(rpc_url="(synthetic index: no RPC)")
    server = uvicorn.Server(uvicorn.Config(create_app(engine, status, None), host="127.0.0.1",
                                           port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    paths = {"home": lambda i: "/",
             "block": lambda i: f"/block/{1 + i * 7919 % last_block}",
             "tx": lambda i: f"/tx/{_h(1 + i * 7919 % last_block, 2)}",
             "address": lambda i: f"/address/0x{(i % NODES) + 1:040x}",
             "node": lambda i: f"/node/0x{(i % NODES) + 1:040x}",
             "request": lambda i: f"/request/{_h(PER_BATCH + i * 7919 % (last_block * PER_BATCH), 3)}",
             "epoch": lambda i: "/epoch/1",
             "network": lambda i: "/network",
             "nodes": lambda i: "/nodes",
             "model": lambda i: "/model/1"}
    p95: dict[str, float] = {}
    first: dict[str, float] = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        for name, path in paths.items():
            times = []
            for i in range(fetches):
                t = time.perf_counter()
                r = client.get(path(i))
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, (path(i), r.status_code)
            p95[name] = statistics.quantiles(times, n=20)[18]
            first[name] = times[0]  # before the tip cache holds it (network, nodes, node)
    server.should_exit = True
    return n_events, p95, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter chain, fewer fetches (< 1 min)")
    ap.add_argument("--events", type=int, default=100_000)
    args = ap.parse_args()
    tx_blocks, empty, fetches = (150, 300, 30) if args.quick else (1_000, 2_000, 200)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        all_bps, tx_bps = index_speed(work, tx_blocks, empty)
        n_events, p95, first = page_latency(work, args.events, fetches)
    worst = max(p95.values())
    print(f"explorer_blocks_per_s: {all_bps:.0f}")
    print(f"explorer_tx_blocks_per_s: {tx_bps:.0f}")
    print(f"explorer_events: {n_events}")
    for name, v in p95.items():
        print(f"explorer_page_p95_ms_{name}: {v:.1f}")
    for name in ("network", "nodes", "node"):  # cached per indexed tip: the uncached cost
        print(f"explorer_page_first_ms_{name}: {first[name]:.1f}")
    print(f"explorer_page_p95_ms: {worst:.1f}")
    print(f"summary: indexed {all_bps:.0f} blocks/s ({tx_blocks} one-tx + {empty} empty blocks, "
          f"real devnet); page p95 {worst:.1f} ms over {n_events} synthesized events, {fetches} "
          f"fetches/page (target <= 200 ms: {'met' if worst <= 200 else 'MISSED'})"
          f"{' [quick]' if args.quick else ''}")


if __name__ == "__main__":
    main()
