"""`veriplex demo chain`: the chain-only scenario (operators, clients, unbonding, restarts).

It starts the embedded devnet (a real `veriplex devnet up` process, contracts deployed at start),
then drives the chain only through the `veriplex` command a user would type, each call a separate
process: wallets, funding, an operator registering and staking, a client depositing and creating an
API key, unbonding and withdrawing after the unbonding period, and finally a devnet restart that
shows the chain state survived. Everything lives in a fresh state directory (removed at the end
unless `--keep`). The full main job (`veriplex demo`) lives in `veriplex.demo`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click


class DemoError(RuntimeError):
    """A step of the scenario failed; the message says which and why."""


class Shell:
    """Runs `veriplex ...` as a child process against one state directory and devnet."""

    def __init__(self, home: Path, rpc_url: str, password_file: Path) -> None:
        self.home, self.rpc_url, self.password_file = home, rpc_url, password_file

    def run(self, *args: str, show: bool = True, expect_fail: bool = False) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
        env.update(VERIPLEX_HOME=str(self.home), VERIPLEX_WALLET__SCRYPT_N=str(2**14))
        cmd = [sys.executable, "-m", "veriplex.cli", "--rpc-url", self.rpc_url, *args]
        shown = " ".join("<password-file>" if a == str(self.password_file) else a for a in args)
        click.secho(f"$ veriplex {shown}", fg="cyan")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if expect_fail:
            if proc.returncode == 0:
                raise DemoError(f"`veriplex {shown}` should have been refused but succeeded")
            click.echo(f"    refused as expected: {proc.stderr.strip()}")
            return proc.stderr
        if proc.returncode != 0:
            raise DemoError(f"`veriplex {shown}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
        if show and proc.stdout.strip():
            click.echo("    " + proc.stdout.strip().replace("\n", "\n    "))
        return proc.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json", show=False))

    def pw(self) -> tuple[str, str]:
        return ("--password-file", str(self.password_file))


def _step(title: str) -> None:
    click.secho(f"\n== {title}", bold=True)


def _mine(rpc_url: str, blocks: int) -> int:
    from contracts.rpc import Rpc

    rpc = Rpc(rpc_url)
    rpc.mine(blocks)
    return rpc.block_number()


def run_scenario(home: Path) -> dict[str, Any]:
    """Run the scenario in `home`; return what it observed (for tests and the summary)."""
    from contracts.manifest import Manifest
    from devnet.process import running_devnet

    password_file = home / "demo-password"
    home.mkdir(parents=True, exist_ok=True)
    password_file.write_text(secrets.token_urlsafe(24))
    password_file.chmod(0o600)
    seen: dict[str, Any] = {}

    _step("Start the devnet (py-evm over JSON-RPC, state in SQLite) and deploy the contracts")
    with running_devnet(home) as dn:
        manifest = Manifest.load(dn.manifest_path)
        click.echo(f"    devnet at {dn.url}, chain id {dn.chain_id}, database {dn.db_path}")
        for name, entry in sorted(manifest.contracts.items()):
            click.echo(f"    {name:<14} {entry.address}")
        sh = Shell(home, dn.url, password_file)

        _step("Create wallets: an operator's cold owner key, its hot operator key, a client")
        for name in ("alice", "alice-gpu", "carol"):
            sh.run("wallet", "new", name, *sh.pw())
        sh.run("devnet", "fund", "alice", "10")
        sh.run("devnet", "fund", "carol", "5")

        _step("The operator registers its GPU node and stakes 2 ETH")
        sh.run("node", "register", "--owner", "alice", "--operator", "alice-gpu",
               "--endpoint", "http://127.0.0.1:7001", "--stake", "2", *sh.pw())
        status = sh.json("node", "status", "alice")
        click.echo(f"    registered={status['registered']} stake_wei={status['stake_wei']} "
                   f"operator={status['operator']}")
        seen["registered"] = status["registered"]

        _step("The client deposits 1 ETH and creates an API key (an EIP-712 spending authorization)")
        sh.run("client", "deposit", "1", "--account", "carol", *sh.pw())
        key = sh.run("client", "key", "create", "--account", "carol", "--cap", "0.5",
                     "--expires", "30d", *sh.pw(), show=False).strip()
        click.echo(f"    API key (bearer token): {key[:18]}… ({len(key)} chars)")
        seen["deposit_wei"] = sh.json("client", "balance", "carol")["deposit_wei"]

        _step("The operator unbonds; withdrawing early is refused; after the period it succeeds")
        sh.run("node", "unbond", "alice", *sh.pw())
        sh.run("node", "withdraw", "alice", *sh.pw(), expect_fail=True)
        period = int(manifest.params["unbonding_period_blocks"])
        block = _mine(dn.url, period)
        click.echo(f"    mined {period} blocks (unbonding period), head is now block {block}")
        sh.run("node", "withdraw", "alice", *sh.pw())
        seen["withdrawn_status"] = sh.json("node", "status", "alice")
        seen["block_before_restart"] = _mine(dn.url, 0)

    _step("Restart the devnet on the same database: state is intact")
    with running_devnet(home) as dn:
        sh = Shell(home, dn.url, password_file)
        seen["block_after_restart"] = _mine(dn.url, 0)
        seen["deposit_after_restart"] = sh.json("client", "balance", "carol")["deposit_wei"]
        click.echo(f"    block {seen['block_before_restart']} before, "
                   f"{seen['block_after_restart']} after; carol's deposit "
                   f"{seen['deposit_after_restart']} wei before and after")
    if seen["block_after_restart"] != seen["block_before_restart"]:
        raise DemoError("the devnet lost blocks across a restart")
    if seen["deposit_after_restart"] != seen["deposit_wei"]:
        raise DemoError("the devnet lost the client's deposit across a restart")
    return seen


@click.command("chain")
@click.option("--keep", is_flag=True, help="Keep the demo's state directory instead of removing it.")
@click.option("--dir", "state_dir", type=click.Path(path_type=Path), default=None,
              help="State directory to use (default: a fresh temporary one).")
def chain_demo(keep: bool, state_dir: Path | None) -> None:
    """The chain-only scenario: register, stake, pay, unbond, withdraw, restart the devnet."""
    home = state_dir or Path(tempfile.mkdtemp(prefix="veriplex-demo-"))
    started = time.monotonic()
    try:
        run_scenario(home)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if not keep and state_dir is None:
            shutil.rmtree(home, ignore_errors=True)
    click.secho(f"\ndemo finished in {time.monotonic() - started:.1f} s", fg="green", bold=True)
    if keep or state_dir is not None:
        click.echo(f"state kept in {home}")
