"""The `veriplex` command: global options, settings loading, and every package's subcommands.

Each package owns its subcommands in its own `cli` module (a click command or group). They are
imported lazily, so `veriplex wallet list` never pays for importing torch. To add a command group,
add one line to `SUBCOMMANDS`.

Global options go before or after the subcommand, as with `cast`: `veriplex --rpc-url U node
status X` and `veriplex node status X --rpc-url U` are the same. Every leaf command gets hidden
copies of `--config`, `--rpc-url`, `--manifest` and `--keystore-dir` (unless it has an option of
that name itself, e.g. `explorer --rpc-url`), which reload the settings with the value; `--json`
before the subcommand sets the `--json` of a command that has one and is refused by one that has
none.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click

from protocol.settings import Settings

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
    "calibrate": "node.cli.calibrate:calibrate",
    "explorer": "devnet.explorer.cli:explorer",
}

# Commands that belong to one package but appear under another's group. `devnet fund` is the
# operator's tool (node) but reads naturally under `devnet`; devnet must not import node.
EXTRA_COMMANDS: dict[str, dict[str, str]] = {
    "devnet": {"fund": "node.cli.operator:devnet_fund"},
    "node": {"serve": "node.cli.serve:serve", "doctor": "node.cli.doctor:doctor"},
}


def _load(spec: str) -> click.Command:
    module_name, attr = spec.split(":")
    return getattr(importlib.import_module(module_name), attr)


GLOBAL_OPTIONS = ("--config", "--rpc-url", "--manifest", "--keystore-dir")
_OVERRIDES = "veriplex.overrides"
_JSON = "veriplex.json"


def _settings_from(ctx: click.Context) -> Any:
    """Settings from the config file and flags recorded in the root context's meta."""
    from protocol.settings import ConfigError, load_settings

    given = ctx.meta.setdefault(_OVERRIDES, {})
    overrides: dict[str, Any] = {}
    chain = {k: given[k] for k in ("rpc_url", "manifest") if given.get(k)}
    if chain:
        overrides["chain"] = chain
    if given.get("keystore_dir"):
        overrides["wallet"] = {"keystore_dir": given["keystore_dir"]}
    try:
        return load_settings(given.get("config"), **overrides)
    except (ConfigError, ValueError) as exc:
        raise click.UsageError(f"invalid configuration: {exc}") from exc


def _late_global(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the subcommand: record it and reload the settings."""
    if value is None or param.name is None:
        return
    ctx.meta.setdefault(_OVERRIDES, {})[param.name] = value
    ctx.obj = _settings_from(ctx)


def _late_option(flag: str) -> click.Option:
    kind = str if flag == "--rpc-url" else click.Path(path_type=Path)
    return click.Option([flag], type=kind, default=None, hidden=True, expose_value=False,
                        callback=_late_global, help=f"Same as the global {flag}.")


def _with_json_from_root(callback: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        if click.get_current_context().meta.get(_JSON):
            kwargs["as_json"] = True
        return callback(*args, **kwargs)
    return run


def accept_global_options(command: click.Command) -> click.Command:
    """Give `command` (and every command under it) the global options after its name."""
    if getattr(command, "_veriplex_globals", False):
        return command
    command._veriplex_globals = True  # type: ignore[attr-defined]
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            accept_global_options(sub)
        return command
    taken = {opt for p in command.params for opt in p.opts}
    command.params.extend(_late_option(f) for f in GLOBAL_OPTIONS if f not in taken)
    if any(p.name == "as_json" for p in command.params) and command.callback is not None:
        command.callback = _with_json_from_root(command.callback)
    return command


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
            return accept_global_options(command)
        found = super().get_command(ctx, cmd_name)
        return accept_global_options(found) if found is not None else None

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        if ctx.params.get("as_json") and command is not None and not _has_json(command, rest):
            raise click.UsageError(f"`{name}` has no --json output", ctx)
        return name, command, rest


def _has_json(command: click.Command, rest: list[str]) -> bool:
    """Whether the leaf that `rest` names under `command` takes --json (groups: look down)."""
    while isinstance(command, click.Group):
        sub = next((command.commands.get(a) for a in rest if not a.startswith("-")), None)
        if sub is None:
            return True  # a group's help, or an unknown name click will refuse anyway
        rest = rest[rest.index(next(a for a in rest if not a.startswith("-"))) + 1:]
        command = sub
    return any(p.name == "as_json" for p in command.params)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="TOML settings file (default: $VERIPLEX_HOME/config.toml if present).")
@click.option("--rpc-url", default=None, help="JSON-RPC endpoint (default: the local devnet).")
@click.option("--manifest", type=click.Path(path_type=Path), default=None,
              help="Deployment manifest JSON (default: the devnet's).")
@click.option("--keystore-dir", type=click.Path(path_type=Path), default=None,
              help="Keystore directory (default: $VERIPLEX_HOME/keystores).")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output (for commands that have it; also after the command).")
@click.version_option(package_name="veriplex")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, rpc_url: str | None,
        manifest: Path | None, keystore_dir: Path | None, as_json: bool) -> None:
    """Veriplex: decentralized LLM inference whose every answer anyone can verify.

    Global options may also follow the subcommand (`veriplex node status X --rpc-url URL`)."""
    ctx.meta[_OVERRIDES] = {"config": config_file, "rpc_url": rpc_url, "manifest": manifest,
                            "keystore_dir": keystore_dir}
    ctx.meta[_JSON] = as_json
    ctx.obj = _settings_from(ctx)


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Accepted for symmetry: always JSON.")
@click.pass_obj
def show_config(settings: Settings, as_json: bool) -> None:
    """Print the effective settings (defaults, file, environment and flags merged) as JSON."""
    click.echo(settings.model_dump_json(indent=2))


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="veriplex")


if __name__ == "__main__":
    main()
