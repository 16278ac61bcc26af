"""The `veriplex` command: global options, settings loading, and every package's subcommands.

Each package owns its subcommands in its own `cli` module (a click command or group). They are
imported lazily, so `veriplex wallet list` never pays for importing torch. To add a command group,
add one line to `SUBCOMMANDS`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click

# name -> "module:attribute" of a click command or group.
SUBCOMMANDS: dict[str, str] = {
    "devnet": "devnet.cli:devnet",
    "contracts": "contracts.cli:contracts",
    "sim": "scheduler.cli:sim",
    "model": "node.cli.model:model",
    "wallet": "node.wallet.cli:wallet",
    "node": "node.cli.operator:node",
    "rewards": "node.cli.operator:rewards",
    "client": "gateway.client_cli:client",
    "demo": "veriplex.demo:demo",
    "up": "veriplex.up:up",
    "coordinator": "scheduler.service.cli:coordinator",
    "gateway": "gateway.cli:gateway",
    "params": "verifier.cli:params",
    "audit": "audit.cli:audit",
    "verify-stage": "node.cli.verify:verify_stage",
    "explorer": "devnet.explorer.cli:explorer",
}

# Commands that belong to one package but appear under another's group. `devnet fund` is the
# operator's tool (node) but reads naturally under `devnet`; devnet must not import node.
EXTRA_COMMANDS: dict[str, dict[str, str]] = {
    "devnet": {"fund": "node.cli.operator:devnet_fund"},
    "node": {"serve": "node.cli.serve:serve"},
}


def _load(spec: str) -> click.Command:
    module_name, attr = spec.split(":")
    return getattr(importlib.import_module(module_name), attr)


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when invoked (or listed in --help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(SUBCOMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in SUBCOMMANDS:
            command = _load(SUBCOMMANDS[cmd_name])
            if isinstance(command, click.Group):
                for name, spec in EXTRA_COMMANDS.get(cmd_name, {}).items():
                    if name not in command.commands:
                        command.add_command(_load(spec), name)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="TOML settings file (default: $VERIPLEX_HOME/config.toml if present).")
@click.option("--rpc-url", default=None, help="JSON-RPC endpoint (default: the local devnet).")
@click.option("--manifest", type=click.Path(path_type=Path), default=None,
              help="Deployment manifest JSON (default: the devnet's).")
@click.option("--keystore-dir", type=click.Path(path_type=Path), default=None,
              help="Keystore directory (default: $VERIPLEX_HOME/keystores).")
@click.version_option(package_name="veriplex")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, rpc_url: str | None,
        manifest: Path | None, keystore_dir: Path | None) -> None:
    """Veriplex: decentralized LLM inference whose every answer anyone can verify."""
    from protocol.settings import ConfigError, load_settings

    overrides: dict[str, Any] = {}
    chain: dict[str, Any] = {}
    if rpc_url:
        chain["rpc_url"] = rpc_url
    if manifest:
        chain["manifest"] = manifest
    if chain:
        overrides["chain"] = chain
    if keystore_dir:
        overrides["wallet"] = {"keystore_dir": keystore_dir}
    try:
        ctx.obj = load_settings(config_file, **overrides)
    except (ConfigError, ValueError) as exc:
        raise click.UsageError(f"invalid configuration: {exc}") from exc


@cli.command("config")
@click.pass_obj
def show_config(settings: Any) -> None:
    """Print the effective settings (defaults, file, environment and flags merged) as JSON."""
    click.echo(settings.model_dump_json(indent=2))


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="veriplex")


if __name__ == "__main__":
    main()
