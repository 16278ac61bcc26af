"""Gas figures of the Veriplex contracts, measured from real receipts on a real node.

Starts anvil on a free port (or uses `--rpc-url` with `--dev-account` keys of `--mnemonic`),
deploys every contract with `contracts.deploy.deploy_all`, then measures, from transaction
receipts (intrinsic + calldata + execution gas): node registration, a stake top-up, publishing an
epoch of 100 allocation entries, settling batches of 1, 10 and 100 requests, and gas per request
in the batch of 100 (target <= 10,000). `--quick` runs the same measurements (gas does not depend
on repetitions; the run takes well under a minute).

    .venv/bin/python bench/gas.py [--quick] [--rpc-url URL]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eth_account import Account

from tests.support.chain import ETH

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contracts.apikeys import create_api_key  # noqa: E402
from contracts.batch import Pipeline, Record, Stage  # noqa: E402
from contracts.client import Chain, dev_key  # noqa: E402
from contracts.deploy import DeployParams, deploy_all  # noqa: E402
from contracts.node_registry import Hardware  # noqa: E402
from contracts.rpc import Signer  # noqa: E402
from contracts.scheduler import AllocationEntry  # noqa: E402

DEV_MNEMONIC = "test test test test test test test test test test test junk"
HW = Hardware("NVIDIA H100", 81_559, 989_000, 3_350, 100_000, "eu-west")
EPOCH_ENTRIES = 100
LAYERS = 32


def start_anvil() -> tuple[subprocess.Popen[bytes], str]:
    binary = REPO / "node_modules" / ".bin" / "anvil"
    exe = str(binary) if binary.exists() else shutil.which("anvil")
    if exe is None:
        sys.exit("anvil not found: run `npm install` (make setup) or pass --rpc-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--silent", "--hardfork", "cancun"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(200):
        try:
            httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}, timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("anvil did not start")


def fresh_signer(chain: Chain, funder: Signer, eth: int) -> Signer:
    acct = Account.create()
    chain.transfer(acct.address, eth * ETH, sender=funder)
    return Signer(acct)


def run(url: str, mnemonic: str) -> dict[str, int]:
    admin = Signer.from_key(dev_key(0, mnemonic))
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "manifest.json"
        deploy_all(
            rpc_url=url,
            private_key=dev_key(0, mnemonic),
            manifest_path=manifest,
            params=DeployParams(),
        )
        chain = Chain.connect(url, manifest, signer=admin)
    reg, models, sched, pay = (
        chain.node_registry,
        chain.model_registry,
        chain.scheduler,
        chain.payments,
    )
    figures: dict[str, int] = {}

    model_id = models.register_model(
        "bench", LAYERS, 4096, b"\x01" * 32, b"\x02" * 32, 10**9, 3 * 10**9
    )
    owners, operators = [], []
    for i in range(EPOCH_ENTRIES):
        owner = fresh_signer(chain, admin, 3)
        operator = Account.create().address
        res = reg.register(operator, f"http://gpu{i}:9000", HW, ETH, sender=owner)
        if i == 0:
            figures["gas_register"] = res.gas_used
            figures["gas_stake"] = reg.add_stake(ETH, sender=owner).gas_used
        owners.append(owner)
        operators.append(operator)

    # 100 entries: 25 pipelines of 4 stages of 8 layers.
    per = LAYERS // 4
    entries = [
        AllocationEntry(model_id, (i % 4) * per, (i % 4 + 1) * per, op)
        for i, op in enumerate(operators)
    ]
    before = chain.block_number()
    sched.publish_epoch(entries, b"\x05" * 32)
    receipt = [e for e in sched.events("EpochPublished", from_block=before + 1)]
    tx = chain.w3.eth.get_transaction_receipt(receipt[-1].tx_hash)
    figures["gas_publish_epoch_100"] = int(tx["gasUsed"])

    client = Account.create()
    chain.transfer(client.address, 100 * ETH, sender=admin)
    client_signer = Signer(client)
    gateway = fresh_signer(chain, admin, 10)
    pay.deposit(50 * ETH, sender=client_signer)
    signed = create_api_key(
        "0x" + bytes(client.key).hex(),
        gateway.address,
        40 * ETH,
        int(time.time()) + 86_400,
        1,
        chain.chain_id,
        pay.address,
    )
    key = pay.register_key(signed, sender=gateway)
    pipeline = Pipeline(
        model_id, tuple(Stage(operators[i], i * per, (i + 1) * per) for i in range(4))
    )
    seq = 0
    for n in (1, 10, 100):
        records = []
        for _ in range(n):
            seq += 1
            tin, tout = 500 + seq % 97, 100 + seq % 31
            records.append(
                Record(
                    seq, 0, 0, tin, tout, tin * 10**9 + tout * 3 * 10**9, seq.to_bytes(32, "big")
                )
            )
        settled = pay.settle_batch([key], [pipeline], records, sender=gateway)
        figures[f"gas_settle_batch_{n}"] = settled.gas_used
    figures["gas_per_request"] = figures["gas_settle_batch_100"] // 100
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="same figures; kept for the bench API")
    ap.add_argument("--rpc-url", default=None, help="use this node instead of starting anvil")
    ap.add_argument("--mnemonic", default=DEV_MNEMONIC, help="funded dev mnemonic of the node")
    args = ap.parse_args()
    proc = None
    url = args.rpc_url
    if url is None:
        proc, url = start_anvil()
    try:
        figures = run(url, args.mnemonic)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
    for name, value in figures.items():
        print(f"{name}: {value}")
    target = 10_000
    verdict = "meets" if figures["gas_per_request"] <= target else "MISSES"
    print(
        f"summary: {figures['gas_per_request']} gas per request in a batch of 100 "
        f"({verdict} the <= {target} target); epoch of {EPOCH_ENTRIES} entries "
        f"{figures['gas_publish_epoch_100']} gas"
    )


if __name__ == "__main__":
    main()
