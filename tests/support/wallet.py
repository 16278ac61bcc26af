"""Helpers of the wallet tests (moved out of their conftest: fixtures stay there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner, Result

from veriplex.cli import cli

REPO = Path(__file__).resolve().parents[2]


FAST_SCRYPT_N = 1024  # the config's minimum; geth's 2^18 would take ~1 s per unlock


PASSWORD = "correct horse battery staple"


SLASHER_DEV_INDEX = 9  # plays the verification contract in tests that need a slash


def write_secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


@dataclass
class Veriplex:
    """Runs `veriplex ...` in-process against one home (keystores) and optionally one chain."""

    home: Path
    rpc_url: str | None = None
    manifest: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def keystore_dir(self) -> Path:
        return self.home / "keystores"

    def _global_args(self) -> list[str]:
        argv: list[str] = []
        if self.rpc_url:
            argv += ["--rpc-url", self.rpc_url]
        if self.manifest:
            argv += ["--manifest", str(self.manifest)]
        return argv

    def _env(self) -> dict[str, str]:
        return {"VERIPLEX_HOME": str(self.home), "VERIPLEX_WALLET__SCRYPT_N": str(FAST_SCRYPT_N),
                **self.env}

    def process(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the installed `veriplex` console script in a child process (stdin not a TTY)."""
        script = Path(sys.executable).parent / "veriplex"
        cmd = [str(script)] if script.exists() else [
            sys.executable, "-c", "from veriplex.cli import main; main()"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
        return subprocess.run([*cmd, *self._global_args(), *args], env={**env, **self._env()},
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    def __call__(self, *args: str, ok: bool = True) -> Result:
        result = CliRunner().invoke(cli, [*self._global_args(), *args], env=self._env(),
                                    catch_exceptions=False)
        if ok and result.exit_code != 0:
            raise AssertionError(f"veriplex {' '.join(args)} failed ({result.exit_code}):\n"
                                 f"{result.output}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)

    def fund(self, target: str, amount: str, ok: bool = True,
             devnet_chain_id: int | None = None) -> Any:
        """`veriplex devnet fund TARGET AMOUNT --json`. The command lives in node.cli.operator and
        is attached to the devnet group by devnet's CLI; invoked here directly, with the settings
        the root group would build."""
        from node.cli.operator import devnet_fund
        from protocol.settings import load_settings

        settings = load_settings(
            home=self.home, chain={"rpc_url": self.rpc_url, "manifest": self.manifest},
            wallet={"keystore_dir": self.keystore_dir, "scrypt_n": FAST_SCRYPT_N},
            **({"devnet": {"chain_id": devnet_chain_id}} if devnet_chain_id else {}))
        result = CliRunner().invoke(devnet_fund, [target, amount, "--json"], obj=settings,
                                    catch_exceptions=False)
        if not ok:
            return result
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


def rpc(url: str, method: str, *params: Any) -> Any:
    """One raw JSON-RPC call (test-side chain control such as anvil_mine)."""
    r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)},
                   timeout=10.0)
    body = r.json()
    if "error" in body:
        raise RuntimeError(f"{method}: {body['error']}")
    return body["result"]
