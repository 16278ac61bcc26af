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
                 store_dir: Path, settings: Any, host: str, port: int, kv_budget_bytes: int):
    """Load the shard and wire executor, hidden-state store and server (not started)."""
    from coincurve import PrivateKey

    from node.dataplane import StageServer
    from node.executor import StageExecutor
    from node.hidden_store import HiddenStateStore
    from node.shard import load_shard, resolve_device_dtype

    device, dtype = resolve_device_dtype(settings.models.device, settings.models.dtype)
    shard = load_shard(model, layers[0], layers[1], device=device, dtype=dtype)
    m, dp = settings.models, settings.dataplane
    store = HiddenStateStore(store_dir, m.hidden_store_max_bytes, m.hidden_retention_s, m.hidden_max_open_s)
    return StageServer(StageExecutor(shard), store, PrivateKey(key), directory, chain_id, host=host,
                       port=port, kv_budget_bytes=kv_budget_bytes, max_frame_bytes=dp.max_frame_bytes,
                       session_timeout_s=dp.session_timeout_s)


async def _serve(server) -> None:
    await server.start()
    shard = server.executor.shard
    click.echo(f"serving layers [{shard.start}, {shard.end}) of {shard.checkpoint} on "
               f"{server.host}:{server.port} as {server.address}")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


async def _follow(build, client, every_s: float, port: int) -> None:  # type: ignore[no-untyped-def]
    from node.follower import Follower

    def say(text: str) -> None:
        click.echo(text)
        sys.stdout.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await Follower(build, port, say).follow(client, every_s, stop)


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
@click.pass_obj
def serve(settings: Any, model: Path, layers: str | None, coordinator: str | None,
          model_id: int, heartbeat_s: float, host: str | None, port: int | None,
          operator: str | None, password_file: Path | None, operator_key_file: Path | None,
          chain_id: int | None, directory: str, allow: tuple[str, ...], gateway: tuple[str, ...],
          store_dir: Path | None, kv_budget_mib: int | None, threads: int | None) -> None:
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
    if directory == "static":
        if not allow:
            raise click.UsageError("--directory static needs at least one --allow ADDRESS")
        dirx: Any = StaticDirectory(allow, gateway)
        cid = chain_id or settings.devnet.chain_id
    else:
        from contracts.client import Chain

        chain = Chain.connect(settings.chain.rpc_url, settings.manifest_path(chain_id))
        dirx = ChainDirectory(chain, dp.directory_ttl_s, gateways=gateway or None)
        cid = chain_id or chain.chain_id
    if store_dir is None:
        store_dir = settings.hidden_store_dir
    budget = kv_budget_mib * 2**20 if kv_budget_mib else dp.kv_budget_bytes
    bind = host or dp.host
    if rng is None:
        from scheduler.service.client import HeartbeatClient

        hb = HeartbeatClient(coordinator, cid, key, model_id=model_id)  # type: ignore[arg-type]

        def build(r: tuple[int, int], p: int) -> Any:
            # one store per range: a draining shard and its successor never share a directory
            return build_server(model, r, key, dirx, cid, store_dir / f"layers-{r[0]}-{r[1]}",  # type: ignore[operator]
                                settings, bind, p, budget)

        main_coro = _follow(build, hb, heartbeat_s, dp.port if port is None else port)
    else:
        server = build_server(model, rng, key, dirx, cid, store_dir, settings, bind,
                              dp.port if port is None else port, budget)
        del key
        main_coro = _serve(server)
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

