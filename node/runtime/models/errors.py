"""Errors of the model side of the node: checkpoints, import, shards, execution, the hidden store.

Every error the node's model code raises for bad input or bad files derives from `ModelError`, so a
server can catch one class, answer the caller, and keep serving others::

    ModelError
    ├── CheckpointError        missing / malformed config.json or safetensors, unsupported family
    │   └── UnsupportedArchitecture   model_type outside Llama / Qwen2 / Mistral
    ├── ImportFailed           `veriplex model import` could not convert or find its source
    ├── ShardError             layer range outside the model, tensors missing for a range
    ├── ExecutionError         bad executor input: shape, dtype, positions, unknown session
    │   └── UnknownSession
    └── StoreError             hidden-state store: bad header, unknown request, out of range rows
        └── StoreFull          admission refused: the reservation would exceed the disk budget

Messages quote the offending values. `assert` is used only for internal invariants.
"""

from __future__ import annotations


class ModelError(Exception):
    """Root of the node's model-side errors."""


class CheckpointError(ModelError):
    """A checkpoint directory is missing files or holds malformed ones."""


class UnsupportedArchitecture(CheckpointError):
    """The checkpoint's model_type is not one this node can split into stages."""


class ImportFailed(ModelError):
    """A model import (GGUF or Hugging Face directory) failed."""


class ShardError(ModelError):
    """A layer range is invalid for the model, or its tensors are missing."""


class ExecutionError(ModelError):
    """The stage executor was given input it cannot run."""


class UnknownSession(ExecutionError):
    """No KV-cache session exists for this request id."""


class StoreError(ModelError):
    """The hidden-state store was asked for something it does not hold, or a file is corrupt."""


class StoreFull(StoreError):
    """Admitting this request would exceed the store's disk budget."""
