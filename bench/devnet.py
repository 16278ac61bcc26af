"""Benchmark of the embedded devnet: signed transactions per second and eth_getLogs latency.

Starts a real `veriplex devnet up` subprocess (fresh database in a temporary directory) and talks
to it over HTTP like any client:

- ``devnet_tx_per_s_sequential``: one connection, for each pre-signed transfer
  ``eth_sendRawTransaction`` then ``eth_getTransactionReceipt`` (instant mining: a block per tx);
- ``devnet_tx_per_s_pipelined``: the same work over 8 concurrent connections;
- ``devnet_tx_per_s``: the lower of the two (the headline figure, target >= 150);
- ``devnet_cpu_ms_per_tx``: CPU time the devnet process spent per sequential transaction (send +
  receipt requests included): the figure that does not depend on what else the machine runs;
  1000 / it is the node's capacity in tx/s on one free core;
- ``devnet_getlogs_ms``: median ``eth_getLogs`` for one address + topic0 over the whole chain of
  10,000 blocks (one log-emitting transaction per block, 50 emitters; the query matches every
  50th block), target <= 50.

Signing happens before the clock starts: the figures are the node's, not the client's.
``--quick`` uses fewer transactions and a 1,000-block chain, and says so.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from eth_account import Account
from eth_utils import keccak, to_checksum_address

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devnet.accounts import dev_accounts  # noqa: E402
from devnet.process import running_devnet  # noqa: E402
from protocol.settings import DEV_MNEMONIC  # noqa: E402

EMITTERS = 50
THREADS = 8


def emitter_initcode(topic0: bytes) -> bytes:
    """Runtime: LOG2(topic0, calldata word 0) and stop; init code returns it."""
    runtime = bytes.fromhex("600035") + b"\x7f" + topic0 + bytes.fromhex("60006000a200")
    init = bytes([0x60, len(runtime), 0x60, 12, 0x60, 0x00, 0x39, 0x60, len(runtime), 0x60, 0x00, 0xF3])
    return init + runtime


class Client:
    """A lean keep-alive JSON-RPC client (http.client): the benchmark measures the node, so the
    client should cost as little CPU as possible on a small machine."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self._id = 0

    def _post(self, body: object) -> object:
        self.conn.request("POST", "/", body=json.dumps(body), headers={"Content-Type": "application/json"})
        return json.loads(self.conn.getresponse().read())

    def call(self, method: str, *params: object) -> object:
        self._id += 1
        r = self._post({"jsonrpc": "2.0", "id": self._id, "method": method, "params": list(params)})
        if "error" in r:  # type: ignore[operator]
            raise RuntimeError(f"{method}: {r['error']}")  # type: ignore[index]
        return r["result"]  # type: ignore[index]

    def batch(self, calls: list[tuple[str, list[object]]]) -> list[object]:
        body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
        out = sorted(self._post(body), key=lambda r: r["id"])  # type: ignore[arg-type]
        errors = [r["error"] for r in out if "error" in r]
        if errors:
            raise RuntimeError(f"batch: {errors[0]}")
        return [r["result"] for r in out]


def sign_transfers(key: str, start_nonce: int, n: int, chain_id: int) -> list[str]:
    to = "0x" + "42" * 20
    return ["0x" + bytes(Account.sign_transaction(
        {"chainId": chain_id, "nonce": start_nonce + i, "to": to, "value": 1, "gas": 21_000,
         "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 1, "type": 2}, key).raw_transaction).hex()
        for i in range(n)]


def send_and_wait(client: Client, raws: list[str]) -> None:
    for raw in raws:
        h = client.call("eth_sendRawTransaction", raw)
        receipt = client.call("eth_getTransactionReceipt", h)
        if not receipt or receipt["status"] != "0x1":
            raise RuntimeError(f"transaction {h} has no successful receipt: {receipt}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_sequential(url: str, key: str, n: int, chain_id: int, pid: int) -> tuple[float, float]:
    """(transactions per second, devnet CPU milliseconds per transaction)."""
    client = Client(url)
    nonce = int(client.call("eth_getTransactionCount", Account.from_key(key).address, "pending"), 16)
    raws = sign_transfers(key, nonce, n, chain_id)
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    send_and_wait(client, raws)
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    return n / elapsed, cpu / n * 1000


def bench_pipelined(url: str, keys: list[str], n: int, chain_id: int) -> float:
    per = n // len(keys)
    work = []
    for key in keys:
        c = Client(url)
        nonce = int(c.call("eth_getTransactionCount", Account.from_key(key).address, "pending"), 16)
        work.append((c, sign_transfers(key, nonce, per, chain_id)))
    errors: list[BaseException] = []

    def run(c: Client, raws: list[str]) -> None:
        try:
            send_and_wait(c, raws)
        except BaseException as exc:  # reported after join
            errors.append(exc)

    threads = [threading.Thread(target=run, args=w) for w in work]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return per * len(keys) / elapsed


def build_log_chain(url: str, key: str, blocks: int, chain_id: int) -> tuple[str, str, int]:
    """Deploy emitters, then one emitting tx per block until the chain has `blocks` blocks."""
    client = Client(url)
    sender = Account.from_key(key).address
    nonce = int(client.call("eth_getTransactionCount", sender, "pending"), 16)
    topics = [keccak(f"Bench{i}(uint256)".encode()) for i in range(EMITTERS)]
    deploys = ["0x" + bytes(Account.sign_transaction(
        {"chainId": chain_id, "nonce": nonce + i, "data": emitter_initcode(t), "gas": 100_000,
         "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 1, "type": 2}, key).raw_transaction).hex()
        for i, t in enumerate(topics)]
    hashes = client.batch([("eth_sendRawTransaction", [r]) for r in deploys])
    receipts = client.batch([("eth_getTransactionReceipt", [h]) for h in hashes])
    emitters = [to_checksum_address(r["contractAddress"]) for r in receipts]  # type: ignore[index]
    nonce += EMITTERS
    head = int(client.call("eth_blockNumber"), 16)  # type: ignore[arg-type]
    remaining = blocks - head
    batch = 250
    i = 0
    while i < remaining:
        k = min(batch, remaining - i)
        raws = ["0x" + bytes(Account.sign_transaction(
            {"chainId": chain_id, "nonce": nonce + i + j, "to": emitters[(i + j) % EMITTERS],
             "data": (i + j).to_bytes(32, "big"), "gas": 30_000, "maxFeePerGas": 10**10,
             "maxPriorityFeePerGas": 1, "type": 2}, key).raw_transaction).hex() for j in range(k)]
        client.batch([("eth_sendRawTransaction", [r]) for r in raws])
        i += k
    return emitters[7], "0x" + topics[7].hex(), int(client.call("eth_blockNumber"), 16)  # type: ignore[arg-type]


def bench_getlogs(url: str, address: str, topic: str, repeats: int) -> tuple[float, int]:
    client = Client(url)
    flt = {"fromBlock": "0x0", "toBlock": "latest", "address": address, "topics": [topic]}
    matched = len(client.call("eth_getLogs", flt))  # type: ignore[arg-type]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        client.call("eth_getLogs", flt)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), matched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer transactions, 1,000-block chain")
    args = ap.parse_args()
    n_tx = 300 if args.quick else 2_000
    n_blocks = 1_000 if args.quick else 10_000
    accounts = dev_accounts(DEV_MNEMONIC, 10)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, running_devnet(Path(tmp), deploy=False) as dn:
        seq, cpu_ms = bench_sequential(dn.url, accounts[0].private_key, n_tx, dn.chain_id, dn.pid)
        pipe = bench_pipelined(dn.url, [a.private_key for a in accounts[1:1 + THREADS]], n_tx,
                               dn.chain_id)
        t0 = time.perf_counter()
        address, topic, head = build_log_chain(dn.url, accounts[9].private_key, n_blocks, dn.chain_id)
        build_s = time.perf_counter() - t0
        logs_ms, matched = bench_getlogs(dn.url, address, topic, 30)
    print(f"devnet_tx_per_s_sequential: {seq:.1f}")
    print(f"devnet_tx_per_s_pipelined: {pipe:.1f}")
    print(f"devnet_tx_per_s: {min(seq, pipe):.1f}")
    print(f"devnet_getlogs_ms: {logs_ms:.2f}")
    print(f"devnet_cpu_ms_per_tx: {cpu_ms:.2f}")
    print(f"summary: {n_tx} signed transfers each way (send+receipt, a block per tx, {THREADS} "
          f"connections pipelined); eth_getLogs median of 30 over a {head + 1}-block chain "
          f"matching {matched} logs{' (--quick: fewer blocks than the 10,000 target)' if args.quick else ''}; "
          f"chain built in {build_s:.0f}s; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
