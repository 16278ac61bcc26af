"""Every revert reason the off-chain code acts on (`contracts.errors.Reason`) is a real assert
message of some contract, so matching by `Revert.says` can never silently stop working."""

from __future__ import annotations

import re
from pathlib import Path

from contracts.errors import Reason, Revert

VY = Path(__file__).resolve().parents[2] / "contracts" / "vy"


def _assert_messages() -> set[str]:
    out = set()
    for path in VY.rglob("*.vy"):
        for m in re.finditer(r'"([a-z]+): ([^"]+)"', path.read_text()):
            out.add(m.group(2))
    return out


def test_every_reason_is_an_assert_message_of_a_contract():
    messages = _assert_messages()
    missing = [r.value for r in Reason if r.value not in messages]
    assert not missing, f"no contract asserts {missing}"


def test_says_matches_the_message_whatever_the_module_and_nothing_else():
    assert Revert("opener: task already open").says(Reason.TASK_ALREADY_OPEN)
    assert Revert("verification: task already open").says(Reason.TASK_ALREADY_OPEN)
    assert not Revert("verification: task already opened twice").says(Reason.TASK_ALREADY_OPEN)
    assert not Revert("payments: batch already released").says(Reason.TASK_ALREADY_OPEN)
