"""`veriplex demo`: what `make demo` runs — the main job end to end (see `veriplex.demo_main`).

    veriplex demo [--model smollm2|tiny|PATH] [--workers N] [--data-dir DIR] [--keep] [--json]
    veriplex demo chain      the older chain-only scenario (operators, clients, restarts)

The scenario starts the network with `veriplex up`'s code (one worker serving perturbed
weights, the workers beyond the 2-stage pipeline as hot standby), pays for requests with the
`openai` client, and waits for their verification: the cheater is convicted and slashed, the
coordinator evicts it and promotes a standby into its layers in a new epoch, and the next
requests are served and verified. It exits 0 only when a request served after the eviction was
verified PASSED, the perturbed worker was slashed and evicted, and no keeper transaction
reverted; otherwise it says what was missing and exits 1. With `--json` the last line of stdout
is one JSON object (`passed`, `slashed`, `evicted`, `promoted`, `new_epoch`,
`served_after_eviction`, `passed_after_eviction`, `reverted_keeper_tx`, `timings_s`, `ok`,
`missing`), success or not. Everything it started is stopped at the end
(also on Ctrl-C); its temporary data directory is removed after a success (unless `--keep`) and
kept, with its logs, after a failure.
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from protocol.settings import Settings
from veriplex.demo_chain import chain_demo


@click.group("demo", invoke_without_command=True)
@click.option("--model", default="smollm2", show_default=True,
              help="smollm2, tiny (a random test model: fast, answers are gibberish) or a "
                   "checkpoint directory.")
@click.option("--workers", type=click.IntRange(min=4), default=5, show_default=True,
              help="Local workers: 2 form the pipeline, the rest are hot standby (they verify; "
                   "one takes the cheater's layers; a committee of 2 still checks after).")
@click.option("--requests", "n_requests", type=click.IntRange(min=1), default=4,
              show_default=True, help="Requests sent first (more follow until both outcomes).")
@click.option("--max-requests", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--timeout-s", type=click.FloatRange(min=10), default=300.0, show_default=True,
              help="How long to wait for the verification outcomes.")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Keep the network's state here (default: a temporary directory).")
@click.option("--keep", is_flag=True, help="Keep the temporary data directory.")
@click.option("--json", "as_json", is_flag=True,
              help="End with one JSON object on the last line: passed, slashed, evicted, "
                   "new_epoch, served_after_eviction, reverted_keeper_tx, timings.")
@click.pass_context
def demo(ctx: click.Context, model: str, workers: int, n_requests: int, max_requests: int,
         timeout_s: float, data_dir: Path | None, keep: bool, as_json: bool) -> None:
    """Run the main job: paid requests on a 2-stage pipeline, verified, a cheater slashed."""
    if ctx.invoked_subcommand is not None:
        return
    from contracts.errors import ContractsError  # e.g. the chain gone mid-run: one line, no trace
    from veriplex.demo_main import DemoFailed, DemoOptions, report, run_demo
    from veriplex.stack import StackError
    from veriplex.up import UpError, UpOptions

    settings: Settings = ctx.obj
    home = data_dir or Path(tempfile.mkdtemp(prefix="veriplex-demo-"))
    opts = DemoOptions(
        up=UpOptions(data_dir=home, models_dir=settings.models_dir, model=model,
                     workers=workers, stages=2, perturbed=1, verifiers=workers - 2),
        requests=n_requests, max_requests=max(max_requests, n_requests), timeout_s=timeout_s)

    def interrupted(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    missing: list[str] = ["it did not run to the end"]
    obs = None
    try:
        obs, net = run_demo(opts, click.echo)
        try:
            missing = report(obs, net, click.echo)
        finally:
            click.echo(f"\nstopping {len(net.stack.children)} processes …")
            for line in net.stop():
                click.echo(line, err=True)
    except (UpError, StackError, DemoFailed, ContractsError) as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "missing": [str(exc)]}))
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.ClickException("interrupted; everything the demo started was stopped") from None
    finally:
        if data_dir is None and not keep and not missing:
            shutil.rmtree(home, ignore_errors=True)
        elif data_dir is None:  # kept on failure: its logs say why
            click.echo(f"state and logs kept in {home}")
    took = time.monotonic() - started
    if not missing:
        click.secho(f"\ndemo finished in {took:.0f} s: requests verified, the cheater slashed "
                    "and evicted, a standby took its layers, the next requests PASSED",
                    fg="green", bold=True)
    if as_json and obs is not None:  # the last line, success or not: scripts read it
        from veriplex.demo_heal import summary

        click.echo(json.dumps({**summary(obs, obs.heal, missing), "took_s": round(took, 1)}))
    if missing:
        raise click.ClickException("the demo did not show what it must: " + "; ".join(missing)
                                   + f" (after {took:.0f} s; logs in {home / 'logs'})")


demo.add_command(chain_demo)
