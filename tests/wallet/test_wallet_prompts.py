"""Passwords and raw keys typed at a real terminal: the CLI runs in a child process on a pseudo-
terminal, answers its hidden prompts, and nothing typed is echoed."""

from __future__ import annotations

import json
import os
import pty
import select
import sys
import time
from pathlib import Path

from eth_account import Account

from tests.support.wallet import FAST_SCRYPT_N, REPO

PW = "typed at the terminal"


def run_on_tty(home: Path, argv: list[str], script: list[tuple[str, str]],
               timeout: float = 60.0) -> tuple[int, str]:
    """Run `veriplex ARGV` on a new pty; for each (prompt, answer) wait for the prompt, type the
    answer. Returns the exit status and everything the terminal showed."""
    env = {"VERIPLEX_HOME": str(home), "VERIPLEX_WALLET__SCRYPT_N": str(FAST_SCRYPT_N),
           "HOME": str(home), "PATH": os.environ.get("PATH", "")}
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal
        os.chdir(REPO)
        os.execve(sys.executable,
                  [sys.executable, "-c", "from veriplex.cli import main; main()", *argv], env)
    transcript = b""
    pending = list(script)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                transcript += chunk
            if pending and pending[0][0].encode() in transcript.rsplit(b"\n", 1)[-1]:
                _, answer = pending.pop(0)
                os.write(fd, answer.encode() + b"\n")
                transcript += b"\n"  # end the prompt's line so it is matched only once
        else:
            os.kill(pid, 9)
            raise AssertionError(f"timed out; terminal showed:\n{transcript.decode(errors='replace')}")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), transcript.decode(errors="replace")


def test_new_asks_for_the_password_twice_without_echoing_it(tmp_path):
    code, shown = run_on_tty(tmp_path, ["wallet", "new", "alice", "--json"],
                             [("New password", PW), ("Repeat for confirmation", PW)])
    assert code == 0, shown
    assert PW not in shown
    data = json.loads((tmp_path / "keystores" / "alice.json").read_text())
    assert Account.from_key(Account.decrypt(data, PW)).address.lower() == "0x" + data["address"].lower()


def test_a_mismatched_confirmation_asks_again(tmp_path):
    code, shown = run_on_tty(
        tmp_path, ["wallet", "new", "alice"],
        [("New password", PW), ("Repeat for confirmation", PW + "x"),
         ("New password", PW), ("Repeat for confirmation", PW)])
    assert code == 0, shown
    assert "do not match" in shown
    data = json.loads((tmp_path / "keystores" / "alice.json").read_text())
    Account.decrypt(data, PW)


def test_a_raw_key_typed_at_the_prompt_is_imported_and_not_echoed(tmp_path):
    acct = Account.create()
    key_hex = bytes(acct.key).hex()
    code, shown = run_on_tty(
        tmp_path, ["wallet", "import", "bob"],
        [("Private key", key_hex), ("New password", PW), ("Repeat for confirmation", PW)])
    assert code == 0, shown
    assert key_hex not in shown and PW not in shown
    assert acct.address in shown
    data = json.loads((tmp_path / "keystores" / "bob.json").read_text())
    assert Account.decrypt(data, PW) == acct.key


def test_sign_prompts_for_the_password_and_remove_asks_before_deleting(tmp_path):
    code, shown = run_on_tty(tmp_path, ["wallet", "new", "carol"],
                             [("New password", PW), ("Repeat for confirmation", PW)])
    assert code == 0, shown
    code, shown = run_on_tty(tmp_path, ["wallet", "sign", "carol", "hello"],
                             [("Password for carol", PW)])
    assert code == 0 and "0x" in shown and PW not in shown
    code, shown = run_on_tty(tmp_path, ["wallet", "remove", "carol"], [("Delete", "n")])
    assert code != 0 and (tmp_path / "keystores" / "carol.json").exists()
    code, shown = run_on_tty(tmp_path, ["wallet", "remove", "carol"], [("Delete", "y")])
    assert code == 0 and not (tmp_path / "keystores" / "carol.json").exists()
