"""Gas figures of the Veriplex contracts, measured from real receipts on a real node.

Starts anvil on a free port (or uses `--rpc-url` with `--dev-account` keys of `--mnemonic`),
deploys every contract with `contracts.deploy.deploy_all`, then measures, from transaction
receipts (intrinsic + calldata + execution gas): node registration, a stake top-up, publishing an
epoch of 100 allocation entries, settling batches of 1, 10 and 100 requests, and gas per request
in the batch of 100 (target <= 10,000); then one sampled request through the verification game:
`open_task` with its on-chain stage-signature and shape checks, and a full challenge (three
members commit, reveal, the votes close, the stage and each member open every leaf, finalize);
and stage-level blame (`blame_input`: a stage proves its input stage signed other rows).
`--quick` runs the same measurements (gas does not depend on repetitions).

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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contracts.apikeys import create_api_key  # noqa: E402
from contracts.batch import Pipeline, Record, Stage  # noqa: E402
from contracts.client import Chain, dev_key  # noqa: E402
from contracts.deploy import DeployParams, deploy_all  # noqa: E402
from contracts.node_registry import Hardware  # noqa: E402
from contracts.rpc import Signer  # noqa: E402
from contracts.scheduler import AllocationEntry  # noqa: E402
from contracts.verification import VerificationParams  # noqa: E402
from tests.support.chain import ETH  # noqa: E402

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
            # every request sampled, so the one the challenge needs is (settlement gas does not
            # depend on the sample rate)
            params=DeployParams(verification=VerificationParams(
                sample_bps=10_000, commit_blocks=20, reveal_blocks=20, open_blocks=20)),
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
    owners, operators, operator_keys = [], [], {}
    for i in range(EPOCH_ENTRIES):
        owner = fresh_signer(chain, admin, 3)
        op_acct = Account.create()
        operator = op_acct.address
        operator_keys[operator] = op_acct
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
    pay.bond_gateway(int(pay.params()["min_gateway_bond"]), sender=gateway)
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
    figures.update(challenge(chain, admin, gateway, key, operators, operator_keys, seq + 1))
    return figures


def challenge(chain: Chain, admin: Signer, gateway: Signer, key: bytes, operators: list[str],
              operator_keys: dict, seq: int) -> dict[str, int]:
    """One request of a small model (6 tokens, hidden 80) through the game, every step honest."""
    import os

    import numpy as np
    from coincurve import PrivateKey

    from contracts.batch import leaves_of, merkle_proof
    from contracts.verification import (
        Opening,
        StageCommit,
        VerdictKind,
        attestation_digest,
        commitment_root,
    )
    from protocol.identity import sign_digest
    from verifier.encoding import Domain
    from verifier.merkle import StageCommitment

    ver, pay = chain.verification, chain.payments
    small = chain.model_registry.register_model("bench-small", 2, 80, b"\x03" * 32, b"\x04" * 32,
                                               10**9, 3 * 10**9)
    pipe = Pipeline(small, (Stage(operators[0], 0, 1), Stage(operators[1], 1, 2)))
    rid = pay.request_id(gateway.address, seq)
    rng = np.random.default_rng(3)
    rows = [rng.standard_normal((5, 80)).astype(np.float32) for _ in range(2)]
    toks = [int(t) for t in rng.integers(0, 1000, 6)]
    commits = [StageCommitment.build(Domain(chain.chain_id, rid, j), rows[j], toks) for j in range(2)]
    scs = [StageCommit(c.root, 5, 80, 6) for c in commits]
    record = Record(seq, 0, 0, 4, 2, 4 * 10**9 + 6 * 10**9, commitment_root(scs))
    settled = pay.settle_batch([key], [pipe], [record], sender=gateway)
    leaf = leaves_of(chain.chain_id, pay.address, gateway.address, [key], [record])[0]
    chain.w3.provider.make_request("evm_mine", [])
    chain.w3.provider.make_request("evm_mine", [])
    stage = int(ver.opener()._view("stage_of", settled.batch_id, rid, 2))
    op_key = PrivateKey(bytes(operator_keys[operators[stage]].key))
    sig = sign_digest(op_key, attestation_digest(chain.chain_id, rid, stage, scs[stage]))
    tid, tx = ver.open_task(settled.batch_id, leaf, merkle_proof([leaf.hash()], 0), [pipe], scs,
                            sig, sender=gateway)
    out = {"gas_open_task": tx.gas_used}
    members = ver.committee(tid)
    total = 0
    salts = {}
    signers = {}
    for op in members:
        chain.transfer(op, 10**18, sender=admin)
        signers[op] = Signer(operator_keys[op])
        salts[op] = os.urandom(32)
        total += ver.commit_verdict(tid, VerdictKind.PASS, commits[stage].root, salts[op],
                                    sender=signers[op]).gas_used
    for op in members:
        total += ver.reveal_verdict(tid, VerdictKind.PASS, commits[stage].root, salts[op],
                                    sender=signers[op]).gas_used
    total += ver.close_votes(tid, sender=admin).gas_used
    for _ in range(2):
        chain.w3.provider.make_request("evm_mine", [])
    spots = ver.spot_checks(tid)
    openings = [Opening.from_chunk(commits[stage].open_chunk(p, k)) for p, k in spots]
    for party in [ver.task(tid).stage_operator, *members]:
        total += ver.open_chunks(tid, party, openings, sender=admin).gas_used
    fin = ver.finalize(tid, sender=admin)
    total += fin.gas_used
    out["gas_finalize"] = fin.gas_used
    out["gas_challenge_total"] = total
    # Stage-level blame: a later record whose task checks stage 1, where stage 0 had signed a
    # commitment to other rows than it settled (what stage 1 kept at COMMIT).
    for extra in range(1, 40):
        rid = pay.request_id(gateway.address, seq + extra)
        commits = [StageCommitment.build(Domain(chain.chain_id, rid, j), rows[j], toks)
                   for j in range(2)]
        scs = [StageCommit(c.root, 5, 80, 6) for c in commits]
        record = Record(seq + extra, 0, 0, 4, 2, 4 * 10**9 + 6 * 10**9, commitment_root(scs))
        settled = pay.settle_batch([key], [pipe], [record], sender=gateway)
        chain.w3.provider.make_request("evm_mine", [])
        chain.w3.provider.make_request("evm_mine", [])
        if int(ver.opener()._view("stage_of", settled.batch_id, rid, 2)) == 1:
            break
    leaf = leaves_of(chain.chain_id, pay.address, gateway.address, [key], [record])[0]
    sig1 = sign_digest(PrivateKey(bytes(operator_keys[operators[1]].key)),
                       attestation_digest(chain.chain_id, rid, 1, scs[1]))
    tid, _ = ver.open_task(settled.batch_id, leaf, merkle_proof([leaf.hash()], 0), [pipe], scs,
                           sig1, sender=gateway)
    sent = StageCommitment.build(Domain(chain.chain_id, rid, 0), rows[0] + np.float32(0.25), toks)
    alt = StageCommit(sent.root, 5, 80, 6)
    sig0 = sign_digest(PrivateKey(bytes(operator_keys[operators[0]].key)),
                       attestation_digest(chain.chain_id, rid, 0, alt))
    out["gas_blame_input"] = ver.blame_input(tid, alt, sig0, sender=admin).gas_used
    return out


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
