"""`veriplex up` end to end, as a user runs it: a real process that starts the devnet, explorer,
coordinator, gateway and three workers (a tiny model split into a 2-stage pipeline, one standby
verifier), prints its URLs, serves the unmodified `openai` client (plain and streaming) with paid
requests, and on SIGINT stops every child — no process is left, and no log holds the wallets'
password."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.up import paying_client
from veriplex.stack import group_members, processes


class Lines:
    """The lines a process prints, read by a thread (a select on a buffered pipe can miss lines
    already in Python's buffer)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self.lines = proc, []
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def until(self, marker: str, timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(marker in line for line in self.lines):
                return list(self.lines)
            if self.proc.poll() is not None and not self.thread.is_alive():
                break
            time.sleep(0.2)
        raise AssertionError(f"`veriplex up` did not print {marker!r} in {timeout_s} s "
                             f"(exit {self.proc.poll()}):\n" + "\n".join(self.lines[-40:]))


def field(lines: list[str], label: str, pattern: str = r"(\S+)") -> str:
    for line in lines:
        m = re.match(rf"\s+{label}\s+{pattern}", line)
        if m:
            return m.group(1)
    raise AssertionError(f"no {label!r} line in:\n" + "\n".join(lines))


def children_of(pid: int) -> list[int]:
    return [p for p, _, parent, _ in processes() if parent == pid]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_up_serves_openai_requests_on_a_two_stage_pipeline_and_sigint_stops_every_process(
        chat_tiny: Path, tmp_path: Path) -> None:
    import openai

    data = tmp_path / "up"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
    env.update(VERIPLEX_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "veriplex.cli", "up", "--model", str(chat_tiny),
                             "--workers", "3", "--data-dir", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    children: list[int] = []
    try:
        out = Lines(proc)
        lines = out.until("Ctrl-C stops everything", 300)
        children = children_of(proc.pid)
        assert len(children) == 1 + 1 + 1 + 1 + 3  # devnet, explorer, coordinator, gateway, workers
        rpc_url = field(lines, "RPC")
        gateway_url = field(lines, "gateway", r"(\S+)/v1")
        gateway = field(lines, "gateway", r"\S+/v1\s+.*gateway (0x[0-9a-fA-F]{40})\)")
        manifest = Path(field(lines, "manifest"))
        for label in ("explorer", "coordinator"):
            assert field(lines, label).startswith("http://127.0.0.1:")
        route = field(lines, "pipeline", r"(.+)$")
        assert route.count("->") == 1 and "[0," in route  # a 2-stage pipeline from layer 0

        token = paying_client(rpc_url, manifest, gateway)
        api = openai.OpenAI(base_url=gateway_url + "/v1", api_key=token, max_retries=0,
                            timeout=120)
        r = api.chat.completions.create(model=chat_tiny.name, max_tokens=5, temperature=0,
                                        messages=[{"role": "user", "content": "hello"}])
        receipt = r.model_extra["veriplex"]
        assert r.usage.completion_tokens == 5 and int(receipt["charge_wei"]) > 0
        assert len(receipt["pipeline"]) == 2
        stream = api.chat.completions.create(model=chat_tiny.name, max_tokens=4, temperature=0,
                                             stream=True,
                                             messages=[{"role": "user", "content": "hi"}])
        chunks = list(stream)
        streamed = [c.model_extra["veriplex"] for c in chunks if (c.model_extra or {}).get("veriplex")]
        assert len(streamed) == 1 and streamed[0]["request_id"] != receipt["request_id"]

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
        tail = "\n".join(out.until("stopped.", 10))
        assert "SIGINT: stopping 7 processes" in tail
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    leftover = [p for p in children if group_members(p)]
    assert leftover == [], f"process groups still alive: {leftover}"
    password = (data / "secrets" / "wallet-password").read_text().strip()
    logs = sorted((data / "logs").glob("*.log"))
    assert {p.stem for p in logs} >= {"devnet", "explorer", "coordinator", "gateway", "worker-0"}
    assert all(password not in p.read_text(errors="replace") for p in logs)
