"""`veriplex explorer` as a real process: it indexes the devnet it is pointed at and serves the UI;
pointed at a dead endpoint it still serves, saying the indexer is behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.explorer import Activity, free_port


@contextmanager
def explorer_process(home: Path, *args: str) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
    env.update(VERIPLEX_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "veriplex.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "explorer ready at" in line, line + proc.stdout.read()
        yield line.split("explorer ready at ", 1)[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(15)


def _wait(url: str, ok: object, timeout_s: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        st = httpx.get(url + "/api/status", timeout=5).json()
        if ok(st):  # type: ignore[operator]
            return st  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, st
        time.sleep(0.2)


def test_the_explorer_command_indexes_the_chain_and_serves_the_request_page(
        activity: Activity, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'x.sqlite'}"
    with explorer_process(tmp_path, "--manifest", str(activity.devnet.manifest_path), "explorer",
                          "--rpc-url", activity.devnet.url, "--db-url", db, "--port", "0",
                          "--gateway-url", "http://gw.example:9000") as url:
        st = _wait(url, lambda s: s["head"] is not None and s["indexed"] == s["head"])
        assert st["behind"] is False
        page = httpx.get(f"{url}/request/{activity.request_id}", timeout=10)
        assert page.status_code == 200 and activity.commitment_root in page.text
        data = httpx.get(f"{url}/api/request/{activity.request_id}", timeout=10).json()["data"]
        assert data["gateway_receipt"]["url"] == \
            f"http://gw.example:9000/v1/receipts/{activity.request_id}"


def test_the_explorer_command_stays_up_when_the_rpc_endpoint_is_unreachable(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with explorer_process(tmp_path, "explorer", "--rpc-url", dead, "--port", "0") as url:
        st = _wait(url, lambda s: s["last_error"] is not None)
        assert st["behind"] is True
        home = httpx.get(url + "/", timeout=10)
        assert home.status_code == 200 and "indexer is behind" in home.text
    assert (tmp_path / "explorer.sqlite").is_file()  # the default index lives under the home


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
    env.update(VERIPLEX_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "veriplex.cli", "explorer", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_an_unreachable_index_database_is_named_without_its_password(tmp_path: Path) -> None:
    res = _run(tmp_path, "--db-url", f"postgresql+psycopg://bob:s3cret@127.0.0.1:{free_port()}/x",
               "--port", "0")
    assert res.returncode == 1
    assert "cannot open the index database postgresql+psycopg://bob:***@" in res.stderr
    assert "s3cret" not in res.stderr + res.stdout


def test_a_gateway_url_that_is_not_http_is_refused(tmp_path: Path) -> None:
    res = _run(tmp_path, "--gateway-url", "ftp://gw.example", "--port", "0")
    assert res.returncode == 2 and "--gateway-url" in res.stderr and "http(s) URL" in res.stderr
