"""Fixtures for the node's model tests: tiny random checkpoints built once per session in tmp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.models.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ≈6M-parameter Llama checkpoint with tied embeddings and a locally trained tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 (q/k/v biases) with an untied LM head, so both head layouts are covered."""
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2", seed=1, tie_embeddings=False
    )


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_model(request: pytest.FixtureRequest) -> Path:
    """Each tiny architecture in turn."""
    return request.getfixturevalue(f"tiny_{request.param}")
