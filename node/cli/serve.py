"""`veriplex node serve`: run one stage of the data plane (a layer range of a local checkpoint).

    veriplex node serve --model ~/.veriplex/models/smollm2 --layers 0:10 --port 7070 \
        --operator op1 --password-file pw.txt            # operator key from the wallet
    veriplex node serve ... --operator-key-file key.hex  # or a raw hex key file (mode 0600)
    veriplex node serve --model DIR --coordinator http://coord:8400 ...  # follow assignments

With `--coordinator` (instead of `--layers`) the worker heartbeats with its operator key and serves
whatever range the latest epoch assigns it (see `node/dataplane/follower.py`), printing one line per change.

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

import contextlib
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from protocol.settings import Settings


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
@click.option("--micro-batches", type=click.IntRange(min=0), default=None,
              help="Groups the running requests circulate round the ring in (0: one per pipeline "
                   "stage; 1 only when stages share cores and each uses all of them; default: "
                   "settings dataplane.micro_batches).")
@click.option("--prefill-chunk", type=click.IntRange(min=1), default=None,
              help="Most prefill rows per batched step (default: settings dataplane.prefill_chunk).")
@click.option("--max-decode-rows", type=click.IntRange(min=1), default=None,
              help="Most decode rows per batched step (default: settings dataplane.max_decode_rows).")
@click.option("--verify/--no-verify", default=None,
              help="Run the verifier agent (default: on with --directory chain; settings "
                   "verification.agent_enabled).")
@click.option("--verifier-policy", type=click.Choice(["honest", "lazy", "accuse", "silent"]),
              default=None, help="Verifier behaviour (fault injection; default: settings "
                                 "verification.agent_policy, honest).")
@click.option("--perturb-weights", "perturb_std", type=click.FloatRange(min=0.0), default=0.0,
              help="Add N(0, STD^2) noise (fixed seed) to every weight: a cheating worker, for demos.")
@click.pass_obj
def serve(settings: Settings, model: Path, layers: str | None, coordinator: str | None,
          model_id: int, heartbeat_s: float, host: str | None, port: int | None,
          operator: str | None, password_file: Path | None, operator_key_file: Path | None,
          chain_id: int | None, directory: str, allow: tuple[str, ...], gateway: tuple[str, ...],
          store_dir: Path | None, kv_budget_mib: int | None, threads: int | None,
          micro_batches: int | None, prefill_chunk: int | None, max_decode_rows: int | None,
          verify: bool | None, verifier_policy: str | None, perturb_std: float) -> None:
    """Serve layers START:END of MODEL as one stage of inference pipelines."""
    import torch

    from node.build import NodeConfigError, NodeOptions, build_node

    try:
        rng = parse_layers(layers) if layers is not None else None
        NodeOptions(model, b"", rng, coordinator)  # the range/coordinator rule before any key is read
    except NodeConfigError as e:
        raise click.UsageError(str(e)) from None
    if (operator is None) == (operator_key_file is None):
        raise click.UsageError("give exactly one of --operator (wallet) or --operator-key-file")
    if operator_key_file is not None:
        key = load_key_file(operator_key_file)
    else:
        from node.wallet.cli import unlock

        key = bytes(unlock(settings, operator, password_file).key)
    if threads:
        torch.set_num_threads(threads)
    opts = NodeOptions(
        model=model, key=key, layers=rng, coordinator=coordinator, model_id=model_id,
        heartbeat_s=heartbeat_s, host=host, port=port, chain_id=chain_id, directory=directory,
        allow=allow, gateways=gateway, store_dir=store_dir,
        kv_budget_bytes=kv_budget_mib * 2**20 if kv_budget_mib else None,
        max_decode_rows=max_decode_rows, prefill_chunk=prefill_chunk, micro_batches=micro_batches,
        verify=verify,
        verifier_policy=verifier_policy, perturb_std=perturb_std)
    del key
    try:
        if opts.directory == "static" and not opts.allow:
            raise click.UsageError("--directory static needs at least one --allow ADDRESS")
        if opts.verify and opts.directory != "chain":
            raise click.UsageError("the verifier agent needs the chain: use --directory chain or "
                                   "--no-verify")
        node = build_node(settings, opts)
        for w in node.warnings:
            click.echo(w, err=True)
        node.run()
    except NodeConfigError as e:
        raise click.ClickException(str(e)) from None

def main() -> None:
    """`python -m node.cli.serve ...` — the same command without the root group (used by tests)."""
    from protocol.settings import Settings

    serve.main(obj=Settings(), prog_name="veriplex node serve")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()

