"""The supervisor of `veriplex up`'s children: each in its own process group with its output in a
log file; stopping takes the whole group (grandchildren too), newest child first (or independent
children together, in one grace period); a child that ignores SIGTERM is killed and reported;
and a supervisor killed outright takes its children with it (parent-death signal), so nothing is
orphaned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from veriplex.stack import Stack, StackError, group_members

SLEEPER = [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(120)"]
# a child that starts a grandchild in its group, then waits
PARENT = [sys.executable, "-c", textwrap.dedent("""
    import subprocess, sys, time
    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
    print('ready', flush=True)
    time.sleep(120)
""")]
STUBBORN = [sys.executable, "-c", textwrap.dedent("""
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print('ready', flush=True)
    time.sleep(120)
""")]


def wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and
                 Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
        time.sleep(0.05)
    return alive


def test_children_run_in_their_own_groups_and_stop_with_their_grandchildren(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "logs")
    env = dict(os.environ)
    a = stack.start("a", SLEEPER, env)
    b = stack.start("b", PARENT, env)
    for c in (a, b):
        c.wait_line(r"^ready$", 30)
        assert os.getpgid(c.pid) == c.pid != os.getpgid(0)
    assert len(group_members(b.pid)) == 2  # the child and its grandchild
    assert stack.stop() == []
    assert group_members(a.pid) == [] and group_members(b.pid) == []
    assert (tmp_path / "logs" / "a.log").read_text().strip() == "ready"


def test_a_child_that_ignores_sigterm_is_killed_and_reported(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "logs")
    c = stack.start("stubborn", STUBBORN, dict(os.environ))
    c.wait_line(r"^ready$", 30)
    forced = stack.stop(grace_s=0.5)
    assert forced == [f"stubborn (pid {c.pid}) ignored SIGTERM for 0.5 s and was killed"]
    assert group_members(c.pid) == []


def test_children_stopped_together_share_one_grace_period_and_take_their_groups(
        tmp_path: Path) -> None:
    stack = Stack(tmp_path / "logs")
    env = dict(os.environ)
    kids = [stack.start("parent", PARENT, env), stack.start("stubborn-1", STUBBORN, env),
            stack.start("stubborn-2", STUBBORN, env)]
    for c in kids:
        c.wait_line(r"^ready$", 30)
    t0 = time.monotonic()
    forced = stack.stop_together(kids, grace_s=1.0)
    took = time.monotonic() - t0
    assert forced == [f"stubborn-{k} (pid {kids[k].pid}) ignored SIGTERM for 1 s and was killed"
                      for k in (1, 2)]
    assert took < 1.9  # one grace period for both stubborn children, not one each
    assert all(group_members(c.pid) == [] for c in kids)  # the grandchild went with its parent
    assert stack.stop() == []  # stopped already: nothing left to force


def test_a_child_that_dies_before_its_ready_line_is_reported_with_its_log(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "logs")
    c = stack.start("broken", [sys.executable, "-c", "print('no model here'); raise SystemExit(3)"],
                    dict(os.environ))
    with pytest.raises(StackError, match=r"broken exited with status 3 before it was ready(.|\n)*"
                                         r"no model here"):
        c.wait_line("ready", 30)


def test_children_die_with_a_supervisor_killed_by_sigkill(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from veriplex.stack import Stack
        s = Stack(Path({str(tmp_path / 'logs')!r}))
        cs = [s.start(f"c{{i}}", {SLEEPER!r}, dict(os.environ)) for i in range(2)]
        for c in cs:
            c.wait_line("ready", 30)
        print(" ".join(str(c.pid) for c in cs), flush=True)
        time.sleep(120)
    """)
    sup = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert sup.stdout is not None
        pids = [int(p) for p in sup.stdout.readline().split()]
        assert len(pids) == 2 and wait_gone(pids, 0.2) == pids  # running
        sup.send_signal(signal.SIGKILL)
        sup.wait(10)
        assert wait_gone(pids) == []
    finally:
        if sup.poll() is None:
            sup.kill()
        sup.wait()
        if sup.stdout:
            sup.stdout.close()


def test_up_notices_a_child_that_dies_and_says_which_with_the_end_of_its_log(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from veriplex.up import wait_for_signal

    stack = Stack(tmp_path / "logs")
    env = dict(os.environ)
    stack.start("steady", SLEEPER, env)
    stack.start("worker-1", [sys.executable, "-c",
                             "import time; time.sleep(0.5); print('out of memory'); exit(9)"], env)
    said: list[str] = []
    try:
        assert wait_for_signal(SimpleNamespace(stack=stack), said.append) == 1
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert stack.stop() == []
    assert said and said[0].startswith("worker-1 exited with status 9; stopping everything")
    assert "out of memory" in said[0]


def test_a_restarted_child_waits_for_its_own_ready_line_not_the_last_run_s(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "logs")
    env = dict(os.environ)
    first = stack.start("svc", [sys.executable, "-c", "print('ready at 1', flush=True)"], env)
    first.wait_line(r"ready at (\d+)", 30)
    first.proc.wait(10)
    second = stack.start("svc", [sys.executable, "-c",
                                 "import time; time.sleep(0.3); print('ready at 2', flush=True)"],
                         env)
    assert second.wait_line(r"ready at (\d+)", 30)[1] == "2"
    stack.stop()
