"""A throwaway PostgreSQL server for the explorer tests: `initdb` into a temp dir, `postgres` on a
free loopback port (as the `postgres` user when the tests run as root: PostgreSQL refuses root),
trust auth for one user, fsync off; stopped and removed on exit. `available()` says why it cannot
run here (no server binaries: Debian's `postgresql` package; no driver: `pip install
'veriplex[postgres]'`)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


def available() -> str | None:
    """None if a server can be started here, else why not."""
    if _bin("initdb") is None or _bin("postgres") is None:
        return "PostgreSQL server binaries not installed (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (pip install 'veriplex[postgres]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_postgres() -> Iterator[str]:
    """Start a server; yield its SQLAlchemy URL (`postgresql+psycopg://...`)."""
    import psycopg

    root = Path(tempfile.mkdtemp(prefix="veriplex-pg-"))
    as_user: dict[str, object] = {}
    if os.geteuid() == 0:  # the server will not run as root
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    data, port, user = root / "data", _free_port(), "veriplex"
    subprocess.run([str(_bin("initdb")), "-D", str(data), "-U", user, "-A", "trust",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True, timeout=120,
                   cwd=root, **as_user)  # type: ignore[call-overload]
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(_bin("postgres")), "-D", str(data), "-p", str(port),
                             "-k", str(root), "-c", "listen_addresses=127.0.0.1",
                             "-c", "fsync=off"], stdout=log, stderr=subprocess.STDOUT,
                            cwd=root, **as_user)  # type: ignore[call-overload]
    dsn = f"host=127.0.0.1 port={port} user={user} dbname=postgres"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(dsn, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("PostgreSQL did not start: "
                                       + (root / "server.log").read_text(errors="replace")) from None
                time.sleep(0.2)
        yield f"postgresql+psycopg://{user}@127.0.0.1:{port}/postgres"
    finally:
        proc.send_signal(signal.SIGINT)  # "fast" shutdown: do not wait for clients to leave
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
