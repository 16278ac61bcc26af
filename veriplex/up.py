"""`veriplex up`: the whole network on one machine, each part its own process.

    veriplex up [--workers N] [--stages S] [--model smollm2|tiny|PATH] [--data-dir DIR]
                [--port-base P] [--perturbed K] [--verifier-policy honest|lazy|accuse|silent]

In order: the devnet (contracts deployed; a block per transaction while setting up), the chain
settings sent with the devnet owner key (`veriplex.up_setup`: the model on the ModelRegistry if
absent, the Verification game's demo parameters — every request sampled, a committee of 2, ~10 s
phases — and a verification window to match), N workers set up exactly as an operator would (the
`veriplex wallet new` / `devnet fund` / `node register` commands, measured hardware profile), then
the same chain restarted with 1 s blocks (the game's deadlines are in blocks), the explorer, the
coordinator, the gateway, and the workers' `veriplex node serve --coordinator` processes.
Every worker registers a device memory sized to hold about 1/S of the model (see
`veriplex.up_plan`), so SmolLM2 really runs as an S-stage pipeline. The workers beyond the
pipeline's are registered last and held by the coordinator as hot standby
(`coordinator run --standby-reserve`): real capacity, verifying while idle, promoted into the
pipeline in a new epoch when a stage is evicted (slashed, jailed, unbonding or silent, or dead
as the gateway reports and the coordinator's own probe confirms: requests in flight wait for the
heal, up to the gateway's `failover_wait_s`). `up` returns once the coordinator routes a complete
pipeline whose stages accept
connections and the gateway answers `/v1/models`. Every child logs to `<data dir>/logs/`; wallet
passwords live in a 0600 file there and never reach argv or a log.
"""

from __future__ import annotations

import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from protocol.settings import Settings
from veriplex.stack import Stack, StackError, clean_env, tail, veriplex_argv
from veriplex.up_setup import (
    FUNDER_DEV_INDEX,
    GATEWAY_DEV_INDEX,
    START_TIMEOUT_S,
    WORKER_STAKE_ETH,
    UpError,
    UpOptions,
    Worker,
    cli_config,
    configure_chain,
    resolve_checkpoint,
    run_cli,
    setup_worker,
)


@dataclass
class Network:
    """A running `veriplex up`: its URLs, accounts and processes."""

    data_dir: Path
    stack: Stack
    rpc_url: str
    chain_id: int
    manifest: Path
    explorer_url: str
    coordinator_url: str
    gateway_url: str
    gateway_address: str
    checkpoint: Path
    model_id: int
    model_name: str
    password_file: Path
    workers: list[Worker] = field(default_factory=list)
    pipeline: list[Any] = field(default_factory=list)  # StageAssignment of the first route

    def cli(self, *args: str) -> str:
        """Run `veriplex --rpc-url … --manifest … ARGS` against this network; its stdout."""
        return run_cli(self.data_dir, ["--rpc-url", self.rpc_url, "--manifest", str(self.manifest),
                                       *args])

    def summary(self) -> str:
        lines = [f"  RPC          {self.rpc_url}  (chain id {self.chain_id})",
                 f"  explorer     {self.explorer_url}",
                 f"  coordinator  {self.coordinator_url}",
                 f"  gateway      {self.gateway_url}/v1  (OpenAI API; model {self.model_name!r}, "
                 f"gateway {self.gateway_address})",
                 f"  manifest     {self.manifest}",
                 f"  data dir     {self.data_dir}  (logs in {self.data_dir / 'logs'})"]
        for w in self.workers:
            tag = " PERTURBED" if w.perturbed else ""
            lines.append(f"  worker {w.index}     {w.address} {w.role} on 127.0.0.1:{w.port}{tag}")
        lines.append("  pipeline     " + " -> ".join(
            f"{s.operator[:10]}… [{s.start},{s.end})" for s in self.pipeline))
        return "\n".join(lines)

    def stop(self) -> list[str]:
        """The workers first, together (each announces its leave while the coordinator and the
        chain still run), then the other children newest first."""
        forced = self.stack.stop_together([w.child for w in self.workers if w.child is not None])
        return forced + self.stack.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port(opts: UpOptions, offset: int) -> int:
    return _free_port() if opts.port_base is None else opts.port_base + offset


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _serve_supports(option: str) -> bool:
    from node.cli.serve import serve

    return any(option in p.opts for p in serve.params)


# ----------------------------------------------------------------------------- bring up
def bring_up(opts: UpOptions, say: Callable[[str], None] = click.echo) -> Network:
    """Start everything; on failure stop what was started and raise UpError."""
    from veriplex.up_plan import PlanError, model_spec, pipeline_vram_mib

    n_pipe, n_ver = opts.roles()
    for flag, wanted in (("--perturb-weights", opts.perturbed > 0),
                         ("--verifier-policy", opts.verifier_policy is not None)):
        if wanted and not _serve_supports(flag):
            raise UpError(f"`veriplex node serve` has no {flag} option in this build (VERIFY_SPEC "
                          f"§3); cannot start workers with it")
    data = opts.data_dir.expanduser().resolve()
    opts.data_dir = data
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    cli_config(data)
    secrets_dir = data / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    password_file = secrets_dir / "wallet-password"
    if not password_file.is_file():
        password_file.touch(mode=0o600)
        password_file.write_text(secrets.token_urlsafe(24) + "\n")
    ckpt, name, weights_root, tok_hash = resolve_checkpoint(opts, say)
    spec = model_spec(ckpt, name)
    try:
        pipe_vram = pipeline_vram_mib(spec, opts.stages)
    except PlanError as exc:
        raise UpError(str(exc)) from None
    stack = Stack(data / "logs")
    t0 = time.monotonic()
    try:
        return _start_all(opts, say, stack, data, password_file, ckpt, name, spec, weights_root,
                          tok_hash, n_pipe, n_ver, pipe_vram, t0)
    except BaseException:
        stack.stop(grace_s=10)
        raise


def _start_all(opts: UpOptions, say: Callable[[str], None], stack: Stack, data: Path,
               password_file: Path, ckpt: Path, name: str, spec: Any, weights_root: bytes,
               tok_hash: bytes, n_pipe: int, n_ver: int, pipe_vram: int,
               t0: float) -> Network:
    from contracts.client import Chain, dev_key
    from contracts.rpc import Signer
    from protocol.settings import DEV_MNEMONIC

    def took() -> str:
        return f"[{time.monotonic() - t0:5.1f} s]"

    env = clean_env(data)
    rpc_port = _port(opts, 0)
    ready = r"ready at (http://\S+) \(chain id (\d+), .* manifest (.+)\)$"

    def devnet_argv(block_time: float) -> list[str]:
        return veriplex_argv("devnet", "up", "--host", "127.0.0.1", "--port", str(rpc_port),
                             "--db", str(data / "devnet.sqlite"), "--block-time", str(block_time))

    # Set-up transactions are mined at once (a block per transaction); then the same chain is
    # restarted with timed blocks, which the verification game's deadlines need.
    setup = stack.start("devnet-setup", devnet_argv(0), env)
    m = setup.wait_line(ready, 120)
    rpc_url, chain_id, manifest = m[1], int(m[2]), Path(m[3])
    say(f"{took()} devnet up at {rpc_url} (chain id {chain_id}); contracts deployed")
    model_id = configure_chain(rpc_url, manifest, DEV_MNEMONIC, name, spec.layers, spec.hidden,
                               weights_root, tok_hash, opts, say)
    # standbys get the pipeline workers' capacity (they must be able to take a stage over) and
    # register last: the coordinator's reserve is the latest registered
    workers = [Worker(i, f"owner-{i}", f"operator-{i}", _port(opts, 10 + i), pipe_vram,
                      "pipeline" if i < n_pipe else "standby", i < opts.perturbed)
               for i in range(n_pipe + n_ver)]
    say(f"{took()} setting up {len(workers)} workers as operators (wallets, funding, "
        f"registration with {WORKER_STAKE_ETH} ETH stake; {len(workers)} × {pipe_vram} MiB, "
        f"the last {n_ver} held as hot standby)")
    # One measurement for every worker: they share this machine. Measured once each, under load,
    # their figures differed, the scheduler cut the replicas differently, and a failed stage then
    # had no replacement with its exact layers.
    from node.runtime.hardware import detect

    machine = detect()
    measured = ("--gpu", machine.gpu, "--tflops", f"{max(machine.tflops, 1e-3):.6f}",
                "--mem-bw-gbps", f"{max(machine.mem_bw_gbps, 1e-3):.3f}")
    for w in workers:
        w.address = setup_worker(data, rpc_url, manifest, w, password_file, FUNDER_DEV_INDEX,
                                 measured)
    say(f"{took()} workers registered: " + ", ".join(w.address for w in workers))
    stack.retire(setup)
    devnet = stack.start("devnet", devnet_argv(opts.block_time), env)
    devnet.wait_line(ready, 120)
    say(f"{took()} devnet restarted on the same database with {opts.block_time:g} s blocks")
    root = ["--rpc-url", rpc_url, "--manifest", str(manifest)]
    gw_port = _port(opts, 3)  # known now, so the explorer links each request to its gateway receipt
    explorer = stack.start("explorer", veriplex_argv(
        *root, "explorer", "--port", str(_port(opts, 1)), "--gateway-url",
        f"http://127.0.0.1:{gw_port}"), env)

    coord_env = clean_env(data, {"VERIPLEX_COORDINATOR__TICK_S": "0.3",
                                 "VERIPLEX_COORDINATOR__REGISTRY_POLL_S": "1",
                                 # workers importing torch and loading a shard on a busy
                                 # machine stay silent a while: not evicted (nor a standby
                                 # promoted in their place) before their first heartbeat
                                 "VERIPLEX_COORDINATOR__HEARTBEAT_TIMEOUT_S": "45",
                                 # workers beat every second: a reported worker silent for 3 s
                                 # whose data port does not answer is dead, not slow
                                 "VERIPLEX_COORDINATOR__REPORT_SILENCE_S": "3"})
    coord = stack.start("coordinator", veriplex_argv(
        *root, "coordinator", "run", "--dev-account", "0", "--checkpoint", str(ckpt),
        "--model-id", str(model_id), "--port", str(_port(opts, 2)),
        "--standby-reserve", str(n_ver)), coord_env)
    coordinator_url = coord.wait_line(r"coordinator ready at (http://\S+) ", 120)[1]
    say(f"{took()} coordinator ready at {coordinator_url}")
    gw_env = clean_env(data, {"VERIPLEX_GATEWAY__BATCH_MAX_AGE_S": "2",
                              "VERIPLEX_GATEWAY__SETTLE_TICK_S": "0.5",
                              "VERIPLEX_GATEWAY__STEP_TIMEOUT_S": "20",
                              # a failed stage: report it, wait for the standby to take it over
                              "VERIPLEX_GATEWAY__FAILOVER_WAIT_S": "40"})
    gw = stack.start("gateway", veriplex_argv(
        *root, "gateway", "run", "--dev-account", str(GATEWAY_DEV_INDEX), "--checkpoint",
        str(ckpt), "--model-id", str(model_id), "--coordinator", coordinator_url, "--port",
        str(gw_port)), gw_env)

    for w in workers:
        args = [*root, "node", "serve", "--model", str(ckpt), "--coordinator", coordinator_url,
                "--model-id", str(model_id), "--heartbeat-s", "1", "--port", str(w.port),
                "--operator", w.operator, "--password-file", str(password_file),
                "--store-dir", str(data / "workers" / str(w.index) / "hidden-states"),
                "--threads", "1"]
        if w.perturbed:
            args += ["--perturb-weights", str(opts.perturb_std)]
        if opts.verifier_policy is not None:
            args += ["--verifier-policy", opts.verifier_policy]
        # each worker's own state: its verifier agent's votes and re-execution stores
        w_env = clean_env(data, {"VERIPLEX_VERIFICATION__AGENT_STATE_DIR":
                                 str(data / "workers" / str(w.index) / "verifier")})
        w.child = stack.start(f"worker-{w.index}", veriplex_argv(*args), w_env)
    gateway_url = gw.wait_line(r"gateway ready at (http://\S+) ", 120)[1]
    explorer_url = explorer.wait_line(r"explorer ready at (http://\S+) ", 120)[1]
    say(f"{took()} gateway ready at {gateway_url}; explorer at {explorer_url}")

    chain = Chain.connect(rpc_url, manifest)
    gateway_address = Signer.from_key(dev_key(GATEWAY_DEV_INDEX, DEV_MNEMONIC)).address
    net = Network(data, stack, rpc_url, chain_id, manifest, explorer_url, coordinator_url,
                  gateway_url, gateway_address, ckpt, model_id, name, password_file, workers)
    net.pipeline = wait_for_pipeline(net, chain, opts.stages, START_TIMEOUT_S)
    say(f"{took()} coordinator published epoch {chain.scheduler.epoch()}; pipeline of "
        f"{len(net.pipeline)} stages serving")
    return net


def wait_for_pipeline(net: Network, chain: Any, stages: int, timeout_s: float) -> list[Any]:
    """Until an epoch is on chain, the coordinator routes a complete pipeline of at least
    min(stages, 2) stages whose endpoints accept connections, and the gateway lists the model."""
    import httpx

    from node.coordinator import CoordinatorClient
    from protocol.messages import RouteRequest

    client = CoordinatorClient(net.coordinator_url)
    deadline = time.monotonic() + timeout_s
    last = "nothing yet"
    while time.monotonic() < deadline:
        dead = net.stack.dead()
        if dead:
            c = dead[0]
            raise UpError(f"{c.name} exited with status {c.proc.returncode}; the end of "
                          f"{c.log}:\n{tail(c.log)}")
        try:
            if chain.scheduler.epoch() > 0:
                r = client.route(RouteRequest(model_id=net.model_id, prompt_tokens=1,
                                              output_tokens=1))
                route = list(r.stages)
                if len(route) >= min(stages, 2) and all(_accepts(s.host, s.port) for s in route):
                    models = httpx.get(net.gateway_url + "/v1/models", timeout=5).json()
                    if any(m.get("id") == net.model_name for m in models.get("data", [])):
                        return route
                    last = f"gateway lists {models}"
                else:
                    last = f"route {[(s.operator, s.start, s.end) for s in route]}"
            else:
                last = "no epoch published yet"
        except Exception as exc:  # noqa: BLE001 - not ready yet; say what we saw on timeout
            last = str(exc)
        time.sleep(0.5)
    logs = "\n".join(f"--- {c.name}\n{tail(c.log, 8)}" for c in net.stack.children)
    raise UpError(f"no complete pipeline after {timeout_s:.0f} s (last: {last})\n{logs}")


# ----------------------------------------------------------------------------- command
def wait_for_signal(net: Network, say: Callable[[str], None]) -> int:
    """Block until SIGINT/SIGTERM (0) or until a child dies (1); the caller stops the stack."""
    stop = threading.Event()
    got: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        got.append(signum)
        stop.set()

    # kept after return: a second Ctrl-C while the children stop does not cut the stop short
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, handler)
    while not stop.wait(1.0):
        dead = net.stack.dead()
        if dead:
            c = dead[0]
            say(f"{c.name} exited with status {c.proc.returncode}; stopping everything. "
                f"The end of {c.log}:\n{tail(c.log)}")
            return 1
    say(f"\n{signal.Signals(got[0]).name}: stopping {len(net.stack.children)} processes …")
    return 0


@click.command("up")
@click.option("--workers", type=click.IntRange(min=1, max=32), default=4, show_default=True,
              help="Local worker nodes (pipeline workers plus verifier-only ones).")
@click.option("--stages", type=click.IntRange(min=1), default=2, show_default=True,
              help="Stages each pipeline worker's simulated memory forces the model into.")
@click.option("--verifiers", type=click.IntRange(min=0), default=None,
              help="Workers with no room for layers, left free to verify (default: "
                   "min(2, workers - stages)).")
@click.option("--model", default="smollm2", show_default=True,
              help="smollm2 (imported once into the models dir), tiny (a random test model), or a "
                   "checkpoint directory.")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where the chain, wallets, stores and logs live (default: $VERIPLEX_HOME/up).")
@click.option("--port-base", type=click.IntRange(1024, 65000), default=None,
              help="Ports P (RPC), P+1 (explorer), P+2 (coordinator), P+3 (gateway), P+10+i "
                   "(worker i); default: free ports.")
@click.option("--perturbed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Start this many pipeline workers with --perturb-weights (cheaters).")
@click.option("--perturb-std", type=click.FloatRange(min=0, min_open=True), default=0.01,
              show_default=True, help="Noise std of the perturbed workers' weights.")
@click.option("--verifier-policy", type=click.Choice(["honest", "lazy", "accuse", "silent"]),
              default=None, help="Passed to every worker's verifier agent (default: its own).")
@click.option("--block-time", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
              help="Seconds between devnet blocks.")
@click.pass_obj
def up(settings: Settings, workers: int, stages: int, verifiers: int | None, model: str,
       data_dir: Path | None, port_base: int | None, perturbed: int, perturb_std: float,
       verifier_policy: str | None, block_time: float) -> None:
    """Start the devnet, explorer, coordinator, gateway and N workers; Ctrl-C stops them all."""
    opts = UpOptions(data_dir=data_dir or settings.home / "up", models_dir=settings.models_dir,
                     model=model, workers=workers, stages=stages, verifiers=verifiers,
                     perturbed=perturbed, perturb_std=perturb_std,
                     verifier_policy=verifier_policy, port_base=port_base,
                     block_time=block_time)
    def interrupted(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # a SIGTERM while starting stops what started
    try:
        net = bring_up(opts, say=click.echo)
    except (UpError, StackError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.ClickException("interrupted while starting; everything started was stopped") from None
    code = 0
    try:
        click.secho("\nVeriplex is up:", bold=True)
        click.echo(net.summary())
        click.echo(f"\n  try: OPENAI_BASE_URL={net.gateway_url}/v1 (API key: `veriplex --rpc-url "
                   f"{net.rpc_url} client key create --account NAME --cap 0.1 --expires 1d "
                   f"--gateway {net.gateway_address}` with VERIPLEX_HOME={net.data_dir})")
        click.echo("  Ctrl-C stops everything.")
        code = wait_for_signal(net, click.echo)
    except KeyboardInterrupt:  # a signal before the handler was in place: stop all the same
        click.echo("\ninterrupted: stopping …")
    finally:
        forced = net.stop()
    for line in forced:
        click.echo(line, err=True)
    click.echo("stopped.")
    raise SystemExit(code or (1 if forced else 0))
