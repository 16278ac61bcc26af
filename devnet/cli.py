"""`veriplex devnet ...` subcommands: `up` runs the embedded py-evm devnet in the foreground."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def devnet() -> None:
    """The embedded local chain (py-evm behind JSON-RPC, state in one SQLite file)."""


@devnet.command("up")
@click.option("--host", default=None, help="Interface to bind (default: settings devnet.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="TCP port (default: settings devnet.port, 8545; 0 picks a free one).")
@click.option("--db", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="SQLite file holding the chain (default: $VERIPLEX_HOME/devnet.sqlite).")
@click.option("--block-time", type=click.FloatRange(min=0), default=None,
              help="Seconds between blocks; 0 mines a block per transaction (default).")
@click.option("--deploy/--no-deploy", default=None,
              help="Deploy the Veriplex contracts at start unless the manifest is live (default: on).")
@click.pass_obj
def up(settings, host: str | None, port: int | None, db: Path | None,  # type: ignore[no-untyped-def]
       block_time: float | None, deploy: bool | None) -> None:
    """Serve the devnet over JSON-RPC until SIGINT/SIGTERM; state survives restarts."""
    from devnet.server import ServeOptions, serve

    cfg = settings.devnet
    opts = ServeOptions(
        host=host or cfg.host,
        port=cfg.port if port is None else port,
        db=db or settings.devnet_db,
        block_time=cfg.block_time if block_time is None else block_time,
        chain_id=cfg.chain_id,
        mnemonic=cfg.mnemonic,
        accounts=cfg.accounts,
        balance_wei=cfg.balance_eth * 10**18,
        gas_limit=cfg.gas_limit,
        deploy=cfg.deploy if deploy is None else deploy,
        manifest_path=settings.manifest_path(cfg.chain_id),
    )
    raise SystemExit(serve(opts))
