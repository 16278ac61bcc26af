"""Errors of the verifier agent (the tree is drawn in `node/verification/__init__.py`)."""

from __future__ import annotations


class AgentError(Exception):
    """Root of the verifier agent's errors."""


class TaskDataError(AgentError):
    """A task's open_task calldata, pipeline or settlement events cannot be read or do not fit."""


class EvidenceError(AgentError):
    """Fetched rows or tokens do not reproduce the root their stage committed."""


class RerunError(AgentError):
    """The re-execution through a stage server failed, was refused or timed out."""


class AgentStateError(AgentError):
    """The agent's state directory or one of its files is unusable."""
