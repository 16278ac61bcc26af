"""WebSocket subscriptions: `eth_subscribe("newHeads")` and `eth_subscribe("logs", criteria)`.

Each WebSocket connection has one outgoing queue, drained by its own writer task, so answers
and notifications leave in order and a slow client never blocks mining. When the chain seals a
block, `Subscriptions.on_block` turns it into ``eth_subscription`` notifications (the header, and
each matching log) for every subscriber. A client that lets `QUEUE_LIMIT` messages pile up is
disconnected rather than allowed to grow memory without bound.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from devnet.errors import InvalidParams
from devnet.params import LogFilter, log_filter
from devnet.store import BlockRows, LogRow

QUEUE_LIMIT = 10_000
_JSON = json.JSONEncoder(separators=(",", ":")).encode
_HEADER_ONLY = ("transactions", "uncles", "withdrawals", "size", "totalDifficulty")


class WsConnection:
    """One WebSocket client: a queue of outgoing texts and the task that sends them."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.overflowed = False

    def push(self, text: str) -> None:
        if self.queue.qsize() >= QUEUE_LIMIT:
            self.overflowed = True
            self.queue.put_nowait(None)  # tells the writer to close the connection
            return
        self.queue.put_nowait(text)

    async def run(self) -> None:
        while True:
            text = await self.queue.get()
            if text is None:
                await self._send({"type": "websocket.close", "code": 1008,
                                  "reason": "subscriber too slow: notification queue full"})
                return
            await self._send({"type": "websocket.send", "text": text})


@dataclass
class _Sub:
    conn: WsConnection
    criteria: LogFilter | None  # None: newHeads


def matches(criteria: LogFilter, log: LogRow) -> bool:
    if criteria.addresses and log.address not in criteria.addresses:
        return False
    for i, wanted in enumerate(criteria.topics):
        if wanted and (i >= len(log.topics) or log.topics[i] not in wanted):
            return False
    return True


class Subscriptions:
    def __init__(self) -> None:
        self.subs: dict[str, _Sub] = {}
        self._next = 1

    def subscribe(self, conn: WsConnection, params: Any) -> str:
        if not isinstance(params, list) or not params:
            raise InvalidParams("eth_subscribe takes [\"newHeads\"] or [\"logs\", {criteria}]")
        kind = params[0]
        if kind == "newHeads" and len(params) == 1:
            criteria = None
        elif kind == "logs" and len(params) <= 2:
            criteria = log_filter(params[1] if len(params) == 2 else {}, "1")
        else:
            raise InvalidParams(f"unsupported subscription {kind!r}: use newHeads or logs")
        sid = hex(self._next)
        self._next += 1
        self.subs[sid] = _Sub(conn, criteria)
        return sid

    def unsubscribe(self, conn: WsConnection, params: Any) -> bool:
        if not isinstance(params, list) or len(params) != 1 or not isinstance(params[0], str):
            raise InvalidParams("eth_unsubscribe takes [subscription id]")
        sub = self.subs.get(params[0])
        if sub is None or sub.conn is not conn:
            return False
        del self.subs[params[0]]
        return True

    def drop(self, conn: WsConnection) -> None:
        for sid in [k for k, s in self.subs.items() if s.conn is conn]:
            del self.subs[sid]

    def on_block(self, rows: BlockRows) -> None:
        if not self.subs:
            return
        head: str | None = None
        for sid, sub in list(self.subs.items()):
            if sub.conn.overflowed:
                continue
            if sub.criteria is None:
                if head is None:
                    obj = json.loads(rows.body)
                    head = _JSON({k: v for k, v in obj.items() if k not in _HEADER_ONLY})
                sub.conn.push(_notification(sid, head))
            else:
                for log in rows.logs:
                    if matches(sub.criteria, log):
                        sub.conn.push(_notification(sid, log.body))


def _notification(sid: str, result_json: str) -> str:
    return ('{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":'
            f'{_JSON(sid)},"result":{result_json}}}}}')
