"""What `veriplex up` prepares before it starts long-running processes: its options, the model
checkpoint (SmolLM2 imported once, a tiny test model built, or a directory), the chain settings
sent with the devnet owner key through `contracts.client` (the model on the ModelRegistry, demo
verification parameters and a verification window to match), and each worker set up exactly as an
operator would — the `veriplex wallet new`, `devnet fund` and `node register` commands themselves,
run in this process one at a time (`run_cli`), which spares a Python start-up per command.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from veriplex.stack import Child

ETH = 10**18
GATEWAY_DEV_INDEX = 3  # the gateway's key: a dev account of its own (the coordinator uses 0)
FUNDER_DEV_INDEX = 4  # the dev account that funds the workers (clients: 9)
PRICE_IN_WEI, PRICE_OUT_WEI = 10**9, 3 * 10**9  # per token
WORKER_STAKE_ETH = "2"
START_TIMEOUT_S = 240.0
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class UpError(RuntimeError):
    """`veriplex up` could not bring the network up; the message says which part and why."""


@dataclass
class UpOptions:
    data_dir: Path
    models_dir: Path  # where `veriplex model import smollm2` keeps its checkpoint
    model: str = "smollm2"  # smollm2 | tiny | a checkpoint directory
    workers: int = 4
    stages: int = 2
    verifiers: int | None = None  # default: what is left after one replica, at most 2
    perturbed: int = 0
    perturb_std: float = 0.01
    verifier_policy: str | None = None
    port_base: int | None = None  # None: free ports
    block_time: float = 1.0
    sample_bps: int = 10_000
    committee_size: int = 2

    def roles(self) -> tuple[int, int]:
        """(pipeline workers, verifier-only workers)."""
        v = self.verifiers if self.verifiers is not None else max(0, min(2, self.workers - self.stages))
        if self.workers < 1 or v < 0 or self.workers - v < self.stages:
            raise UpError(f"{self.workers} workers with {v} verifier-only ones cannot fill a "
                          f"{self.stages}-stage pipeline")
        if not 0 <= self.perturbed <= self.workers - v:
            raise UpError(f"--perturbed {self.perturbed}: only {self.workers - v} pipeline workers")
        return self.workers - v, v


@dataclass
class Worker:
    index: int
    owner: str  # wallet account names
    operator: str
    port: int
    vram_mib: int
    role: str  # "pipeline" | "standby" (hot standby: verifies, promoted when a stage is evicted)
    perturbed: bool
    address: str = ""
    child: Child | None = None


_CLI_LOCK = threading.Lock()


def cli_config(home: Path) -> Path:
    """The settings file `run_cli` passes: this network's keystores, with a cheaper scrypt (2^14:
    throw-away local wallets; their password is in a 0600 file beside them)."""
    path = home / "veriplex.toml"
    if not path.is_file():
        path.write_text(f"[wallet]\nscrypt_n = {2**14}\n")
    return path


def run_cli(home: Path, args: list[str]) -> str:
    """`veriplex ARGS` — the very commands an operator or client types — run in this process
    (one at a time) with this network's settings; returns what it printed. A failure raises
    UpError with the command's own message (a password file path is never shown)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from veriplex.cli import cli

    shown = " ".join(a if not a.endswith("password") else "<password-file>" for a in args)
    out, err = io.StringIO(), io.StringIO()
    with _CLI_LOCK, redirect_stdout(out), redirect_stderr(err):
        try:
            code = cli.main(["--config", str(cli_config(home)), "--keystore-dir",
                             str(home / "keystores"), *args], prog_name="veriplex",
                            standalone_mode=False)
        except click.ClickException as exc:
            raise UpError(f"`veriplex {shown}` failed: {exc.format_message()}") from None
        except click.Abort:
            raise UpError(f"`veriplex {shown}` was aborted (it wanted input)") from None
    if code not in (None, 0):
        raise UpError(f"`veriplex {shown}` exited with {code}: {err.getvalue().strip()}")
    return out.getvalue()


# ----------------------------------------------------------------------------- model
def resolve_checkpoint(opts: UpOptions, say: Callable[[str], None]) -> tuple[Path, str, bytes, bytes]:
    """(checkpoint dir, registry name, weights root, tokenizer hash) of `opts.model`."""
    from node.runtime.models.hashing import model_hashes

    if opts.model == "smollm2":
        from node.runtime.models.importer import import_model

        out = opts.models_dir / "smollm2"
        say(f"model: SmolLM2-135M-Instruct at {out} (imported once, then reused)")
        r = import_model("smollm2", out, progress=say)
        return Path(r.path), "smollm2", bytes.fromhex(r.weights_root[2:]), \
            bytes.fromhex(r.tokenizer_hash[2:])
    if opts.model == "tiny":
        from node.runtime.models.tiny import build_tiny_model

        ckpt = opts.data_dir / "models" / "tiny"
        if not (ckpt / "config.json").is_file():
            say(f"model: building a tiny random Llama (8 layers) at {ckpt}")
            build_tiny_model(ckpt, arch="llama", seed=0)
            (ckpt / "chat_template.jinja").write_text(CHATML)
        name = "tiny"
    else:
        ckpt = Path(opts.model).expanduser().resolve()
        if not (ckpt / "config.json").is_file():
            raise UpError(f"--model {opts.model}: no config.json there (give smollm2, tiny or a "
                          f"checkpoint directory)")
        name = ckpt.name
    h = model_hashes(ckpt)
    return ckpt, name, h.weights_root, h.tokenizer_hash


# ----------------------------------------------------------------------------- chain settings
def register_serving(admin: Any, model_id: int, say: Callable[[str], None]) -> None:
    """Record the precision the workers `up` starts will serve in (their "auto" dtype: bf16 on
    CUDA, fp32 on CPU) with the shipped profile of it and its chunk rule, so verifiers judge by
    that profile and the contract's spot check by its rule."""
    import torch

    from node.runtime.shard import resolve_device_dtype
    from verifier.profiles import SHIPPED

    _, dtype = resolve_device_dtype()
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    prof = SHIPPED[precision]
    if admin.model_registry.serving(model_id).profile_hash != prof.hash:
        admin.model_registry.set_serving(model_id, precision, prof.hash, prof.chunk_rule)
    d, k = prof.chunk_rule
    say(f"ModelRegistry: model {model_id} served in {precision}, profile 0x{prof.hash.hex()[:12]}…, "
        f"spot-check rule D={d}, K={k}")


def configure_chain(rpc_url: str, manifest: Path, mnemonic: str, name: str, layers: int,
                    hidden: int, weights_root: bytes, tokenizer_hash: bytes, opts: UpOptions,
                    say: Callable[[str], None]) -> int:
    """Owner-key settings for a demo network; returns the model id (registered if absent)."""
    from dataclasses import replace

    from contracts.client import Chain, dev_key
    from contracts.rpc import Signer

    admin = Chain.connect(rpc_url, manifest, signer=Signer.from_key(dev_key(0, mnemonic)))
    info = admin.model_registry.model_by_name(name)
    if info is None:
        model_id = admin.model_registry.register_model(name, layers, hidden, weights_root,
                                                       tokenizer_hash, PRICE_IN_WEI, PRICE_OUT_WEI)
        say(f"ModelRegistry: registered {name!r} as model {model_id} (weights root "
            f"0x{weights_root.hex()[:16]}…)")
    else:
        if info.weights_root != weights_root:
            raise UpError(f"model {name!r} is on the ModelRegistry with other weights "
                          f"(0x{info.weights_root.hex()[:16]}…); use a fresh --data-dir")
        model_id = info.model_id
        say(f"ModelRegistry: {name!r} is model {model_id}")
    register_serving(admin, model_id, say)
    v = admin.verification
    # Phases of ~10 s: room for a verifier on a loaded 2-core machine to load the layers and
    # re-execute before it must commit, yet a whole task takes well under a minute.
    phases = max(4, round(10 / max(opts.block_time, 0.2)))
    want = replace(v.params(), sample_bps=opts.sample_bps, committee_size=opts.committee_size,
                   max_rounds=1, commit_blocks=phases * 2, reveal_blocks=phases,
                   open_blocks=phases, randomness_delay=1)
    window = want.randomness_delay + max(20, round(30 / max(opts.block_time, 0.2)), want.min_window())
    reg = admin.node_registry.params()
    # Unbonding must outlast the window plus a task's worst-case lifetime (the contracts refuse
    # anything shorter): raise it first, then the game's phases may grow.
    unbonding = window + want.task_lifetime() + 10
    if reg.unbonding_period < unbonding:
        admin.node_registry.set_params(reg.min_stake_wei, unbonding, reg.prover_share_bps)
    if v.params() != want:
        want.validate()
        v.set_params(want)
    say(f"Verification: sample {want.sample_bps / 100:g}% of requests, committee of "
        f"{want.committee_size}, commit/reveal/open {want.commit_blocks}/{want.reveal_blocks}/"
        f"{want.open_blocks} blocks")
    # The window only has to cover the gateway opening its tasks (the sampling randomness comes
    # `randomness_delay` blocks after the settle block): a batch with an open task is not released
    # before the task ends anyway. Short, so the demo shows operators paid.
    pay = admin.payments.params()
    if int(pay["verification_window"]) < window:
        admin.payments.set_params(window, int(pay["protocol_fee_bps"]), int(pay["verifier_share_bps"]))
    say(f"Payments: batches stay escrowed {max(window, int(pay['verification_window']))} blocks "
        f"(the verification window)")
    return model_id


# ----------------------------------------------------------------------------- workers


def setup_worker(net_home: Path, rpc_url: str, manifest: Path, w: Worker, password_file: Path,
                 funder: int, hardware: tuple[str, ...] = ()) -> str:
    """Wallets, funding and registration of one worker, through the operator's CLI commands
    (`hardware`: `node register` flags with the machine's measured figures, shared by its workers).
    On a data dir used before, what is there is kept: existing wallets, a registered node (its
    endpoint updated to this run's port, its stake topped up if a slash left it inactive)."""
    root = ["--rpc-url", rpc_url, "--manifest", str(manifest)]
    pw = ["--password-file", str(password_file)]
    url = f"http://127.0.0.1:{w.port}"
    have = {a["name"] for a in json.loads(run_cli(net_home, [*root, "wallet", "list",
                                                             "--json"]))["accounts"]}
    for name in (w.owner, w.operator):
        if name not in have:
            run_cli(net_home, [*root, "wallet", "new", name, *pw])
    state = json.loads(run_cli(net_home, [*root, "node", "status", w.owner, "--json"]))
    if not state["registered"]:
        run_cli(net_home, [*root, "devnet", "fund", w.owner, "5", "--from-account", str(funder)])
        # the operator (hot) key pays the gas of its verifier agent's transactions
        run_cli(net_home, [*root, "devnet", "fund", w.operator, "1", "--from-account",
                           str(funder)])
        state = json.loads(run_cli(net_home, [
            *root, "node", "register", "--owner", w.owner, "--operator", w.operator,
            "--endpoint", url, "--stake", WORKER_STAKE_ETH, "--vram-mib", str(w.vram_mib),
            "--net-bw-mbps", "10000", "--region", "local", *hardware, *pw, "--json"]))
        return str(state["operator"])
    if state["endpoint"] != url or state["hardware"]["vram_mib"] != w.vram_mib:
        run_cli(net_home, [*root, "node", "update", w.owner, "--endpoint", url, "--vram-mib",
                           str(w.vram_mib), *pw])
    if not state["active"] and not state["jailed"]:  # slashed below the minimum last time
        run_cli(net_home, [*root, "devnet", "fund", w.owner, WORKER_STAKE_ETH, "--from-account",
                           str(funder)])
        run_cli(net_home, [*root, "node", "stake", w.owner, WORKER_STAKE_ETH, *pw])
    return str(state["operator"])
