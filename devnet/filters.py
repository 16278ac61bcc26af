"""Polling filters (eth_newFilter, eth_newBlockFilter, eth_getFilterChanges, ...), in memory.

A filter remembers the last block it reported; changes are the blocks after it up to the head,
read from the store's indexed tables. Filters idle for `IDLE_S` seconds expire (as in geth).
A revert below a filter's mark moves the mark back so no block is skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from devnet.errors import ServerError
from devnet.params import BlockRef, LogFilter

if TYPE_CHECKING:
    from devnet.rpc import Methods, RawJson

IDLE_S = 300.0
MAX_FILTERS = 1_000


@dataclass
class _Filter:
    criteria: LogFilter | None  # None: a block filter
    last: int  # last block already reported
    touched: float


class Filters:
    def __init__(self, methods: Methods) -> None:
        self.m = methods
        self.items: dict[int, _Filter] = {}
        self._next = 1

    def _add(self, criteria: LogFilter | None) -> str:
        self._expire()
        if len(self.items) >= MAX_FILTERS:
            raise ServerError(f"too many filters installed ({MAX_FILTERS}); uninstall some")
        fid = self._next
        self._next += 1
        self.items[fid] = _Filter(criteria, self.m.chain.head.block_number, time.monotonic())
        return hex(fid)

    def new_log_filter(self, criteria: LogFilter) -> str:
        return self._add(criteria)

    def new_block_filter(self) -> str:
        return self._add(None)

    def _get(self, fid: int) -> _Filter:
        self._expire()
        f = self.items.get(fid)
        if f is None:
            raise ServerError("filter not found")
        f.touched = time.monotonic()
        return f

    def changes(self, fid: int) -> Any:
        f = self._get(fid)
        head = self.m.chain.head.block_number
        first, f.last = f.last + 1, head
        if f.criteria is None:
            return ["0x" + h.hex() for h in self.m.store.block_hashes_between(first, head)]
        c = f.criteria
        # a tag ("latest", the default) as fromBlock means "from installation on" for a filter
        floor = 0 if c.from_ref.tag in ("latest", "pending", "safe", "finalized") else self.m.number(c.from_ref)
        start = max(first, floor)
        if start > head:
            return []
        return self.m.logs(LogFilter(BlockRef(number=start), c.to_ref, c.block_hash, c.addresses,
                                     c.topics), first=start)

    def all_logs(self, fid: int) -> RawJson | list[Any]:
        f = self._get(fid)
        if f.criteria is None:
            raise ServerError("filter not found: eth_getFilterLogs needs a log filter")
        return self.m.logs(f.criteria)

    def uninstall(self, fid: int) -> bool:
        return self.items.pop(fid, None) is not None

    def rewind(self, head: int) -> None:
        for f in self.items.values():
            f.last = min(f.last, head)

    def _expire(self) -> None:
        now = time.monotonic()
        for fid in [k for k, f in self.items.items() if now - f.touched > IDLE_S]:
            del self.items[fid]
