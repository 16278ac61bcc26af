"""The devnet's one SQLite file, through SQLAlchemy: schema, lock, and the block-at-a-time writes.

Tables:

- ``kv``      py-evm's key-value database (state trie nodes, headers, bodies, canonical index),
              written through `devnet.kvstore.SqliteKV`;
- ``meta``    chain id, genesis hash, the `evm_increaseTime` offset, schema version;
- ``blocks``  one row per canonical block: number, hash, the JSON-RPC block object (tx hashes only);
- ``txs``     one row per mined transaction: hash, block, index, JSON-RPC transaction and receipt;
- ``logs``    one row per log, with address and topic0..3 as indexed columns, so `eth_getLogs`
              is an index lookup, never a scan.

Every mined block (its key-value writes and its rows) is committed in ONE SQLite transaction, so a
crash leaves the file at a block boundary. WAL journaling: readers (the explorer) never block the
writer. A second process on the same file is refused by an exclusive `flock` on ``<db>.lock``.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Connection, Engine

from devnet.errors import DevnetLocked, StoreError

SCHEMA_VERSION = "1"

metadata = MetaData()

kv_table = Table(
    "kv", metadata,
    Column("k", LargeBinary, primary_key=True),
    Column("v", LargeBinary, nullable=False),
    sqlite_with_rowid=False,
)
meta_table = Table(
    "meta", metadata,
    Column("key", String, primary_key=True),
    Column("value", String, nullable=False),
)
blocks_table = Table(
    "blocks", metadata,
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary, nullable=False, unique=True),
    Column("body", Text, nullable=False),
)
txs_table = Table(
    "txs", metadata,
    Column("hash", LargeBinary, primary_key=True),
    Column("block_number", Integer, nullable=False, index=True),
    Column("idx", Integer, nullable=False),
    Column("tx", Text, nullable=False),
    Column("receipt", Text, nullable=False),
    sqlite_with_rowid=False,
)
logs_table = Table(
    "logs", metadata,
    Column("block_number", Integer, primary_key=True, autoincrement=False),
    Column("log_index", Integer, primary_key=True, autoincrement=False),
    Column("address", LargeBinary, nullable=False),
    Column("topic0", LargeBinary),
    Column("topic1", LargeBinary),
    Column("topic2", LargeBinary),
    Column("topic3", LargeBinary),
    Column("body", Text, nullable=False),
    sqlite_with_rowid=False,
)
Index("ix_logs_address", logs_table.c.address, logs_table.c.block_number)
for _i in range(4):
    Index(f"ix_logs_topic{_i}", logs_table.c[f"topic{_i}"], logs_table.c.block_number)

TOPIC_COLUMNS = ("topic0", "topic1", "topic2", "topic3")


@dataclass(frozen=True)
class LogRow:
    block_number: int
    log_index: int
    address: bytes
    topics: tuple[bytes, ...]
    body: str  # the JSON-RPC log object

    def as_params(self) -> dict[str, object]:
        row: dict[str, object] = {
            "block_number": self.block_number, "log_index": self.log_index,
            "address": self.address, "body": self.body,
        }
        for i, col in enumerate(TOPIC_COLUMNS):
            row[col] = self.topics[i] if i < len(self.topics) else None
        return row


@dataclass(frozen=True)
class BlockRows:
    """Everything one mined block adds to the index tables."""

    number: int
    hash: bytes
    body: str
    txs: Sequence[tuple[bytes, int, str, str]]  # (hash, index, tx json, receipt json)
    logs: Sequence[LogRow]


def _set_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, never corrupt
    cur.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


class FileLock:
    """An exclusive, non-blocking `flock` on `<db>.lock`; released when the process ends."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(str(db_path) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DevnetLocked(
                f"devnet database {self.path.with_suffix('')} is already in use by another "
                f"devnet (pid {holder}); stop that one first or pass a different --db"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class ChainStore:
    """The SQLite file: opened once, used from one thread (the server's event loop)."""

    def __init__(self, path: Path, *, lock: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(self.path) if lock else None
        if self._lock:
            self._lock.acquire()
        try:
            self.engine: Engine = create_engine(
                f"sqlite:///{self.path}", isolation_level="AUTOCOMMIT"
            )
            event.listen(self.engine, "connect", _set_pragmas)
            self.conn: Connection = self.engine.connect()
            metadata.create_all(self.conn)
            version = self.get_meta("schema_version")
            if version is None:
                self.set_meta({"schema_version": SCHEMA_VERSION})
            elif version != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, this devnet needs {SCHEMA_VERSION}"
                )
        except Exception as exc:
            self.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open devnet database {self.path}: {exc}") from exc

    # -- transactions -------------------------------------------------------------------------
    @contextmanager
    def transaction(self, what: str) -> Iterator[None]:
        """One SQLite write transaction; any failure rolls back and becomes a `StoreError`."""
        began = False
        try:
            self.begin()
            began = True
            yield
            self.commit()
        except Exception as exc:
            if began:
                with suppress(Exception):
                    self.rollback()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot write {what} to {self.path}: {exc}") from exc

    def begin(self) -> None:
        self.conn.exec_driver_sql("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.exec_driver_sql("COMMIT")

    def rollback(self) -> None:
        self.conn.exec_driver_sql("ROLLBACK")

    # -- key-value (py-evm) -------------------------------------------------------------------
    def kv_get(self, key: bytes) -> bytes | None:
        row = self.conn.exec_driver_sql("SELECT v FROM kv WHERE k = ?", (key,)).first()
        return None if row is None else bytes(row[0])

    def kv_write(self, upserts: Iterable[tuple[bytes, bytes]], deletes: Iterable[bytes]) -> None:
        ups = list(upserts)
        if ups:
            self.conn.exec_driver_sql("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", ups)
        dels = [(k,) for k in deletes]
        if dels:
            self.conn.exec_driver_sql("DELETE FROM kv WHERE k = ?", dels)

    # -- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute(
            select(meta_table.c.value).where(meta_table.c.key == key)
        ).first()
        return None if row is None else str(row[0])

    def set_meta(self, values: dict[str, str]) -> None:
        self.conn.exec_driver_sql(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items())
        )

    # -- index tables -------------------------------------------------------------------------
    def add_block(self, rows: BlockRows) -> None:
        self.conn.exec_driver_sql(
            "INSERT OR REPLACE INTO blocks (number, hash, body) VALUES (?, ?, ?)",
            (rows.number, rows.hash, rows.body),
        )
        if rows.txs:
            self.conn.exec_driver_sql(
                "INSERT OR REPLACE INTO txs (hash, block_number, idx, tx, receipt) "
                "VALUES (?, ?, ?, ?, ?)",
                [(h, rows.number, i, t, r) for h, i, t, r in rows.txs],
            )
        if rows.logs:
            self.conn.execute(logs_table.insert(), [lg.as_params() for lg in rows.logs])

    def truncate_above(self, number: int) -> None:
        """Forget every block after `number` (evm_revert)."""
        for table in ("blocks", "txs", "logs"):
            col = "number" if table == "blocks" else "block_number"
            self.conn.exec_driver_sql(f"DELETE FROM {table} WHERE {col} > ?", (number,))

    def head_number(self) -> int | None:
        row = self.conn.exec_driver_sql("SELECT MAX(number) FROM blocks").first()
        return None if row is None or row[0] is None else int(row[0])

    def block_by_number(self, number: int) -> str | None:
        row = self.conn.exec_driver_sql(
            "SELECT body FROM blocks WHERE number = ?", (number,)
        ).first()
        return None if row is None else str(row[0])

    def block_number_by_hash(self, block_hash: bytes) -> int | None:
        row = self.conn.exec_driver_sql(
            "SELECT number FROM blocks WHERE hash = ?", (block_hash,)
        ).first()
        return None if row is None else int(row[0])

    def block_hash(self, number: int) -> bytes | None:
        row = self.conn.exec_driver_sql(
            "SELECT hash FROM blocks WHERE number = ?", (number,)
        ).first()
        return None if row is None else bytes(row[0])

    def block_hashes_between(self, first: int, last: int) -> list[bytes]:
        rows = self.conn.exec_driver_sql(
            "SELECT hash FROM blocks WHERE number BETWEEN ? AND ? ORDER BY number", (first, last)
        )
        return [bytes(r[0]) for r in rows]

    def tx(self, tx_hash: bytes) -> tuple[str, str] | None:
        row = self.conn.exec_driver_sql(
            "SELECT tx, receipt FROM txs WHERE hash = ?", (tx_hash,)
        ).first()
        return None if row is None else (str(row[0]), str(row[1]))

    def txs_of_block(self, number: int) -> list[str]:
        rows = self.conn.exec_driver_sql(
            "SELECT tx FROM txs WHERE block_number = ? ORDER BY idx", (number,)
        )
        return [str(r[0]) for r in rows]

    def receipts_of_block(self, number: int) -> list[str]:
        rows = self.conn.exec_driver_sql(
            "SELECT receipt FROM txs WHERE block_number = ? ORDER BY idx", (number,)
        )
        return [str(r[0]) for r in rows]

    def logs(
        self,
        first: int,
        last: int,
        addresses: Sequence[bytes] | None,
        topics: Sequence[Sequence[bytes] | None],
        limit: int,
    ) -> list[str]:
        """Bodies of matching logs in chain order. Empty `addresses`/topic slot = any."""
        where = ["block_number BETWEEN ? AND ?"]
        params: list[object] = [first, last]
        if addresses:
            where.append(f"address IN ({','.join('?' * len(addresses))})")
            params.extend(addresses)
        for col, wanted in zip(TOPIC_COLUMNS, topics, strict=False):
            if wanted:
                where.append(f"{col} IN ({','.join('?' * len(wanted))})")
                params.extend(wanted)
        sql = (
            f"SELECT body FROM logs WHERE {' AND '.join(where)} "
            f"ORDER BY block_number, log_index LIMIT {int(limit) + 1}"
        )
        return [str(r[0]) for r in self.conn.exec_driver_sql(sql, tuple(params))]

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
            self.conn = None  # type: ignore[assignment]
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.dispose()
        if self._lock:
            self._lock.release()
