"""Fixtures for `veriplex up`'s tests: a tiny chat model built once per session (tests never
download), and a paying client (funded, deposited, with an API key for a gateway)."""

from __future__ import annotations

from pathlib import Path

import pytest

from veriplex.up_setup import CHATML


@pytest.fixture(scope="session")
def chat_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 8-layer tiny Llama with a ChatML template (its tokenizer has none)."""
    from node.runtime.models.tiny import build_tiny_model

    d = build_tiny_model(tmp_path_factory.mktemp("up-tiny"), arch="llama", seed=0)
    (d / "chat_template.jinja").write_text(CHATML)
    return d
