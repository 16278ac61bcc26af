"""`veriplex node doctor OWNER`: checks the box before it joins, one line per check, with the fix
for each failure.

    veriplex node doctor OWNER [--operator NAME] [--model DIR] [--model-id N]
                               [--max-skew-s S] [--json]

Checks, in order (each independent: one failure never hides the others):

- ``device``: the device stages will run on (CUDA if present and asked for, else the CPU) and its
  memory; enough for at least one layer of the model; not less than the VRAM the node registered
  (the scheduler places layers by the registered figure).
- ``model``: the checkpoint (``--model``, else ``<models dir>/<registered model name>``) hashes to
  the weights root and tokenizer hash the ModelRegistry holds for the model.
- ``endpoint``: the registered data-plane endpoint accepts a TCP connection.
- ``keystore``: the operator's (and owner's) keystore files are not readable by others and the
  keystore directory is not writable by others.
- ``stake``: registered, the operator key is the one registered, stake at or above the minimum,
  not jailed, not unbonding (what the registry's `is_active` requires to be scheduled).
- ``clock``: the local clock agrees with the chain within ``--max-skew-s`` (default: the
  coordinator's heartbeat bound): the latest block must not be ahead of us, and when the chain is
  idle the RPC server's HTTP `Date` tells a stale head from a fast clock.

Exit status 0 when every check passes, 1 otherwise. Reads only: it never sends a transaction and
never unlocks a key.
"""

from __future__ import annotations

import email.utils
import json
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import click
import httpx

from contracts.client import Chain
from contracts.errors import ContractsError
from contracts.model_registry import ModelInfo
from contracts.node_registry import NodeInfo
from node.cli.chain import connect, format_eth
from node.wallet.cli import JSON, open_keystore, resolve_address
from node.wallet.errors import WalletError
from protocol.settings import Settings

MIB = 2**20


@dataclass(frozen=True)
class Check:
    """One check's outcome: `fix` says what to do when it failed."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return f"{mark} {self.name:<9} {self.detail}" + (f" — fix: {self.fix}" if self.fix else "")


@dataclass
class Context:
    """What the checks share: the settings, the node as the chain has it, the inputs."""

    settings: Settings
    owner: str
    owner_name: str | None
    operator_name: str | None
    model_dir: Path | None
    model_id: int | None
    max_skew_s: float
    chain: Chain | None = None
    chain_error: str | None = None
    info: NodeInfo | None = None


# ---------------------------------------------------------------------- device
def device_memory(device: str) -> tuple[str, int, str | None]:
    """(device name, memory MiB, problem) for the configured stage device."""
    want_cuda = device.startswith("cuda")
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None and torch.cuda.is_available() and device in (
            "auto", *([device] if want_cuda else [])):
        props = torch.cuda.get_device_properties(torch.device(
            device if want_cuda else "cuda:0"))
        return props.name, props.total_memory // MIB, None
    from node.runtime.hardware import _cpu_name, _memory_mib

    problem = (f"models.device is {device!r} but no CUDA device is available" if want_cuda
               else None)
    return f"CPU {_cpu_name()}", _memory_mib(), problem


def _layer_bytes(model_dir: Path) -> tuple[int, int] | None:
    """(layers, bytes of the largest decoder layer) of a checkpoint, from its headers only."""
    from node.runtime.models.hashing import _safetensors_entries, safetensors_files

    try:
        cfg = json.loads((model_dir / "config.json").read_text())
        layers = int(cfg["num_hidden_layers"])
        per: dict[int, int] = {}
        for f in safetensors_files(model_dir):
            for e in _safetensors_entries(f):
                parts = e.name.split(".")
                if "layers" in parts and parts.index("layers") + 1 < len(parts):
                    k = int(parts[parts.index("layers") + 1])
                    per[k] = per.get(k, 0) + e.end - e.begin
    except (OSError, ValueError, KeyError):
        return None
    return layers, max(per.values(), default=0)


def check_device(c: Context) -> Check:
    name, mem_mib, problem = device_memory(c.settings.models.device)
    if problem:
        return Check("device", False, f"{name}, {mem_mib} MiB: {problem}",
                     "install a CUDA build of torch, or set models.device = \"cpu\"")
    detail = f"{name}, {mem_mib} MiB"
    model = _model_dir(c)[0]
    shape = _layer_bytes(model) if model is not None else None
    if shape is not None and shape[1]:
        fit = mem_mib * MIB // shape[1]
        detail += f"; {fit} layer(s) of {shape[1] / MIB:.1f} MiB fit (the model has {shape[0]})"
        if fit < 1:
            return Check("device", False, detail + ": not even one layer",
                         "run on a device with more memory, or serve a smaller model")
    if c.info is not None and c.info.registered and c.info.hardware.vram_mib > mem_mib:
        return Check("device", False,
                     f"{detail}, but the node registered {c.info.hardware.vram_mib} MiB: the "
                     "scheduler would place layers that do not fit",
                     f"veriplex node update {c.owner_name or c.owner} --vram-mib {mem_mib}")
    return Check("device", True, detail)


# ---------------------------------------------------------------------- model
def _registered_model(c: Context) -> tuple[ModelInfo | None, str | None]:
    if c.chain is None:
        return None, f"chain unreachable ({c.chain_error})"
    reg = c.chain.model_registry
    if c.model_id is not None:
        m = reg.model(c.model_id)
        return (m, None) if m is not None else (None, f"model {c.model_id} is not registered")
    active = [m for m in reg.models() if m.active]
    if len(active) == 1:
        return active[0], None
    return None, (f"{len(active)} active models: say which with --model-id"
                  if active else "no active model is registered")


def _model_dir(c: Context) -> tuple[Path | None, ModelInfo | None, str | None]:
    m, err = _registered_model(c) if c.chain is not None else (None, None)
    if c.model_dir is not None:
        return c.model_dir, m, err
    if m is None:
        return None, None, err
    return c.settings.models_dir / m.name, m, err


def check_model(c: Context) -> Check:
    from node.runtime.models.hashing import CheckpointError, model_hashes

    path, m, err = _model_dir(c)
    if m is None:
        return Check("model", False, err or "no registered model to compare with",
                     "check --rpc-url/--manifest, or pass --model-id")
    if path is None or not path.is_dir():
        return Check("model", False, f"no checkpoint at {path} for model {m.model_id} ({m.name})",
                     f"veriplex model import ... --out {path}, or pass --model DIR")
    try:
        h = model_hashes(path)
    except (CheckpointError, OSError) as exc:
        return Check("model", False, f"{path}: {exc}",
                     "re-import the checkpoint (veriplex model import)")
    if h.weights_root != m.weights_root:
        return Check("model", False,
                     f"{path} hashes to weights root 0x{h.weights_root.hex()[:16]}…, model "
                     f"{m.model_id} ({m.name}) is registered with 0x{m.weights_root.hex()[:16]}…",
                     f"point --model at model {m.model_id}'s exact checkpoint (veriplex model "
                     "hash DIR shows a directory's root)")
    if h.tokenizer_hash != m.tokenizer_hash:
        return Check("model", False, f"{path}: weights match model {m.model_id} but its "
                     "tokenizer does not", "copy the registered model's tokenizer files")
    return Check("model", True, f"{path} is model {m.model_id} ({m.name}): weights root "
                 f"0x{m.weights_root.hex()[:16]}… ({h.num_tensors} tensors, "
                 f"{h.num_bytes / MIB:.1f} MiB)")


# ---------------------------------------------------------------------- endpoint
def check_endpoint(c: Context, timeout_s: float = 3.0) -> Check:
    if c.info is None or not c.info.registered:
        return Check("endpoint", False, "no registered endpoint to reach (node not registered)",
                     "veriplex node register ... --endpoint http://HOST:PORT")
    url = urlparse(c.info.endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            pass
    except OSError as exc:
        return Check("endpoint", False,
                     f"{c.info.endpoint} is not reachable ({exc.strerror or exc})",
                     f"start `veriplex node serve` on port {port} and open it to the network, "
                     f"or veriplex node update {c.owner_name or c.owner} --endpoint URL")
    return Check("endpoint", True, f"{c.info.endpoint} accepts connections")


# ---------------------------------------------------------------------- keystore
def _mode_problem(path: Path, directory: bool) -> str | None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if directory and mode & 0o022:
        return f"{path} is writable by others (mode {mode:o})"
    if not directory and mode & 0o077:
        return f"{path} is readable by others (mode {mode:o})"
    return None


def check_keystore(c: Context) -> Check:
    try:
        ks = open_keystore(c.settings)
    except WalletError as exc:
        return Check("keystore", False, str(exc), "veriplex wallet list --keystore-dir DIR")
    names: list[str] = []
    operator = c.operator_name
    if operator is None and c.info is not None and c.info.registered:
        operator = ks.find_address(c.info.operator)
    if operator is None:
        return Check("keystore", False,
                     f"the operator key is not in {ks.directory}",
                     "veriplex wallet import NAME (the operator's key), or pass --operator NAME")
    names.append(operator)
    if c.owner_name is not None:
        names.append(c.owner_name)
    problems = []
    if ks.directory.is_dir() and (p := _mode_problem(ks.directory, True)):
        problems.append((p, f"chmod 700 {ks.directory}"))
    for name in names:
        path = ks.path(name)
        if not path.is_file():
            problems.append((f"no keystore file {path}", f"veriplex wallet import {name}"))
        elif p := _mode_problem(path, False):
            problems.append((p, f"chmod 600 {path}"))
    if problems:
        return Check("keystore", False, "; ".join(p for p, _ in problems),
                     "; ".join(f for _, f in problems))
    return Check("keystore", True, f"{', '.join(names)} in {ks.directory}: private (0600)")


# ---------------------------------------------------------------------- stake
def check_stake(c: Context) -> Check:
    if c.chain is None:
        return Check("stake", False, f"chain unreachable ({c.chain_error})",
                     "check --rpc-url and --manifest")
    who = c.owner_name or c.owner
    info = c.info
    if info is None or not info.registered:
        return Check("stake", False, f"{c.owner} has no registered node",
                     f"veriplex node register --owner {who} --operator OPERATOR "
                     "--endpoint URL --stake AMOUNT")
    reg = c.chain.node_registry
    minimum = reg.params().min_stake_wei
    block = c.chain.block_number()
    if c.operator_name is not None:
        try:
            mine = resolve_address(c.settings, c.operator_name)
        except (WalletError, click.ClickException) as exc:
            mine = f"unknown ({exc})"
        if mine.lower() != info.operator.lower():
            return Check("stake", False, f"the node's registered operator is {info.operator}, "
                         f"not {c.operator_name} ({mine})",
                         f"veriplex node rotate-operator {who} --operator {c.operator_name}")
    if info.stake_wei < minimum:
        return Check("stake", False, f"stake {format_eth(info.stake_wei)} is below the minimum "
                     f"{format_eth(minimum)}",
                     f"veriplex node stake {who} {format_eth(minimum - info.stake_wei)[:-4]}")
    if info.jailed_until > block:
        return Check("stake", False, f"jailed until block {info.jailed_until} (now {block}): "
                     "it cannot be scheduled", "wait for the term to end, then unjail")
    if info.unbonding_wei:
        return Check("stake", False, f"unbonding {format_eth(info.unbonding_wei)}: a node "
                     "leaving is not scheduled",
                     f"withdraw it (veriplex node withdraw {who}) and stake again")
    active = reg.is_active(info.operator)
    return Check("stake", active, f"registered, stake {format_eth(info.stake_wei)} "
                 f"(minimum {format_eth(minimum)}), active: {'yes' if active else 'no'}",
                 None if active else "veriplex node status " + who)


# ---------------------------------------------------------------------- clock
def _server_time(url: str, timeout_s: float) -> float | None:
    try:
        r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"},
                       timeout=timeout_s)
        date = r.headers.get("date")
        return email.utils.parsedate_to_datetime(date).timestamp() if date else None
    except (httpx.HTTPError, TypeError, ValueError):
        return None


def check_clock(c: Context, now: Callable[[], float] = time.time) -> Check:
    if c.chain is None:
        return Check("clock", False, f"chain unreachable ({c.chain_error})",
                     "check --rpc-url")
    head = c.chain.rpc.latest_timestamp()
    local = now()
    skew = local - head  # > 0: the head is older than our clock says
    fix = "sync the clock (timedatectl set-ntp true, or chrony/ntpd)"
    if skew < -c.max_skew_s:
        return Check("clock", False, f"the latest block is {-skew:.0f} s ahead of this clock "
                     f"(bound {c.max_skew_s:g} s): this clock is behind", fix)
    if skew > c.max_skew_s:
        server = _server_time(c.settings.chain.rpc_url, c.settings.chain.timeout_s)
        if server is None:
            return Check("clock", False, f"the latest block is {skew:.0f} s old and the RPC "
                         "server sends no Date to compare with", fix)
        off = local - server
        if abs(off) > c.max_skew_s + 1:  # Date has a one-second resolution
            return Check("clock", False, f"this clock is {off:+.0f} s off the RPC server's "
                         f"(bound {c.max_skew_s:g} s)", fix)
        return Check("clock", True, f"within {abs(off) + 1:.0f} s of the RPC server (the chain "
                     f"is idle: its head is {skew:.0f} s old)")
    return Check("clock", True, f"{skew:+.1f} s from the latest block (bound "
                 f"{c.max_skew_s:g} s)")


CHECKS: tuple[Callable[[Context], Check], ...] = (
    check_device, check_model, check_endpoint, check_keystore, check_stake, check_clock)


def run_checks(c: Context) -> list[Check]:
    """Every check, each on its own: an unexpected error is that check's failure."""
    try:
        c.chain = connect(c.settings)
        c.info = c.chain.node_registry.node(c.owner)
    except (ContractsError, OSError, ValueError) as exc:
        c.chain, c.chain_error = None, str(exc).splitlines()[0] if str(exc) else repr(exc)
    out = []
    for check in CHECKS:
        try:
            out.append(check(c))
        except (ContractsError, WalletError, OSError, ValueError) as exc:
            name = check.__name__.removeprefix("check_")
            out.append(Check(name, False, f"could not check: {exc}", "see the message"))
    return out


@click.command("doctor")
@click.argument("owner")
@click.option("--operator", "operator_name", default=None,
              help="The operator's wallet account (default: found by the registered address).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoint directory (default: <models dir>/<registered model name>).")
@click.option("--model-id", type=click.IntRange(min=1), default=None,
              help="Registered model to compare with (default: the only active one).")
@click.option("--max-skew-s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Clock skew allowed against the chain (default: coordinator.max_clock_skew_s).")
@JSON
@click.pass_obj
def doctor(settings: Settings, owner: str, operator_name: str | None, model_dir: Path | None,
           model_id: int | None, max_skew_s: float | None, as_json: bool) -> None:
    """Check this box before OWNER's node joins: device, model, endpoint, keys, stake, clock."""
    try:
        owner_addr = resolve_address(settings, owner)
    except (WalletError, click.ClickException) as exc:
        raise click.ClickException(f"owner {owner!r}: {exc}") from None
    owner_name = None if owner.startswith("0x") else owner
    ctx = Context(settings, owner_addr, owner_name, operator_name, model_dir, model_id,
                  max_skew_s or settings.coordinator.max_clock_skew_s)
    checks = run_checks(ctx)
    failed = [ch for ch in checks if not ch.ok]
    if as_json:
        click.echo(json.dumps({"owner": owner_addr, "ok": not failed,
                               "checks": [asdict(ch) for ch in checks]}, indent=2))
    else:
        for ch in checks:
            click.echo(ch.line())
        click.echo(f"{len(checks) - len(failed)} of {len(checks)} checks passed"
                   + (": fix the failures above before joining" if failed else ": ready to join"))
    if failed:
        raise SystemExit(1)

