"""`veriplex contracts ...`: build the artifacts, deploy them, check a manifest.

The deployer key never appears in argv: it comes from a dev account index of the configured
mnemonic (`--dev-account N`, devnets only) or from a keystore file plus `--password-file`.
Errors from the chain are printed as one line and exit non-zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from contracts.errors import ContractsError
from protocol.settings import Settings


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from exc


def load_key(
    settings: Settings, dev_account: int | None, keystore: Path | None, password_file: Path | None
) -> str:
    """The deployer's private key from a dev account index or a keystore + password file."""
    if (dev_account is None) == (keystore is None):
        raise click.UsageError("give exactly one of --dev-account N or --keystore FILE")
    if dev_account is not None:
        from contracts.client import dev_key

        return dev_key(dev_account, settings.devnet.mnemonic)
    assert keystore is not None
    if password_file is None:
        password = click.prompt("keystore password", hide_input=True)
    else:
        password = Path(password_file).read_text().rstrip("\r\n")
    from eth_account import Account

    try:
        return "0x" + bytes(Account.decrypt(json.loads(Path(keystore).read_text()), password)).hex()
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"cannot unlock keystore {keystore}: {exc}") from None


@click.group()
def contracts() -> None:
    """Compile, deploy and inspect the Veriplex contracts."""


@contracts.command("build")
@click.option("--force", is_flag=True, help="Recompile even if the cache is fresh.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def build_cmd(force: bool, as_json: bool) -> None:
    """Compile every contract into ABI + bytecode artifacts (cached)."""
    from contracts.build import compile_all

    try:
        arts = compile_all(force=force)
    except ContractsError as exc:
        _fail(exc)
    rows = {
        n: {"hash": a.hash, "bytecode_bytes": len(a.bytecode) // 2 - 1} for n, a in arts.items()
    }
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for name, row in rows.items():
        click.echo(f"{name:16s} {row['bytecode_bytes']:6d} bytes  {row['hash'][:16]}")


@contracts.command("deploy")
@click.option(
    "--dev-account",
    type=int,
    default=None,
    help="Deploy from dev account N of the configured mnemonic (devnets).",
)
@click.option(
    "--keystore",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Deploy from this keystore file.",
)
@click.option(
    "--password-file",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="File holding the keystore password (else prompted).",
)
@click.option("--slasher", default=None, help="Address of the verification role.")
@click.option("--timelock-blocks", type=click.IntRange(min=0), default=None,
              help="Blocks every owner change waits, announced (default: protocol.timelock_blocks). "
                   "A --keystore deployment needs it above 0.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.pass_obj
def deploy_cmd(
    settings: Settings,
    dev_account: int | None,
    keystore: Path | None,
    password_file: Path | None,
    slasher: str | None,
    timelock_blocks: int | None,
    as_json: bool,
) -> None:
    """Deploy every contract and write the deployment manifest."""
    from dataclasses import replace

    from contracts.deploy import DeployParams, deploy_all
    from contracts.rpc import Rpc
    from contracts.verification import VerificationParams

    timelock = settings.protocol.timelock_blocks if timelock_blocks is None else timelock_blocks
    if keystore is not None and timelock == 0:
        # Without a delay the owner could rewire roles, raise fees after settlement or swap the
        # game's parameters mid-task with nobody able to react: only a devnet may run so.
        raise click.UsageError("a deployment from a keystore needs --timelock-blocks N > 0 (owner "
                               "changes wait N blocks, announced); 0 is for devnets (--dev-account)")
    key = load_key(settings, dev_account, keystore, password_file)
    try:
        chain_id = Rpc(settings.chain.rpc_url, timeout_s=settings.chain.timeout_s).chain_id
        path = settings.manifest_path(chain_id)
        manifest = deploy_all(
            rpc_url=settings.chain.rpc_url,
            private_key=key,
            manifest_path=path,
            params=replace(
                DeployParams.from_settings(settings.protocol, slasher=slasher),
                verification=VerificationParams.from_settings(settings.verification),
                timelock_blocks=timelock,
            ),
        )
    except ContractsError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(manifest.to_json(), indent=2))
        return
    for name, dep in manifest.contracts.items():
        click.echo(f"{name:16s} {dep.address}")
    click.echo(f"manifest written to {path} (chain {manifest.chain_id})")


@contracts.command("check")
@click.pass_obj
def check_cmd(settings: Settings) -> None:
    """Check the manifest matches the chain (chain id, code) and this checkout's artifacts."""
    from contracts.manifest import Manifest, check_artifacts, check_live
    from contracts.rpc import Rpc

    try:
        rpc = Rpc(settings.chain.rpc_url, timeout_s=settings.chain.timeout_s)
        path = settings.manifest_path(rpc.chain_id)
        manifest = Manifest.load(path)
        check_live(rpc, manifest)
        check_artifacts(manifest)
    except ContractsError as exc:
        _fail(exc)
    click.echo(f"{path}: live on chain {rpc.chain_id}")
