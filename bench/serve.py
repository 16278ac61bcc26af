"""Serving throughput: gateway + `node serve` stages (real processes) vs one transformers process.

Every part is its own process as deployed — anvil with the contracts, two or three `veriplex node
serve` stages of SmolLM2 (continuously batched), one `veriplex gateway run` — and this script is the
client, the official `openai` package streaming chat completions (greedy, `max_tokens` each) at
concurrency 1, 4, 16 and 64. In the same run, on the same checkpoint, dtype and torch threads,
the single-process baselines: transformers' static-batch `generate` (batch = concurrency, no early
stop) and its continuous-batching `generate_batch` where it runs on CPU; the better one is the
baseline. Each serving wave is followed at once by its baseline at the same concurrency (the
stages sit idle meanwhile), so both sides of a ratio run under the same machine load; with
`--repeat R` (default 2) the two alternate R times and each side keeps its best run (this box's
speed drifts by ±30 % from minute to minute: the same isolated stage step measured 46-68 ms).
Printed per concurrency N:

- `serve_tok_per_s_cN`: completion tokens (the gateway's usage) / wall time of the wave;
- `baseline_tok_per_s_cN`, `serve_ratio_cN` (serve ÷ best baseline);
- `ttft_p50_ms_cN`, `ttft_p99_ms_cN`: request sent → first streamed chunk;
- `itl_p50_ms_cN`: median gap between streamed chunks;
- `serve_ratio_c16_wan`: the same at c16 with every stage behind a link emulator
  (`tests/support/link.py`: 40 ms RTT, 100 Mbit/s), gateway→stage 0 and the ring alike;
- `serve_ratio_c16_s3`: c16 through three stages.

Stages: layers split so each stage reads about the same weight per step (`split`: SmolLM2 19/11
on two stages, since its LM head weighs eight layers). Threads: each stage process and the
baseline get `--threads` torch threads (default: all cores). On one 2-core box the stages share
the cores the baseline has alone, so they take turns with every thread each: `--micro-batches 1`,
the setting node/README gives for stages sharing cores (one group per stage, the default across
machines, measured here beside it: c16 0.811 vs 0.808, WAN 0.601 vs 0.645, three stages 0.551 vs
0.694 — more groups than cores oversubscribe), and OMP_WAIT_POLICY=PASSIVE, so a stage waiting
for its turn does not spin on the cores the other computes on (two stage processes taking turns,
nothing else running: 95 ms a round PASSIVE, 111 ms with libgomp's default spinning). The
baseline runs as a user would run it, with libgomp's default policy: 15-20 % faster here than
PASSIVE (runs before 2026-12-05 23:30 gave it PASSIVE too, which flattered the ratios).
Start-up overlaps (nothing is measured meanwhile): the stages and the baseline load while anvil
deploys and the client is funded. `--quick` (for development): c1 and c4 only, 16 tokens, two
stages, static baseline only. Phase times go to stderr (`# 12.3 s …`).
Development flags: `--concs 16 --configs s2,s2_wan` (which waves), `--max-tokens N`,
`--stage-threads N` and `--micro-batches N` (the stages' settings), `--py-spy PATH` (sample each
stage's and the gateway's stacks during every wave); each wave's per-process CPU use ("cores busy")
goes to stderr.
Run: `.venv/bin/python bench/serve.py [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/devnet.py would shadow the devnet package: drop this script's folder from the path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coincurve import PrivateKey  # noqa: E402
from eth_utils import keccak  # noqa: E402

from contracts.apikeys import create_api_key  # noqa: E402
from contracts.client import Chain, dev_key  # noqa: E402
from contracts.deploy import DeployParams, deploy_all  # noqa: E402
from contracts.rpc import Signer  # noqa: E402
from devnet.process import running_anvil  # noqa: E402
from protocol.identity import address_of_key  # noqa: E402
from protocol.settings import DEV_MNEMONIC  # noqa: E402
from tests.support.gateway import (  # noqa: E402
    ETH,
    SERVING,
    GatewayProcess,
    _terminate,
    _wait_line,
    register_operator,
    rpc,
)
from tests.support.link import LinkProcess  # noqa: E402

GATEWAY_ACCOUNT = 3
QUESTION = ("Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. "
            "Describe the sea, the weather and every person she meets.")

BASELINE = r"""
import sys, time, json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
model_dir, threads, dtype, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
ids = [int(t) for t in sys.argv[5].split(",")]
try_cb = sys.argv[6] == "1"
torch.set_num_threads(threads)
m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), local_files_only=True)
m.config._attn_implementation = "sdpa"
m.eval()
kw = dict(do_sample=False, min_new_tokens=n, max_new_tokens=n, pad_token_id=0)
cb_error = ""
with torch.inference_mode():
    m.generate(torch.tensor([ids]), **{**kw, "min_new_tokens": 4, "max_new_tokens": 4})
print("LOADED", flush=True)
# Loaded and warm: each stdin line asks for one concurrency, measured at once (right after the
# serving wave it is compared with, while the stages sit idle); EOF ends it.
for line in sys.stdin:
    c, out = int(line), {}
    with torch.inference_mode():
        x = torch.tensor([ids] * c)
        t = time.perf_counter()
        m.generate(x, attention_mask=torch.ones_like(x), **kw)
        out[f"static_{c}"] = c * n / (time.perf_counter() - t)
        if try_cb:
            try:
                gc = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                      eos_token_id=-1, pad_token_id=0)
                t = time.perf_counter()
                res = m.generate_batch(inputs=[list(ids) for _ in range(c)], generation_config=gc,
                                       progress_bar=False)
                got = sum(len(r.generated_tokens) for r in res.values())
                out[f"cb_{c}"] = got / (time.perf_counter() - t)
            except Exception as e:  # not every attention backend runs it on CPU
                cb_error = f"{type(e).__name__}: {str(e)[:200]}"
                try_cb = False
    if cb_error:
        out["cb_error"] = cb_error
    print("RESULT " + json.dumps(out), flush=True)
"""


def ensure_model() -> Path:
    from node.runtime.models.importer import import_model
    from protocol.settings import Settings

    s = Settings()
    d = (s.models.dir or s.home / "models") / "smollm2"
    if not (d / "config.json").is_file():
        print(f"importing SmolLM2 into {d} (once) ...", file=sys.stderr)
        import_model("smollm2", d)
    return d


def split(model: Path, k: int) -> list[tuple[int, int]]:
    """Layer ranges for `k` stages with the most even weight to read per step: a stage's cost is
    its layers' bytes plus, on the last, the LM head's (decoding here is bound by reading the
    weights; the first stage's embedding is a lookup). SmolLM2's tied 49,152 × 576 head weighs
    as much as eight of its 30 layers: an even 15/15 split leaves the last stage twice as busy
    (65 against 120 ms a step at 8 rows, one thread each), 19/11 evens it (65 / 67 ms)."""
    import itertools

    from node.runtime.models.checkpoint import Checkpoint

    spec = Checkpoint(model).spec()
    lb, n = spec.layer_bytes, spec.num_layers

    def worst(cuts: tuple[int, ...]) -> int:
        return max(sum(lb[a:b]) + (spec.head_bytes if b == n else 0)
                   for a, b in zip(cuts, cuts[1:], strict=False))

    best = min(((0, *c, n) for c in itertools.combinations(range(1, n), k - 1)), key=worst)
    return list(zip(best, best[1:], strict=False))


class Stage:
    """`veriplex node serve --layers A:B` with `threads` torch threads and a KV budget."""

    def __init__(self, model: Path, layers: tuple[int, int], key: bytes, allow: list[str],
                 gateway: str, workdir: Path, threads: int, dtype: str, kv_mib: int,
                 micro_batches: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        kf = workdir / "operator.key"
        kf.touch(mode=0o600)
        kf.write_text(key.hex())
        self.address = address_of_key(PrivateKey(key))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("VERIPLEX_") and k != "OMP_WAIT_POLICY"}
        env.update(VERIPLEX_HOME=str(workdir), PYTHONUNBUFFERED="1", VERIPLEX_MODELS__DTYPE=dtype)
        if micro_batches == 1:  # stages taking turns on shared cores: an idle stage must not spin
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        argv = [sys.executable, "-m", "veriplex.cli", "node", "serve", "--model", str(model),
                "--layers", f"{layers[0]}:{layers[1]}", "--port", "0", "--operator-key-file",
                str(kf), "--directory", "static", "--gateway", gateway, "--store-dir",
                str(workdir / "store"), "--threads", str(threads), "--kv-budget-mib", str(kv_mib),
                "--no-verify"]
        argv += ["--micro-batches", str(micro_batches)]
        for a in allow:
            argv += ["--allow", a]
        self.log = workdir / "serve.log"
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
        self.layers, self.port = layers, 0

    def wait_ready(self, timeout_s: float = 180) -> Stage:
        self.port = int(_wait_line(self.proc, self.log, SERVING, timeout_s, f"stage {self.layers}")[4])
        return self

    def assignment(self, port: int | None = None):  # type: ignore[no-untyped-def]
        from protocol.messages import StageAssignment

        return StageAssignment(operator=self.address, host="127.0.0.1", port=port or self.port,
                               start=self.layers[0], end=self.layers[1])

    def stop(self) -> None:
        _terminate(self.proc, 15)


T0 = time.perf_counter()


def phase(what: str) -> None:
    """Where the time goes (stderr): seconds since the start, then the phase just done."""
    print(f"# {time.perf_counter() - T0:6.1f} s  {what}", file=sys.stderr, flush=True)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


async def wave(url: str, token: str, model: str, c: int, max_tokens: int) -> dict[str, float]:
    """`c` concurrent streaming chat completions; throughput and latency figures of the wave."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url + "/v1", api_key=token, max_retries=0, timeout=600)
    ttfts: list[float] = []
    itls: list[float] = []
    tokens: list[int] = []

    async def one() -> None:
        t0 = time.perf_counter()
        last, first, n = None, None, 0
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=max_tokens,
            temperature=0, stream=True)
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].delta.content:
                if first is None:
                    first = now
                    ttfts.append(now - t0)
                elif last is not None:
                    itls.append(now - last)
                last = now
            if getattr(chunk, "usage", None):
                n = chunk.usage.completion_tokens
        tokens.append(n)

    t = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(c)))
    wall = time.perf_counter() - t
    await client.close()
    return {"tok_per_s": sum(tokens) / wall, "ttft_p50": pct(ttfts, 0.5), "ttft_p99": pct(ttfts, 0.99),
            "itl_p50": pct(itls, 0.5), "done": len(tokens), "tokens": sum(tokens)}


class Baselines:
    """The single-process baselines in their own process: `start()` loads transformers and the
    model (and warms it up) while the stages start; `measure(c)` then runs concurrency `c` at once,
    right after the serving wave it is compared with, while the stages sit idle. Pairing each wave
    with its own baseline keeps a ratio's two sides under the same machine load: measured minutes
    apart, the baseline alone moved 95 -> 137 tok/s at c16 on this shared box."""

    def __init__(self, model: Path, threads: int, dtype: str, n: int, try_cb: bool) -> None:
        self.args = [str(model), str(threads), dtype, str(n)]
        self.try_cb = try_cb
        self.proc: subprocess.Popen | None = None
        self.loaded = False
        self.log = Path(os.devnull)

    def start(self, prompt: list[int], log: Path) -> Baselines:
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # as a user runs it
        self.log = log  # its stderr (transformers' warnings), read back only if it fails
        with log.open("w") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", BASELINE, *self.args, ",".join(map(str, prompt)),
                 "1" if self.try_cb else "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=sink, text=True, env=env)
        return self

    def wait_loaded(self) -> None:
        """Block until the process has loaded (so its loading never overlaps a measurement)."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in [] if self.loaded else self.proc.stdout:
            if line.startswith("LOADED"):
                self.loaded = True
                break
        if not self.loaded:
            raise SystemExit(f"baseline failed: {self.errors()}")

    def errors(self) -> str:
        return self.log.read_text()[-2000:] if self.log.is_file() else ""

    def measure(self, c: int) -> dict:
        import json

        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{c}\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                return dict(json.loads(line[7:]))
        raise SystemExit(f"baseline failed: {self.errors()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=0, help="measure each wave and its baseline this "
                    "many times, alternating, and keep each side's best run (default 2, --quick 1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--max-tokens", type=int, default=0, help="answer length (default 16 with "
                    "--quick, else 64)")
    ap.add_argument("--kv-budget-mib", type=int, default=1024)
    ap.add_argument("--concs", default="", help="concurrencies of the 2-stage waves, e.g. 16 "
                    "(default: 1,4 with --quick, else 1,4,16,64)")
    ap.add_argument("--configs", default="", help="which of s2,s2_wan,s3 to run (default: s2 with "
                    "--quick, else all); s2_wan and s3 run c16 only")
    ap.add_argument("--stage-threads", type=int, default=0, help="torch threads of each stage "
                    "process (default: --threads)")
    ap.add_argument("--py-spy", default="", help="path of a py-spy binary: record each stage's "
                    "and the gateway's stacks during every wave (raw files in the work dir)")
    ap.add_argument("--micro-batches", type=int, default=-1, help="stages' --micro-batches "
                    "(default: 1 when the stages' threads together exceed the cores, so they take "
                    "turns, as node/README says; else 0, one group per stage)")
    a = ap.parse_args()
    concs = [int(c) for c in a.concs.split(",")] if a.concs else [1, 4] if a.quick else [1, 4, 16, 64]
    n = a.max_tokens or (16 if a.quick else 64)
    a.repeat = a.repeat or (1 if a.quick else 2)
    model = ensure_model()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    load0 = os.getloadavg()
    results: dict[str, dict] = {}
    cfg = __import__("json").loads((model / "config.json").read_text())
    gsigner = Signer.from_key(dev_key(GATEWAY_ACCOUNT, DEV_MNEMONIC))

    def spawn(name: str, k: int) -> list[Stage]:
        """k stage processes (static directory: they need no chain to load and listen)."""
        keys = [secrets.token_bytes(32) for _ in range(k)]
        addrs = [address_of_key(PrivateKey(x)) for x in keys]
        threads = a.stage_threads or a.threads
        mb = a.micro_batches if a.micro_batches >= 0 else int(k * threads > (os.cpu_count() or 1))
        return [Stage(model, rng, key, addrs, gsigner.address, work / f"{name}-stage{i}",
                      threads, a.dtype, a.kv_budget_mib, mb)
                for i, (rng, key) in enumerate(zip(split(model, k), keys, strict=True))]

    all_configs = [("s2", 2, None), ("s2_wan", 2, (40.0, 100.0)), ("s3", 3, None)]
    wanted = a.configs.split(",") if a.configs else ["s2"] if a.quick else [c[0] for c in all_configs]
    configs = [c for c in all_configs if c[0] in wanted]
    # The first stages load their shards while the chain is set up (start-up only: nothing is
    # measured until every part is ready and warm).
    stages_by_k: dict[int, list[Stage]] = {2: spawn("s2", 2)}
    registered: set[int] = set()
    base = Baselines(model, a.threads, a.dtype, n, try_cb=not a.quick)
    try:
        with running_anvil(work) as anvil:
            run_network(a, anvil, work, model, cfg, gsigner, configs, concs, n, stages_by_k,
                        registered, spawn, base, results)
    finally:
        base.stop()
        for ws in stages_by_k.values():
            for st in ws:
                st.stop()
    report(a, concs, n, results, load0)


def run_network(a, anvil, work: Path, model: Path, cfg: dict, gsigner: Signer, configs: list,  # type: ignore[no-untyped-def]
                concs: list[int], n: int, stages_by_k: dict[int, list[Stage]], registered: set[int],
                spawn, base: Baselines, results: dict[str, dict]) -> None:
    """Deploy, fund a client, and measure every configuration through a gateway process."""
    from gateway.engine import ServedModel

    manifest = work / "manifest.json"
    phase("anvil up")
    deploy_all(anvil.url, dev_key(0, DEV_MNEMONIC), manifest, DeployParams())
    phase("contracts deployed")
    admin = Chain.connect(anvil.url, manifest, signer=Signer.from_key(dev_key(0, DEV_MNEMONIC)))
    mid = admin.model_registry.register_model("smollm2", int(cfg["num_hidden_layers"]),
                                              int(cfg["hidden_size"]), keccak(b"w"), keccak(b"t"),
                                              10**6, 3 * 10**6)
    info = admin.model_registry.model(mid)
    served = ServedModel.load(info, model)
    prompt = served.chat_ids([{"role": "user", "content": QUESTION}])
    base.start(prompt, work / "baseline.log")  # loads while the stages do; measures between waves
    ckey = "0x" + secrets.token_hex(32)
    csig = Signer.from_key(ckey)
    rpc(anvil.url, "anvil_setBalance", csig.address, hex(1000 * ETH))
    cchain = Chain.connect(anvil.url, manifest, signer=csig)
    cchain.payments.deposit(500 * ETH)
    signed = create_api_key(ckey, gsigner.address, 400 * ETH, int(time.time()) + 86400, 1,
                            cchain.chain_id, cchain.payments.address)
    cchain.payments.register_key(signed)
    token = signed.token()
    phase("client funded, key registered")

    for name, k, wan in configs:
        if k not in stages_by_k:
            for old in stages_by_k.values():
                for s in old:
                    s.stop()
            stages_by_k.clear()
            stages_by_k[k] = spawn(name, k)
        ws = stages_by_k[k]
        if k not in registered:
            for w in ws:
                w.wait_ready()
                register_operator(anvil.url, manifest, w.address)
            registered.add(k)
            phase(f"{k} stages ready and registered")
        # the links run in a process of their own: in this one they would wait for the GIL
        # behind the client parsing its streams, and every hop would come late
        links = LinkProcess("127.0.0.1", [w.port for w in ws], rtt_ms=wan[0],
                            mbit_s=wan[1]) if wan else None
        stages = [w.assignment(links.ports[i] if links else None) for i, w in enumerate(ws)]
        gwp = GatewayProcess(anvil.url, manifest, model, mid, stages, GATEWAY_ACCOUNT,
                             work / f"gateway-{name}", {"batch_size": "64",
                                                        "batch_max_age_s": "2"})
        try:
            gwp.wait_ready(180)
            phase("gateway ready")
            if not base.loaded:
                base.wait_loaded()
                phase("baseline loaded")
            asyncio.run(wave(gwp.url, token, info.name, 2, 4))  # warm-up
            phase("warm-up wave")
            cs = concs if name == "s2" else [16]
            for c in cs:
                procs = {**{f"stage{i}": w.proc.pid for i, w in enumerate(ws)},
                         "gateway": gwp.proc.pid, "client": os.getpid()}
                spies = [subprocess.Popen([a.py_spy, "record", "--nonblocking", "--idle", "-r", "200",
                                           "-f", "raw", "-o", str(work / f"spy-{name}-c{c}-{k}.txt"),
                                           "-p", str(p)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
                         for k, p in procs.items() if k != "client"] if a.py_spy else []
                cpu0, t0 = {k: cpu_s(p) for k, p in procs.items()}, time.perf_counter()
                r = asyncio.run(wave(gwp.url, token, info.name, c, n))
                for sp in spies:
                    sp.send_signal(2)
                    sp.wait(30)
                if spies:
                    phase(f"py-spy profiles in {work}")
                wall = time.perf_counter() - t0
                # where the 2 cores went during the wave (cores busy = CPU s / wall s)
                phase(f"{name} c{c} cores busy over {wall:.1f} s: " + ", ".join(
                    f"{k} {(cpu_s(p) - cpu0[k]) / wall:.2f}" for k, p in procs.items()))
                bases = [base.measure(c)]
                for _ in range(a.repeat - 1):  # alternate, so both sides meet the same spells of load
                    again = asyncio.run(wave(gwp.url, token, info.name, c, n))
                    phase(f"{name} c{c} again: {again['tok_per_s']:.1f} tok/s")
                    r = max(r, again, key=lambda x: x["tok_per_s"])
                    bases.append(base.measure(c))
                r["baseline"] = {k: max(b[k] for b in bases) if not isinstance(bases[0][k], str)
                                 else bases[0][k] for k in bases[0]}
                results[f"{name}_c{c}"] = r
                phase(f"{name} c{c}: {r}")
        finally:
            gwp.stop()
            if links is not None:
                links.stop()


def report(a, concs: list[int], n: int, results: dict[str, dict],  # type: ignore[no-untyped-def]
           load0: tuple[float, float, float]) -> None:
    phase("baselines")
    load1 = os.getloadavg()
    for c in concs:
        if f"s2_c{c}" not in results:
            continue
        r = results[f"s2_c{c}"]
        best = max(v for k, v in r["baseline"].items() if k in (f"static_{c}", f"cb_{c}"))
        print(f"serve_tok_per_s_c{c}: {r['tok_per_s']:.2f}")
        print(f"baseline_tok_per_s_c{c}: {best:.2f}")
        print(f"serve_ratio_c{c}: {r['tok_per_s'] / best:.3f}")
        print(f"ttft_p50_ms_c{c}: {r['ttft_p50'] * 1000:.1f}")
        print(f"ttft_p99_ms_c{c}: {r['ttft_p99'] * 1000:.1f}")
        print(f"itl_p50_ms_c{c}: {r['itl_p50'] * 1000:.1f}")
        print(f"completed_c{c}: {r['done']}/{c}")
    for key, label in (("s2_wan_c16", "serve_ratio_c16_wan"), ("s3_c16", "serve_ratio_c16_s3")):
        if key in results:
            base = results[key]["baseline"]
            best = max(v for k, v in base.items() if k in ("static_16", "cb_16"))
            print(f"{label}: {results[key]['tok_per_s'] / best:.3f}")
    for c in concs:
        for k, v in sorted(results.get(f"s2_c{c}", {}).get("baseline", {}).items()):
            if k != "cb_error" or c == concs[0]:
                print(f"baseline_{k}: {v if isinstance(v, str) else f'{v:.2f}'}")
    print(f"load_avg_1m: {load0[0]:.2f} -> {load1[0]:.2f}")
    c_top = concs[-1]
    if f"s2_c{concs[-1]}" not in results:
        return
    print(f"summary: SmolLM2 {a.dtype}, {a.threads} threads/process, {n}-token answers, 2 stages: "
          + ", ".join(f"c{c} {results[f's2_c{c}']['tok_per_s']:.1f} tok/s" for c in concs)
          + f"; c{c_top} completed {results[f's2_c{c_top}']['done']}/{c_top}; machine load "
          f"{load0[0]:.1f}->{load1[0]:.1f}")


if __name__ == "__main__":
    main()
