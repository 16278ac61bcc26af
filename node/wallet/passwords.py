"""Where passwords and raw keys come from: a file named on the command line, or a TTY prompt.

Never argv, never the environment: a secret on the command line ends up in shell history and in
`ps`, one in the environment in crash reports and child processes. A password file's first line is
the password (its line ending removed, nothing else), as geth's `--password` reads it. Prompts
hide what is typed and go to the controlling terminal; when standard input is not a terminal and no
file was given, the caller gets `SecretUnavailable` instead of a hang.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import click

from node.wallet.errors import SecretUnavailable


def read_secret_file(path: Path, what: str = "password") -> str:
    """The first line of `path`, without its line ending."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise SecretUnavailable(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise SecretUnavailable(f"{what} file {path} is a directory") from None
    except OSError as exc:
        raise SecretUnavailable(f"cannot read {what} file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretUnavailable(f"{what} file {path} is not UTF-8 text") from None
    return text.split("\n", 1)[0].removesuffix("\r")


def loosely_readable(path: Path) -> bool:
    """True when group or others may read `path` (worth a warning for a secret)."""
    try:
        return bool(stat.S_IMODE(Path(path).stat().st_mode) & 0o044)
    except OSError:
        return False


def prompt_secret(prompt: str, confirm: bool = False, option: str = "--password-file") -> str:
    """Ask on the terminal without echo; `confirm` asks twice and insists they match. `option`
    names the flag that gives the secret from a file instead (for the error without a TTY)."""
    if not sys.stdin.isatty():
        raise SecretUnavailable(
            f"cannot ask for the {prompt}: standard input is not a terminal; use {option} FILE"
        )
    value: str = click.prompt(
        prompt.capitalize(), hide_input=True, confirmation_prompt=confirm,
        err=True, show_default=False,
    )
    return value


def get_password(password_file: Path | None, prompt: str = "password", confirm: bool = False,
                 allow_empty: bool = True, option: str = "--password-file") -> str:
    """A password from `password_file` if given, else from a TTY prompt."""
    if password_file is not None:
        password = read_secret_file(password_file, prompt)
        if not password and not allow_empty:
            raise SecretUnavailable(f"{prompt} file {password_file} is empty")
        return password
    return prompt_secret(prompt, confirm=confirm, option=option)
