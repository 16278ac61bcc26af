"""`veriplex explorer`: run the indexer (a background thread following the chain) and the web UI
(uvicorn) in one process. The index lives at `--db-url` (default: SQLite under the Veriplex home);
the manifest names our contracts so their calls and events are decoded; without one the explorer
still indexes any chain and decodes by event signature."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import click

from contracts.errors import ContractsError
from protocol.net import ListenError, listen
from protocol.settings import Settings


def _manifest(settings: Settings, rpc: Any) -> Any:
    from contracts.manifest import Manifest

    try:
        chain_id = rpc.chain_id
    except ContractsError:
        chain_id = None
    for path in (settings.manifest_path(chain_id), settings.manifest_path(None)):
        if path.is_file():
            try:
                return Manifest.load(path)
            except ContractsError as exc:
                raise click.ClickException(str(exc)) from exc
    return None


def _hide_password(db_url: str) -> str:
    """`db_url` fit to print: never a DB password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(db_url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(an unparsable database URL)"


@click.command("explorer")
@click.option("--rpc-url", default=None, help="JSON-RPC endpoint to index (default: the chain's).")
@click.option("--db-url", default=None, help="SQLAlchemy URL of the index (default: SQLite in home).")
@click.option("--host", default=None, help="Interface the web UI binds to.")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Web UI port (0: any free).")
@click.option("--gateway-url", default=None,
              help="Gateway whose receipts request pages link to (per-stage commitments).")
@click.option("--no-index", is_flag=True, help="Serve the existing index without following the chain.")
@click.pass_obj
def explorer(settings: Settings, rpc_url: str | None, db_url: str | None, host: str | None,
             port: int | None, gateway_url: str | None, no_index: bool) -> None:
    """Index a chain and serve the block explorer's web UI."""

    import uvicorn

    from contracts.rpc import Rpc
    from devnet.explorer.app import create_app
    from devnet.explorer.decode import Decoder
    from devnet.explorer.indexer import Indexer, IndexerStatus
    from devnet.explorer.models import make_engine

    cfg = settings.explorer
    gw = gateway_url or cfg.gateway_url
    if gw is not None and not gw.startswith(("http://", "https://")):
        raise click.BadParameter(f"must be an http(s) URL, got {gw!r}", param_hint="--gateway-url")
    url = rpc_url or settings.chain.rpc_url
    db = db_url or settings.explorer_db_url
    if db.startswith("sqlite:///"):
        from pathlib import Path

        Path(db.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    rpc = Rpc(url, timeout_s=settings.chain.timeout_s)
    ui_rpc = Rpc(url, timeout_s=2.0)  # live balances must not stall a page
    shown = _hide_password(db)
    try:
        engine = make_engine(db)
    except Exception as exc:  # noqa: BLE001 - a bad URL or unreachable database: say which
        raise click.ClickException(f"cannot open the index database {shown}: "
                                   f"{str(exc).replace(db, shown)}") from None
    status = IndexerStatus(rpc_url=url)
    decoder = Decoder.load(_manifest(settings, rpc))
    indexer = Indexer(rpc, engine, decoder, status, batch_blocks=cfg.batch_blocks)
    stop = threading.Event()
    if not no_index:
        threading.Thread(target=indexer.run, args=(stop, cfg.poll_s), daemon=True,
                         name="explorer-indexer").start()
    app = create_app(engine, status, ui_rpc, gw)
    bind_host = host or cfg.host
    try:  # listening before "ready" is printed: connections wait in the backlog, no start race
        sock, real_port = listen(bind_host, cfg.port if port is None else port)
    except ListenError as exc:
        raise click.ClickException(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    click.echo(f"explorer ready at http://{bind_host}:{real_port} (indexing {url} into {shown})")
    sys.stdout.flush()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()
