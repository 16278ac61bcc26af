"""`running_devnet` / `running_anvil`: a real chain in a child process, for the chain-only demo, tests and benches.

    with running_devnet(tmp_path) as dn:
        w3 = Web3(Web3.HTTPProvider(dn.url))

The devnet runs with ``VERIPLEX_HOME=workdir`` (so its database and manifest live there) on a
free loopback port it picks itself (``--port 0``; the URL is read from its ``ready`` line, so
there is no port race). On exit it is stopped with one SIGTERM and the helper checks the process
is gone; a devnet that needed more than that is an error. This interface is used by other
packages' tests: keep it stable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devnet.errors import DevnetError

READY = re.compile(r"ready at (http://\S+) \(chain id (\d+), .* manifest (.+)\)$")
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class DevnetHandle:
    url: str
    db_path: Path
    manifest_path: Path
    chain_id: int
    pid: int


def _env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
    env["VERIPLEX_HOME"] = str(workdir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextmanager
def running_devnet(workdir: Path, *, block_time: float = 0.0, deploy: bool = True,
                   extra_args: tuple[str, ...] = ()) -> Iterator[DevnetHandle]:
    """Start a devnet whose state lives in `workdir`; stop it (one SIGTERM) on exit."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    db_path = workdir / "devnet.sqlite"
    cmd = [sys.executable, "-m", "veriplex.cli", "devnet", "up", "--host", "127.0.0.1",
           "--port", "0", "--db", str(db_path), "--block-time", str(block_time),
           "--deploy" if deploy else "--no-deploy", *extra_args]
    proc = subprocess.Popen(cmd, env=_env(workdir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()
    found: dict[str, str] = {}

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            m = READY.search(line)
            if m and not ready.is_set():
                found.update(url=m.group(1), chain_id=m.group(2), manifest=m.group(3))
                ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                reader.join(timeout=2)
                raise DevnetError(
                    "the devnet did not become ready (exit status "
                    f"{proc.poll()}); its output:\n" + "\n".join(lines[-40:]))
        yield DevnetHandle(url=found["url"], db_path=db_path,
                           manifest_path=Path(found["manifest"]),
                           chain_id=int(found["chain_id"]), pid=proc.pid)
    finally:
        stop(proc, lines)
        reader.join(timeout=2)
        if proc.stdout is not None:
            proc.stdout.close()


def stop(proc: subprocess.Popen[str], lines: list[str] | None = None) -> None:
    """One SIGTERM, then insist the process is gone."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise DevnetError(
                f"devnet pid {proc.pid} ignored SIGTERM for {STOP_TIMEOUT_S}s and was killed"
            ) from None
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return
    raise DevnetError(f"devnet pid {proc.pid} is still alive after stopping")


# ------------------------------------------------------------------------------------ anvil
# The reference node of the conformance suite, and the second chain every chain-facing test may
# run on. The npm `anvil` is a node wrapper around the real binary: both PIDs are checked gone.

ANVIL_CHAIN_ID = 31337


@dataclass(frozen=True)
class AnvilHandle:
    url: str
    chain_id: int
    pid: int


def anvil_binary() -> Path:
    """The anvil that `make setup` installs from npm, else one on PATH."""
    local = Path(__file__).resolve().parents[1] / "node_modules" / ".bin" / "anvil"
    if local.exists():
        return local
    found = shutil.which("anvil")
    if found is None:
        raise DevnetError(f"anvil not found at {local} nor on PATH: run `make setup` (npm install)")
    return Path(found)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    payload = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    req = urllib.request.Request(url, data=payload.encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=1.0) as reply:
            return "result" in json.loads(reply.read())
    except (OSError, ValueError):
        return False


def _child_pids(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, ...
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _assert_gone(pid: int, wait_s: float = 5.0) -> None:
    deadline = time.monotonic() + wait_s
    state = "?"
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        time.sleep(0.05)
    if state != "Z":
        os.kill(pid, signal.SIGKILL)
    raise DevnetError(f"anvil process {pid} is still present after shutdown (state {state})")


@contextmanager
def running_anvil(workdir: Path | None = None, *, block_time: int = 0,
                  chain_id: int = ANVIL_CHAIN_ID) -> Iterator[AnvilHandle]:
    """anvil (dev mnemonic accounts, cancun) on a free loopback port; stopped and checked gone."""
    argv = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(_free_port()), "--silent",
            "--chain-id", str(chain_id), "--hardfork", "cancun"]
    if block_time:
        argv += ["--block-time", str(block_time)]
    url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
    log = (Path(workdir) / "anvil.log") if workdir is not None else None
    sink = log.open("wb") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    finally:
        if log is not None:
            sink.close()  # type: ignore[union-attr]
    binaries: list[int] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text()[-2000:] if log is not None else ""
                raise DevnetError(f"anvil did not answer on {url} (exit {proc.poll()}) {tail}")
            time.sleep(0.05)
        binaries = _child_pids(proc.pid)
        yield AnvilHandle(url=url, chain_id=chain_id, pid=proc.pid)
    finally:
        proc.terminate()  # the wrapper forwards SIGTERM to the binary
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for pid in (proc.pid, *binaries):
            _assert_gone(pid)
