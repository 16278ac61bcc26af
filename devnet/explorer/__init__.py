"""The block explorer: an indexer that follows any EVM JSON-RPC endpoint into SQLAlchemy tables, and
a FastAPI web UI (server-rendered pages plus matching JSON endpoints) over that index.

Modules: `models` (tables), `decode` (ABI decoding of our contracts' calls and events), `indexer`
(incremental, resumable, reorg/evm_revert-aware sync), `queries` (page data as plain dicts),
`proof` (a request's sampling draw, stage commitments and audit commands), `app` (FastAPI routes
and templates), `cli` (`veriplex explorer`).

Exceptions (all raised by this package derive from `ExplorerError`)::

    ExplorerError
    ├── BadQuery      malformed user input (HTTP 400)
    └── NotFound      well-formed but unknown hash, address, id or number (HTTP 404)

Chain failures stay `contracts.errors.ChainError`s; the indexer records them and retries, the UI
shows that the index is behind.
"""

from __future__ import annotations


class ExplorerError(Exception):
    """Base of the explorer's errors."""


class BadQuery(ExplorerError):
    """Malformed input (not a hash, an address, an id or a number)."""


class NotFound(ExplorerError):
    """Well-formed input that names nothing in the index."""
