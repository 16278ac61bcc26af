"""`veriplex node serve`: run one stage of the data plane (a layer range of a local checkpoint).

    veriplex node serve --model ~/.veriplex/models/smollm2 --layers 0:10 --port 7070 \
        --operator op1 --password-file pw.txt            # operator key from the wallet
    veriplex node serve ... --operator-key-file key.hex  # or a raw hex key file (mode 0600)
    veriplex node serve --model DIR --coordinator http://coord:8400 ...  # follow assignments

With `--coordinator` (instead of `--layers`) the worker heartbeats with its operator key and serves
whatever range the latest epoch assigns it (see `node/follower.py`), printing one line per change.

Operators and gateways are checked against the chain's NodeRegistry (`--directory chain`, the
default) or against a fixed allow-list (`--allow ADDR` per operator, `--gateway ADDR`). When the
server is listening it prints one line `serving layers [a, b) of DIR on HOST:PORT as ADDRESS` and
then serves until SIGINT / SIGTERM. The key never appears in argv, output or logs.

With `--directory chain` the node also runs its verifier agent (node/verification/): it follows
the Verification contract with the operator key, re-executes the stages it is drawn to check, and
opens its own stage's chunks when it is checked (`--no-verify` turns it off; `--verifier-policy`
injects faults for tests and demos). `--perturb-weights STD` makes a deliberately cheating worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import click


def parse_layers(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise click.BadParameter(f"{text!r} must be START:END, e.g. 0:10", param_hint="--layers") from None
    if not 0 <= a < b:
        raise click.BadParameter(f"layer range [{a}, {b}) is empty or negative", param_hint="--layers")
    return a, b


def load_key_file(path: Path) -> bytes:
    """A raw hex private key from a file only its owner can read."""
    from node.wallet.keystore import parse_private_key
    from node.wallet.passwords import read_secret_file

    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise click.UsageError(f"operator key file {path} is readable by others (mode "
                               f"{stat.S_IMODE(mode):o}); chmod 600 it")
    return parse_private_key(read_secret_file(path, "operator key"))


def build_server(model: Path, layers: tuple[int, int], key: bytes, directory: Any, chain_id: int,
                 store_dir: Path, settings: Any, host: str, port: int, kv_budget_bytes: int,
                 perturb_std: float = 0.0):
    """Load the shard and wire executor, hidden-state store and server (not started)."""
    from coincurve import PrivateKey

    from node.dataplane import StageServer
    from node.executor import StageExecutor
    from node.hidden_store import HiddenStateStore
    from node.shard import load_shard, resolve_device_dtype

    device, dtype = resolve_device_dtype(settings.models.device, settings.models.dtype)
    shard = load_shard(model, layers[0], layers[1], device=device, dtype=dtype)
    if perturb_std > 0:
        from node.verification.perturb import perturb_shard

        n = perturb_shard(shard, perturb_std)
        click.echo(f"WARNING: added N(0, {perturb_std}^2) noise to all {n} weight tensors of layers "
                   f"[{layers[0]}, {layers[1]}): this worker serves a perturbed model and will be slashed",
                   err=True)
    m, dp = settings.models, settings.dataplane
    store = HiddenStateStore(store_dir, m.hidden_store_max_bytes, m.hidden_retention_s, m.hidden_max_open_s)
    return StageServer(StageExecutor(shard), store, PrivateKey(key), directory, chain_id, host=host,
                       port=port, kv_budget_bytes=kv_budget_bytes, max_frame_bytes=dp.max_frame_bytes,
                       session_timeout_s=dp.session_timeout_s)


def _say(text: str) -> None:
    click.echo(text)
    sys.stdout.flush()


async def _serve(server, make_agent=None) -> None:  # type: ignore[no-untyped-def]
    try:
        await server.start()
    except OSError as e:  # port in use, address not local
        raise click.ClickException(f"cannot listen on {server.host}:{server.port}: "
                                   f"{e.strerror or e}") from None
    shard = server.executor.shard
    click.echo(f"serving layers [{shard.start}, {shard.end}) of {shard.checkpoint} on "
               f"{server.host}:{server.port} as {server.address}")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    agent = None
    if make_agent is not None:
        agent = loop.create_task(make_agent(lambda: [server]).run(stop))
    await stop.wait()
    if agent is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(agent, 10)
    await server.stop()


async def _follow(build, client, every_s: float, port: int, make_agent=None) -> None:  # type: ignore[no-untyped-def]
    from node.follower import Follower

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    follower = Follower(build, port, _say)
    agent = None
    if make_agent is not None:
        agent = loop.create_task(
            make_agent(lambda: [follower.server] if follower.server is not None else []).run(stop))
    await follower.follow(client, every_s, stop)
    if agent is not None:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(agent, 10)


def agent_state_dir(settings: Any, key: bytes) -> Path:
    """The verifier agent's state directory: `verification.agent_state_dir` if set, else
    `<home>/verifier/<operator address>` — one per operator, so several nodes may share a home."""
    from coincurve import PrivateKey

    from node.protocol import address_of_key

    v = settings.verification
    if v.agent_state_dir is not None:
        return Path(v.agent_state_dir)
    return Path(settings.home) / "verifier" / address_of_key(PrivateKey(key)).lower()


def make_agent_factory(settings: Any, chain: Any, model: Path, key: bytes, directory: Any,
                       chain_id: int, policy: str, budget: int,
                       store_of=None):  # type: ignore[no-untyped-def]
    """`own servers -> VerifierAgent`: the node's verifier, with in-process servers for other ranges.
    `store_of(layers)` is the hidden-store directory this node used for a range (openings of a
    range it no longer serves)."""
    from node.verification.agent import AgentConfig, VerifierAgent
    from node.verification.policy import Policy
    from node.verification.rerun import ServerPool
    from node.verification.state import AgentState

    v = settings.verification
    state_dir = agent_state_dir(settings, key)

    def build(layers: tuple[int, int]) -> Any:
        a, b = layers
        return build_server(model, layers, key, directory, chain_id, state_dir / f"rerun-{a}-{b}",
                            settings, "127.0.0.1", 0, budget)

    def make(own):  # type: ignore[no-untyped-def]
        cfg = AgentConfig(Policy(policy), v.agent_poll_s, v.agent_job_timeout_s, v.agent_start_block,
                          catchup_blocks=v.agent_catchup_blocks)
        from contracts.rpc import Signer

        signed = chain.with_signer(Signer.from_key(key))
        return VerifierAgent(signed, key, ServerPool(own, build), AgentState(state_dir), cfg, say=_say,
                             stores=stores)

    def stores(layers: tuple[int, int]) -> Any:
        from node.hidden_store import HiddenStateStore

        path = store_of(layers) if store_of is not None else None
        if path is None or not Path(path).is_dir():
            return None
        m = settings.models
        return HiddenStateStore(path, m.hidden_store_max_bytes, m.hidden_retention_s, m.hidden_max_open_s)

    return make


@click.command("serve")
@click.option("--model", "model", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="Checkpoint directory.")
@click.option("--layers", default=None, help="Layer range START:END this stage serves.")
@click.option("--coordinator", default=None,
              help="Coordinator URL: follow its assignments instead of --layers.")
@click.option("--model-id", type=click.IntRange(min=0), default=0,
              help="Model id reported in heartbeats (with --coordinator).")
@click.option("--heartbeat-s", type=click.FloatRange(min=0.05), default=2.0,
              help="Seconds between heartbeats (with --coordinator).")
@click.option("--host", default=None, help="Interface to bind (default: settings dataplane.host).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="TCP port (0: any free port; default: settings dataplane.port).")
@click.option("--operator", default=None, help="Wallet account holding the operator key.")
@click.option("--password-file", type=click.Path(path_type=Path), default=None,
              help="File whose first line is the wallet password (default: prompt).")
@click.option("--operator-key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="File holding the operator's raw hex private key (mode 0600).")
@click.option("--chain-id", type=click.IntRange(min=1), default=None,
              help="Chain id messages are bound to (default: the chain's, or the devnet's).")
@click.option("--directory", type=click.Choice(["chain", "static"]), default="chain",
              help="Check operators against the NodeRegistry (chain) or --allow / --gateway (static).")
@click.option("--allow", multiple=True, help="Static directory: an operator address (repeat).")
@click.option("--gateway", multiple=True, help="A gateway address allowed to open requests (repeat).")
@click.option("--store-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Hidden-state store directory (default: settings).")
@click.option("--kv-budget-mib", type=click.IntRange(min=1), default=None,
              help="KV-cache budget in MiB (default: settings dataplane.kv_budget_bytes).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads.")
@click.option("--verify/--no-verify", default=None,
              help="Run the verifier agent (default: on with --directory chain; settings "
                   "verification.agent_enabled).")
@click.option("--verifier-policy", type=click.Choice(["honest", "lazy", "accuse", "silent"]),
              default=None, help="Verifier behaviour (fault injection; default: settings "
                                 "verification.agent_policy, honest).")
@click.option("--perturb-weights", "perturb_std", type=click.FloatRange(min=0.0), default=0.0,
              help="Add N(0, STD^2) noise (fixed seed) to every weight: a cheating worker, for demos.")
@click.pass_obj
def serve(settings: Any, model: Path, layers: str | None, coordinator: str | None,
          model_id: int, heartbeat_s: float, host: str | None, port: int | None,
          operator: str | None, password_file: Path | None, operator_key_file: Path | None,
          chain_id: int | None, directory: str, allow: tuple[str, ...], gateway: tuple[str, ...],
          store_dir: Path | None, kv_budget_mib: int | None, threads: int | None,
          verify: bool | None, verifier_policy: str | None, perturb_std: float) -> None:
    """Serve layers START:END of MODEL as one stage of inference pipelines."""
    import torch

    from node.directory import ChainDirectory, StaticDirectory

    if (layers is None) == (coordinator is None):
        raise click.UsageError("give exactly one of --layers START:END or --coordinator URL")
    rng = parse_layers(layers) if layers is not None else None
    if (operator is None) == (operator_key_file is None):
        raise click.UsageError("give exactly one of --operator (wallet) or --operator-key-file")
    if operator_key_file is not None:
        key = load_key_file(operator_key_file)
    else:
        from node.wallet.cli import unlock

        key = bytes(unlock(settings, operator, password_file).key)
    if threads:
        torch.set_num_threads(threads)
    dp = settings.dataplane
    if verify is None:
        verify = settings.verification.agent_enabled and directory == "chain"
    if verify and directory != "chain":
        raise click.UsageError("the verifier agent needs the chain: use --directory chain or --no-verify")
    chain = None
    if directory == "static":
        if not allow:
            raise click.UsageError("--directory static needs at least one --allow ADDRESS")
        dirx: Any = StaticDirectory(allow, gateway)
        cid = chain_id or settings.devnet.chain_id
    else:
        from contracts.client import Chain
        from contracts.errors import ContractsError

        try:
            chain = Chain.connect(settings.chain.rpc_url, settings.manifest_path(chain_id))
        except ContractsError as e:  # no manifest, chain unreachable
            raise click.ClickException(str(e)) from None
        gateways = gateway or None
        if gateways and verify:
            from coincurve import PrivateKey as _Key

            from node.protocol import address_of_key as _addr

            gateways = (*gateways, _addr(_Key(key)))  # the agent opens its checks as a gateway
        dirx = ChainDirectory(chain, dp.directory_ttl_s, gateways=gateways)
        cid = chain_id or chain.chain_id
    if store_dir is None:
        store_dir = settings.hidden_store_dir
    budget = kv_budget_mib * 2**20 if kv_budget_mib else dp.kv_budget_bytes
    bind = host or dp.host
    make_agent = None
    if verify:
        policy = verifier_policy or settings.verification.agent_policy
        root = store_dir
        make_agent = make_agent_factory(
            settings, chain, model, key, dirx, cid, policy, budget,
            (lambda r: root / f"layers-{r[0]}-{r[1]}") if rng is None else (lambda r: root if r == rng else None))
        if policy != "honest":
            click.echo(f"WARNING: verifier policy {policy!r} (fault injection): this node will lose stake",
                       err=True)
    if rng is None:
        from scheduler.service.client import HeartbeatClient

        hb = HeartbeatClient(coordinator, cid, key, model_id=model_id)  # type: ignore[arg-type]

        def build(r: tuple[int, int], p: int) -> Any:
            # one store per range: a draining shard and its successor never share a directory
            return build_server(model, r, key, dirx, cid, store_dir / f"layers-{r[0]}-{r[1]}",  # type: ignore[operator]
                                settings, bind, p, budget, perturb_std)

        main_coro = _follow(build, hb, heartbeat_s, dp.port if port is None else port, make_agent)
    else:
        from node.models.errors import ModelError

        try:
            server = build_server(model, rng, key, dirx, cid, store_dir, settings, bind,
                                  dp.port if port is None else port, budget, perturb_std)
        except ModelError as e:  # not a checkpoint, a range outside the model, bad tensors
            raise click.ClickException(str(e)) from None
        del key
        main_coro = _serve(server, make_agent)
    try:
        import uvloop  # libuv's loop: lower per-frame latency than asyncio's selector loop

        uvloop.run(main_coro)
    except ImportError:
        asyncio.run(main_coro)


def main() -> None:
    """`python -m node.cli_serve ...` — the same command without the root group (used by tests)."""
    from veriplex.config import Settings

    serve.main(obj=Settings(), prog_name="veriplex node serve")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()

