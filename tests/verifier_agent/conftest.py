"""Fixtures for the verifier agent's tests: a tiny model, in-process stage servers, a run request."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.runtime.models.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 8-layer tiny Llama (hidden 256) every test here serves."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-verifier"), arch="llama", seed=0)
