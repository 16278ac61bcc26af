"""Process supervision for `veriplex up`: children started, watched for their ready line, stopped.

Each child runs `python -m veriplex.cli ...` in its own process group (so a signal to the group
reaches whatever it started too), with its stdout and stderr appended to one log file in the data
directory, and with the kernel's parent-death signal set to SIGTERM, so that even a `veriplex up`
killed with SIGKILL leaves no orphan behind. `Stack.stop()` stops children in the reverse order
of their start: SIGTERM to the group, a grace period, then SIGKILL; afterwards it checks every
group is empty; `Stack.stop_together()` stops independent children (the workers) at once. Ready
lines are read from the log file (never from a pipe a dead reader could block), so a child's
output is on disk whatever happens to its parent.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 20.0


class StackError(RuntimeError):
    """A child failed to start, died, or would not stop; the message quotes its log."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the explicit stop still applies
        pass


def veriplex_argv(*args: str) -> list[str]:
    """argv that runs the `veriplex` command with this interpreter."""
    return [sys.executable, "-m", "veriplex.cli", *args]


def clean_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: ours without VERIPLEX_* settings, plus `home` and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
    env.update(VERIPLEX_HOME=str(home), PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE")
    env.update(extra or {})
    return env


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    log_start: int = 0  # the log's size when this run started (logs are appended to)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_line(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first log line matching `pattern`; StackError if the child exits or time runs out."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with self.log.open("rb") as f:
                    f.seek(self.log_start)
                    text = f.read().decode(errors="replace")
            except OSError:
                text = ""
            for line in text.splitlines():
                m = rx.search(line)
                if m:
                    return m
            if not self.alive():
                raise StackError(f"{self.name} exited with status {self.proc.returncode} before "
                                 f"it was ready; the end of {self.log}:\n{tail(self.log)}")
            if time.monotonic() > deadline:
                raise StackError(f"{self.name} was not ready after {timeout_s:.0f} s; the end of "
                                 f"{self.log}:\n{tail(self.log)}")
            time.sleep(0.1)


@dataclass
class Stack:
    """The children of one `veriplex up`, in start order."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as sink:
            start = sink.tell()
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=sink,
                                    stderr=subprocess.STDOUT, env=env, process_group=0,
                                    preexec_fn=_die_with_parent)
        child = Child(name, proc, log, start)
        self.children.append(child)
        return child

    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    def dead(self) -> list[Child]:
        """Children that exited on their own."""
        return [c for c in self.children if not c.alive()]

    def stop(self, grace_s: float = STOP_GRACE_S) -> list[str]:
        """Stop every child, newest first; returns one line per child that needed SIGKILL."""
        forced = [self.stop_child(c, grace_s) for c in reversed(self.children)]
        return [f for f in forced if f]

    def stop_together(self, children: Sequence[Child], grace_s: float = STOP_GRACE_S) -> list[str]:
        """Stop independent children at once: SIGTERM to every group, one shared grace period,
        then SIGKILL to those still alive; one line per child that needed SIGKILL. (Workers each
        take about a second to wind down; one after the other, five took six seconds.)"""
        alive = [c for c in children if c.alive()]
        for c in alive:
            _signal_group(c.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        forced = []
        for c in alive:
            try:
                c.proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                forced.append(f"{c.name} (pid {c.pid}) ignored SIGTERM for {grace_s:g} s and was "
                              f"killed")
                _signal_group(c.pid, signal.SIGKILL)
                c.proc.wait(timeout=10)
        for c in children:
            _signal_group(c.pid, signal.SIGKILL)  # whatever it started in its group goes too
        return forced

    def stop_child(self, child: Child, grace_s: float = STOP_GRACE_S) -> str:
        """SIGTERM to the child's group, SIGKILL after `grace_s`; '' or what had to be forced."""
        forced = ""
        if child.alive():
            _signal_group(child.pid, signal.SIGTERM)
            try:
                child.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                forced = (f"{child.name} (pid {child.pid}) ignored SIGTERM for {grace_s:g} s "
                          f"and was killed")
                _signal_group(child.pid, signal.SIGKILL)
                child.proc.wait(timeout=10)
        _signal_group(child.pid, signal.SIGKILL)  # whatever it started in its group goes too
        return forced

    def retire(self, child: Child) -> None:
        """Stop a child that had a passing job (it no longer counts as part of the stack)."""
        if forced := self.stop_child(child):
            raise StackError(forced)
        if child.proc.returncode not in (0, -signal.SIGTERM):
            raise StackError(f"{child.name} exited with status {child.proc.returncode}; the end "
                             f"of {child.log}:\n{tail(child.log)}")
        self.children.remove(child)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def processes() -> list[tuple[int, str, int, int]]:
    """(pid, state, parent pid, process group) of every process (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            out.append((int(stat.parent.name), fields[0], int(fields[1]), int(fields[2])))
        except (OSError, IndexError, ValueError):
            continue
    return out


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    return [pid for pid, state, _, group in processes() if group == pgid and state != "Z"]
