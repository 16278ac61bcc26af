"""Fixtures for the coordinator tests: a model whose replicas need two nodes, deterministic
operator keys, signed heartbeats, and (for the integration tests) a real devnet with registered
nodes and a `veriplex coordinator run` subprocess."""

from __future__ import annotations




