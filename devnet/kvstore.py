"""py-evm's key-value database over the SQLite ``kv`` table, with a write buffer and a read cache.

py-evm 0.12 has no persistent backend of its own. `SqliteKV` is a `BaseDB`: writes land in an
in-memory buffer that `flush()` hands to the store inside the block's SQLite transaction (one write
batch per block, not one statement per trie node); reads check the buffer, then a bounded cache of
hot entries (recent trie nodes and headers), then SQLite.
"""

from __future__ import annotations

from itertools import islice

from eth.db.backends.base import BaseDB

from devnet.store import ChainStore

_DELETED = None


class SqliteKV(BaseDB):
    """Buffered, cached key-value view of the store's ``kv`` table."""

    def __init__(self, store: ChainStore, cache_entries: int = 100_000) -> None:
        self._store = store
        self._pending: dict[bytes, bytes | None] = {}
        self._cache: dict[bytes, bytes] = {}
        self._cache_entries = cache_entries

    def __getitem__(self, key: bytes) -> bytes:
        if key in self._pending:
            value = self._pending[key]
            if value is _DELETED:
                raise KeyError(key)
            return value
        value = self._cache.get(key)
        if value is not None:
            return value
        value = self._store.kv_get(key)
        if value is None:
            raise KeyError(key)
        self._remember(key, value)
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._pending[key] = value

    def __delitem__(self, key: bytes) -> None:
        if not self._exists(key):
            raise KeyError(key)
        self._pending[key] = _DELETED
        self._cache.pop(key, None)

    def _exists(self, key: bytes) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def _remember(self, key: bytes, value: bytes) -> None:
        if len(self._cache) >= self._cache_entries:
            # Drop the oldest quarter (dicts keep insertion order): cheap, and hot keys come back.
            for old in list(islice(self._cache, self._cache_entries // 4)):
                del self._cache[old]
        self._cache[key] = value

    @property
    def dirty(self) -> bool:
        return bool(self._pending)

    def flush(self) -> None:
        """Write the buffer through the store. Call inside the store's open transaction."""
        if not self._pending:
            return
        upserts = [(k, v) for k, v in self._pending.items() if v is not _DELETED]
        deletes = [k for k, v in self._pending.items() if v is _DELETED]
        self._store.kv_write(upserts, deletes)
        for k, v in upserts:
            self._remember(k, v)
        self._pending.clear()

    def discard(self) -> None:
        """Forget unflushed writes (the block they belonged to was abandoned)."""
        self._pending.clear()
