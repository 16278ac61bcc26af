"""`running_devnet`: a real `veriplex devnet up` subprocess for tests and scripts.

    with running_devnet(tmp_path) as dn:
        w3 = Web3(Web3.HTTPProvider(dn.url))

The devnet runs with ``VERIPLEX_HOME=workdir`` (so its database and manifest live there) on a
free loopback port it picks itself (``--port 0``; the URL is read from its ``ready`` line, so
there is no port race). On exit it is stopped with one SIGTERM and the helper checks the process
is gone; a devnet that needed more than that is an error. This interface is used by other
packages' tests: keep it stable.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
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
