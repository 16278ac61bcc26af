"""Fixtures for the verifier's tests: the tiny random Llama of `lab.py`, saved to and reloaded from a
tmp dir once per session, and factories for perturbed copies or other-seed models."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.support.lab import TinyLab, tiny_llama  # noqa: E402


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-llama")


@pytest.fixture(scope="session")
def lab(model_dir) -> TinyLab:
    return TinyLab(tiny_llama(seed=0, path=model_dir))


@pytest.fixture(scope="session")
def lab_factory(lab: TinyLab):
    """Fresh copies of the served model (for in-place perturbations) or other-seed models."""
    def make(seed: int = 0) -> TinyLab:
        return TinyLab(copy.deepcopy(lab.model)) if seed == 0 else TinyLab(tiny_llama(seed=seed))
    return make
