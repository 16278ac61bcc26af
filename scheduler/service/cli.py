"""`veriplex coordinator run`: connect to the chain as the Scheduler's coordinator, resolve the
model, and serve the coordinator API until SIGTERM/SIGINT.

The coordinator key is a wallet account (`--account NAME`, password from `--password-file` or a
prompt, never argv) or, on a devnet, dev account `--dev-account N` of the configured mnemonic.
Once listening it prints one line, `coordinator ready at http://HOST:PORT (chain id …, model …,
coordinator 0x…)`, which scripts and tests wait for (the port may be 0: any free port).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import click

from protocol.api_errors import ServiceError
from protocol.net import ListenError, listen
from protocol.settings import Settings
from scheduler.errors import SchedulerError


def _coordinator_signer(settings: Settings, account: str | None, password_file: Path | None,
                        dev_account: int | None) -> Any:
    from contracts.client import dev_key
    from contracts.rpc import Signer

    if (account is None) == (dev_account is None):
        raise click.UsageError("pass exactly one of --account NAME or --dev-account N")
    if dev_account is not None:
        return Signer.from_key(dev_key(dev_account, settings.devnet.mnemonic))
    from node.cli.chain import signer_of

    return signer_of(settings, account, password_file)


def _build(settings: Settings, signer: Any, model_id: int | None, model_spec: Path | None,
           checkpoint: Path | None, standby_reserve: int = 0) -> Any:
    from node.cli.chain import connect
    from scheduler.model import Links, Params
    from scheduler.schema import load_json, parse_links, parse_params
    from scheduler.service.app import Coordinator, LoopTiming
    from scheduler.service.chain_io import load_model_spec, resolve_model
    from scheduler.service.state import CoordinatorState, Timing
    from scheduler.service.suspects import SuspectTiming

    cs = settings.coordinator
    chain = connect(settings, signer)
    appointed = chain.scheduler.coordinator()
    if appointed.lower() != signer.address.lower():
        raise click.ClickException(
            f"{signer.address} is not the Scheduler's coordinator ({appointed}); epochs it "
            f"publishes would revert")
    info = resolve_model(chain, model_id if model_id is not None else cs.model_id)
    model = load_model_spec(info, model_spec or cs.model_spec, checkpoint, settings.models_dir)
    params = parse_params(load_json(cs.params_file)) if cs.params_file else Params()
    links = parse_links(load_json(cs.links_file)) if cs.links_file else Links()
    state = CoordinatorState(
        model, chain.chain_id,
        Timing(cs.heartbeat_timeout_s, cs.max_clock_skew_s, cs.rebalance_interval_s,
               cs.imbalance_threshold),
        params, links, cs.default_rtt_ms, standby_reserve)
    return Coordinator(chain, state, LoopTiming(cs.registry_poll_s, cs.tick_s, cs.max_body_bytes),
                       suspects=SuspectTiming(silence_s=cs.report_silence_s,
                                              max_age_s=cs.heartbeat_timeout_s))


@click.group()
def coordinator() -> None:
    """The scheduling coordinator: heartbeats, allocation epochs on chain, routes."""


@coordinator.command("run")
@click.option("--model-id", type=click.IntRange(min=1), default=None,
              help="Model to schedule (default: settings, else the only active model).")
@click.option("--model-spec", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Scheduler model JSON giving the model's shape.")
@click.option("--checkpoint", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Checkpoint directory whose config.json gives the model's shape.")
@click.option("--host", default=None, help="Interface to bind (default: settings).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port to bind, 0 for any free one (default: settings).")
@click.option("--account", default=None, help="Wallet account holding the coordinator key.")
@click.option("--password-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="File with the account's password (default: prompt).")
@click.option("--dev-account", type=click.IntRange(min=0), default=None,
              help="Use dev account N of the devnet mnemonic as the coordinator key.")
@click.option("--standby-reserve", type=click.IntRange(min=0), default=0, show_default=True,
              help="Hold the N latest registered nodes out of the allocation as hot standby "
                   "(they verify; promoted when an eviction costs a replica).")
@click.pass_obj
def run_cmd(settings: Settings, model_id: int | None, model_spec: Path | None,
            checkpoint: Path | None, host: str | None, port: int | None, account: str | None,
            password_file: Path | None, dev_account: int | None, standby_reserve: int) -> None:
    """Serve the coordinator API and publish allocation epochs until stopped."""
    import uvicorn

    from contracts.errors import ContractsError
    from scheduler.service.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        signer = _coordinator_signer(settings, account, password_file, dev_account)
        coord = _build(settings, signer, model_id, model_spec, checkpoint, standby_reserve)
    except (ContractsError, ServiceError, SchedulerError) as e:
        raise click.ClickException(str(e)) from None
    except Exception as e:  # wallet errors come from node.wallet; keep them one line
        if type(e).__module__.startswith("node."):
            raise click.ClickException(str(e)) from None
        raise
    host = host or settings.coordinator.host
    port = settings.coordinator.port if port is None else port
    try:  # listening before "ready" is printed: connections wait in the backlog, no start race
        sock, bound = listen(host, port)
    except ListenError as e:
        raise click.ClickException(str(e)) from None
    model = coord.state.model
    server = uvicorn.Server(uvicorn.Config(create_app(coord), log_level="warning",
                                           access_log=False))
    click.echo(f"coordinator ready at http://{host}:{bound} (chain id {coord.state.chain_id}, "
               f"model {model.model_id}:{model.name}, coordinator {signer.address})")
    sys.stdout.flush()
    asyncio.run(server.serve(sockets=[sock]))
