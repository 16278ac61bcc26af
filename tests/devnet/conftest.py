"""Fixtures for the devnet tests: an in-process devnet and a probe contract compiled at fixture time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.devnet.local import PROBE_SOURCE, LocalDevnet, Probe


@pytest.fixture(scope="session")
def probe() -> Probe:
    import vyper

    out = vyper.compile_code(PROBE_SOURCE, output_formats=["abi", "bytecode"])
    return Probe(out["abi"], bytes.fromhex(out["bytecode"].removeprefix("0x")))


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalDevnet]:
    dn = LocalDevnet(tmp_path / "devnet.sqlite")
    yield dn
    dn.close()
