"""`veriplex gateway run`: connect to the chain as the gateway (the address clients' API keys name),
load the served model's tokenizer, open the settlement store, and serve the OpenAI-compatible API
until SIGTERM/SIGINT. Pipelines come from the coordinator (`--coordinator URL`, default settings)
or, for a fixed deployment or a test, from `--stage OPERATOR@HOST:PORT/START-END` options (in
order). The gateway key is a wallet account (`--account NAME` + `--password-file`) or, on a devnet,
`--dev-account N`; never a key in argv. Once listening it prints one line, `gateway ready at
http://HOST:PORT (chain id …, model …, gateway 0x…)`."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from pathlib import Path
from typing import Any

import click

from protocol.net import ListenError, listen
from protocol.settings import Settings

STAGE_RE = re.compile(r"^(0x[0-9a-fA-F]{40})@([^:/]+):(\d+)/(\d+)-(\d+)$")


def parse_stage(text: str) -> Any:
    from protocol.messages import StageAssignment

    m = STAGE_RE.match(text)
    if m is None:
        raise click.BadParameter(f"{text!r} is not OPERATOR@HOST:PORT/START-END")
    op, host, port, a, b = m.groups()
    return StageAssignment(operator=op, host=host, port=int(port), start=int(a), end=int(b))


def build_gateway(settings: Settings, signer: Any, *, router: Any = None, checkpoint: Path | None = None,
                  model_id: int | None = None, db_url: str | None = None) -> Any:
    """A started-able `Gateway` from settings (the CLI and `veriplex up` use this)."""
    from node.cli.chain import connect
    from scheduler.service.chain_io import resolve_model

    from .engine import CoordinatorRouter, ServedModel
    from .service import Gateway
    from .store import Store

    gs = settings.gateway
    chain = connect(settings, signer)
    info = resolve_model(chain, model_id if model_id is not None else gs.model_id)
    ckpt = checkpoint or gs.checkpoint or settings.models_dir / info.name
    if not (Path(ckpt) / "config.json").is_file():
        raise click.ClickException(f"no checkpoint for model {info.name!r} at {ckpt} (pass "
                                   "--checkpoint DIR)")
    model = ServedModel.load(info, Path(ckpt))
    store = Store(db_url or gs.db_url or f"sqlite:///{settings.home / 'gateway.sqlite'}")
    router = router or CoordinatorRouter(gs.coordinator_url, info.model_id, gs.failover_wait_s)
    return Gateway(chain, store, model, router, default_max_tokens=gs.default_max_tokens,
                   chain_cache_s=gs.chain_cache_s, step_timeout_s=gs.step_timeout_s,
                   batch_size=gs.batch_size, batch_max_age_s=gs.batch_max_age_s,
                   settle_tick_s=gs.settle_tick_s, exit_after_broadcast=gs.exit_after_broadcast,
                   open_tasks=gs.open_tasks, commit_timeout_s=gs.commit_timeout_s,
                   commit_attempts=gs.commit_attempts)


@click.group()
def gateway() -> None:
    """The OpenAI-compatible gateway: paid requests, receipts, settlement."""


@gateway.command("run")
@click.option("--checkpoint", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Checkpoint dir of the served model (tokenizer, chat template, context).")
@click.option("--model-id", type=click.IntRange(min=1), default=None, help="Model served.")
@click.option("--coordinator", "coordinator_url", default=None, help="Coordinator URL for routes.")
@click.option("--stage", "stages", multiple=True, help="Fixed pipeline stage OPERATOR@HOST:PORT/A-B.")
@click.option("--host", default=None, help="Interface to bind (default: settings).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (0: any free one).")
@click.option("--db-url", default=None, help="SQLAlchemy URL of the settlement store.")
@click.option("--account", default=None, help="Wallet account holding the gateway key.")
@click.option("--password-file", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--dev-account", type=click.IntRange(min=0), default=None,
              help="Use dev account N of the devnet mnemonic as the gateway key.")
@click.pass_obj
def run_cmd(settings: Settings, checkpoint: Path | None, model_id: int | None,
            coordinator_url: str | None, stages: tuple[str, ...], host: str | None,
            port: int | None, db_url: str | None, account: str | None,
            password_file: Path | None, dev_account: int | None) -> None:
    """Serve the OpenAI-compatible API and settle served requests on chain until stopped."""
    import uvicorn

    from contracts.errors import ContractsError
    from scheduler.service.cli import _coordinator_signer

    from .app import create_app
    from .engine import StaticRouter

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # The settler thread (web3 calls: settlement, sampling checks, task opening) shares the GIL
    # with the request loop; at the default 5 ms switch interval a request waits on it for whole
    # milliseconds. 0.5 ms keeps the added latency of a request near its own work.
    sys.setswitchinterval(0.0005)
    if coordinator_url:
        settings.gateway.coordinator_url = coordinator_url
    router = StaticRouter([parse_stage(s) for s in stages]) if stages else None
    try:
        signer = _coordinator_signer(settings, account, password_file, dev_account)
        gw = build_gateway(settings, signer, router=router, checkpoint=checkpoint,
                           model_id=model_id, db_url=db_url)
    except ContractsError as e:
        raise click.ClickException(str(e)) from None
    except Exception as e:
        if type(e).__module__.startswith(("node.", "scheduler.")):
            raise click.ClickException(str(e)) from None
        raise
    host = host or settings.gateway.host
    port = settings.gateway.port if port is None else port
    try:  # listening before "ready" is printed: connections wait in the backlog, no start race
        sock, bound = listen(host, port)
    except ListenError as e:
        raise click.ClickException(str(e)) from None
    gw.start()
    server = uvicorn.Server(uvicorn.Config(create_app(gw), log_level="warning", access_log=False))
    click.echo(f"gateway ready at http://{host}:{bound} (chain id {gw.chain_id}, model "
               f"{gw.model.info.model_id}:{gw.model.name}, gateway {gw.address})")
    sys.stdout.flush()
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        gw.stop()
