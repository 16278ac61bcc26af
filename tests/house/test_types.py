"""mypy over every package, lenient for now ([tool.mypy] in pyproject.toml): the number of errors
and of `type: ignore` comments may only go down. Lower the ceilings when you fix some."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "contracts", "verifier", "devnet", "node", "scheduler", "gateway", "audit",
            "veriplex")
MAX_MYPY_ERRORS = 130  # 123 measured at the house move (issue 13) + room for library stubs; only lower it
MAX_TYPE_IGNORES = 32


def test_type_ignores_do_not_grow():
    n = sum(len(re.findall(r"#\s*type:\s*ignore", p.read_text()))
            for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    assert n <= MAX_TYPE_IGNORES, f"{n} `type: ignore` comments (ceiling {MAX_TYPE_IGNORES})"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_mypy_errors_do_not_grow():
    if shutil.which("mypy", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mypy is not installed in this environment (the test extra installs it)")
    r = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary"], cwd=ROOT,
                       capture_output=True, text=True, timeout=880)
    errors = [ln for ln in r.stdout.splitlines() if ": error:" in ln]
    assert len(errors) <= MAX_MYPY_ERRORS, (
        f"{len(errors)} mypy errors (ceiling {MAX_MYPY_ERRORS}); first new ones:\n"
        + "\n".join(errors[:20]))
