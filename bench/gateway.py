"""Gateway overhead and throughput on a real chain (anvil) and a real 2-stage data-plane pipeline of
the tiny model, every part its own process as deployed: two `veriplex node serve` stages and one
`veriplex gateway run`; this script is the client. `gateway_added_ms` = median latency of a
non-streamed chat completion through the gateway (HTTP, key check, accounting, the stages'
signed commitments, the durable record) minus the median of the same request sent straight to the
pipeline with `PipelineClient` from this process; `gateway_added_ms_paired` = the median of the
differences of back-to-back (direct, gateway) pairs, steadier on a shared, loaded machine;
`gateway_commit_ms` = median time to collect every stage's signed commitment after a direct request
(`commit_all`, part of what the gateway adds); `gateway_cpu_ms_per_request` = CPU time of the
gateway process per request in the latency phase (independent of what else the machine runs);
`gateway_rps` = completed requests per second with many concurrent clients. Every served request
is then settled on chain. Run: `.venv/bin/python bench/gateway.py [--quick]`."""

from __future__ import annotations  # noqa: E402

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path  # noqa: E402

# bench/devnet.py would shadow the devnet package: drop this script's folder from the path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import httpx  # noqa: E402
import psutil  # noqa: E402
from coincurve import PrivateKey  # noqa: E402
from eth_utils import keccak  # noqa: E402

from contracts.apikeys import create_api_key  # noqa: E402
from contracts.client import Chain, dev_key  # noqa: E402
from contracts.deploy import DeployParams, deploy_all  # noqa: E402
from contracts.rpc import Signer  # noqa: E402
from devnet.process import running_anvil  # noqa: E402
from gateway.engine import ServedModel  # noqa: E402
from node.dataplane.client import PipelineClient  # noqa: E402
from node.dataplane.query import commit_all  # noqa: E402
from node.runtime.models.tiny import build_tiny_model  # noqa: E402
from protocol.identity import address_of_key  # noqa: E402
from protocol.messages import PipelineRequest  # noqa: E402
from protocol.settings import DEV_MNEMONIC  # noqa: E402
from tests.support.gateway import (  # noqa: E402
    CHATML,
    ETH,
    RANGES,
    GatewayProcess,
    StageProcess,
    register_operator,
    rpc,
)

MAX_TOKENS = 4
GATEWAY_ACCOUNT = 3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_lat, n_rps, conc = (20, 60, 8) if args.quick else (100, 300, 16)
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    with running_anvil(work) as anvil:
        manifest = work / "manifest.json"
        deploy_all(anvil.url, dev_key(0, DEV_MNEMONIC), manifest, DeployParams())
        admin = Chain.connect(anvil.url, manifest, signer=Signer.from_key(dev_key(0, DEV_MNEMONIC)))
        mid = admin.model_registry.register_model("tiny-bench", 8, 256, keccak(b"w"), keccak(b"t"),
                                                  10**9, 3 * 10**9)
        info = admin.model_registry.model(mid)
        model = build_tiny_model(work / "model", arch="llama", seed=0)
        (model / "chat_template.jinja").write_text(CHATML)
        gsigner = Signer.from_key(dev_key(GATEWAY_ACCOUNT, DEV_MNEMONIC))
        keys = [secrets.token_bytes(32) for _ in RANGES]
        addrs = [address_of_key(PrivateKey(k)) for k in keys]
        workers = [StageProcess(model, rng, k, addrs, gsigner.address, work / f"stage{i}")
                   for i, (rng, k) in enumerate(zip(RANGES, keys, strict=True))]
        gwp = None
        try:
            for w in workers:
                w.wait_ready()
                register_operator(anvil.url, manifest, w.address)
            stages = [w.assignment() for w in workers]
            ckey = "0x" + secrets.token_hex(32)
            csig = Signer.from_key(ckey)
            rpc(anvil.url, "anvil_setBalance", csig.address, hex(100 * ETH))
            cchain = Chain.connect(anvil.url, manifest, signer=csig)
            cchain.payments.deposit(50 * ETH)
            signed = create_api_key(ckey, gsigner.address, 40 * ETH, int(time.time()) + 86400, 1,
                                    cchain.chain_id, cchain.payments.address)
            cchain.payments.register_key(signed)
            gwp = GatewayProcess(anvil.url, manifest, model, mid, stages, GATEWAY_ACCOUNT,
                                 work / "gateway", {"batch_size": "64", "batch_max_age_s": "1"})
            gwp.wait_ready()
            served = ServedModel.load(info, model)
            body = {"model": info.name, "messages": [{"role": "user", "content": "hello"}],
                    "max_tokens": MAX_TOKENS, "temperature": 0}
            headers = {"authorization": f"Bearer {signed.token()}"}
            prompt = served.chat_ids([{"role": "user", "content": "hello"}])
            client = PipelineClient(PrivateKey(bytes(gsigner.account.key)), cchain.chain_id)
            gw_proc = psutil.Process(gwp.proc.pid)

            commit_s: list[float] = []

            async def direct() -> float:
                req = PipelineRequest(chain_id=cchain.chain_id,
                                      request_id="0x" + secrets.token_hex(32),
                                      gateway=gsigner.address, stages=stages, prompt_len=len(prompt),
                                      max_new_tokens=MAX_TOKENS, stop_ids=served.stop_ids())
                t = time.perf_counter()
                gen = await client.generate(req, prompt)
                elapsed = time.perf_counter() - t
                t = time.perf_counter()
                await commit_all(client.key, cchain.chain_id, req, len(prompt) + len(gen.tokens) - 1,
                                 [*prompt, *gen.tokens])
                commit_s.append(time.perf_counter() - t)
                return elapsed

            async def via(h: httpx.AsyncClient) -> float:
                t = time.perf_counter()
                r = await h.post(gwp.url + "/v1/chat/completions", json=body, headers=headers)
                assert r.status_code == 200, r.text
                return time.perf_counter() - t

            async def run() -> tuple[float, float, float, float, float]:
                async with httpx.AsyncClient(timeout=120) as h:
                    for _ in range(3):
                        await direct()
                        await via(h)
                    d, g = [], []
                    cpu0 = sum(gw_proc.cpu_times()[:2])
                    for _ in range(n_lat):  # interleaved so drift hits both alike
                        d.append(await direct())
                        g.append(await via(h))
                    cpu = (sum(gw_proc.cpu_times()[:2]) - cpu0) / n_lat
                    sem = asyncio.Semaphore(conc)

                    async def one() -> None:
                        async with sem:
                            await via(h)

                    t = time.perf_counter()
                    await asyncio.gather(*(one() for _ in range(n_rps)))
                    rps = n_rps / (time.perf_counter() - t)
                paired = statistics.median(b - a for a, b in zip(d, g, strict=True))
                return statistics.median(d), statistics.median(g), rps, paired, cpu

            d, g, rps, paired, cpu = asyncio.run(run())
            gwp.wait_settled(timeout_s=120)
        finally:
            if gwp is not None:
                gwp.stop()
            for w in workers:
                w.stop()
    print(f"pipeline_direct_ms: {d * 1000:.2f}")
    print(f"gateway_request_ms: {g * 1000:.2f}")
    print(f"gateway_added_ms: {(g - d) * 1000:.2f}")
    print(f"gateway_added_ms_paired: {paired * 1000:.2f}")
    print(f"gateway_cpu_ms_per_request: {cpu * 1000:.2f}")
    print(f"gateway_rps: {rps:.1f}")
    print(f"gateway_commit_ms: {statistics.median(commit_s) * 1000:.2f}")
    print(f"summary: gateway adds {(g - d) * 1000:.2f} ms per {MAX_TOKENS}-token request "
          f"(target <= 5 ms; {statistics.median(commit_s) * 1000:.2f} ms of it collecting stage "
          f"commitments) and serves {rps:.1f} req/s at concurrency {conc} on the tiny model")


if __name__ == "__main__":
    main()
