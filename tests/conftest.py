"""Suite-wide switches.

`make test-fast` sets VERIPLEX_TEST_FAST=1 and deselects `slow`: it runs pure and in-process tests
only. Any test that would start a child process (a devnet or anvil, a worker, a gateway, a browser,
a database server) is skipped at the moment it tries, so the fast run never depends on processes
and the list of what it left out is printed by pytest's skip summary. `make test` runs everything.
"""

from __future__ import annotations

import os
import subprocess

import pytest

FAST = os.environ.get("VERIPLEX_TEST_FAST") == "1"


@pytest.fixture(autouse=True, scope="session")
def _no_child_processes_in_the_fast_run():
    if not FAST:
        yield
        return
    real_init = subprocess.Popen.__init__

    def refuse(self, args, *a, **kw):  # type: ignore[no-untyped-def]
        first = args[0] if isinstance(args, (list, tuple)) and args else args
        if str(first).endswith(("git",)):  # reading the checkout is not a process under test
            return real_init(self, args, *a, **kw)
        pytest.skip(f"starts a child process ({os.path.basename(str(first))}): `make test` runs it")

    subprocess.Popen.__init__ = refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        subprocess.Popen.__init__ = real_init  # type: ignore[method-assign]
