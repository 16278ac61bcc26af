"""The gateway's durable state (SQLAlchemy; SQLite by default): one row per served request and one
per settlement batch. A record is written when its request finishes, before any batch holds it; a
batch row is cut (records assigned) in one transaction, and its signed transaction hash and raw
bytes are stored before the transaction is broadcast, so a restart can tell a batch that reached
the chain from one that did not. Sequence numbers (the contract's per-gateway `seq`) start at a
random 48-bit offset chosen when the store is created, so a fresh store on a long-lived chain does
not collide with an earlier one's settled seqs.

A record also keeps its stages' signed commitments (JSON, as in the receipt) or why they could not
be obtained, and its verification-task state (`task_state`: NULL until decided, then `opened`,
`not_sampled`, `no_commitments`, `randomness_expired`, `released` or `failed`); a batch's
`tasks_done` is set once every record of it is decided, `released` once its escrow was released. Columns added since a store was created
are added in place when it is opened (`_migrate`), so old databases keep working."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class RequestRow(Base):
    __tablename__ = "requests"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    request_id: Mapped[str] = mapped_column(String(66), unique=True)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary(32), index=True)
    model_id: Mapped[int] = mapped_column(Integer)
    pipeline: Mapped[str] = mapped_column(String(4000))  # JSON [[operator, start, end], ...]
    tokens_in: Mapped[int] = mapped_column(Integer)
    tokens_out: Mapped[int] = mapped_column(Integer)
    charge: Mapped[str] = mapped_column(String(80))  # wei as decimal text (exceeds int64)
    commitment_root: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[float] = mapped_column()
    batch: Mapped[int | None] = mapped_column(Integer, index=True, nullable=True)
    commitments: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list, as in receipts
    commitments_error: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    task_state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    task_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    task_error: Mapped[str | None] = mapped_column(String(1000), nullable=True)


class BatchRow(Base):
    __tablename__ = "batches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # built|broadcast|settled|failed
    created_at: Mapped[float] = mapped_column()
    tx_hash: Mapped[str | None] = mapped_column(String(66), nullable=True)
    raw_tx: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    chain_batch_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_charge: Mapped[str | None] = mapped_column(String(80), nullable=True)
    error: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    tasks_done: Mapped[int | None] = mapped_column(Integer, nullable=True)
    released: Mapped[int | None] = mapped_column(Integer, nullable=True)  # escrow left (release tx)


@dataclass(frozen=True)
class Served:
    """A finished request, as the gateway records it."""

    seq: int
    request_id: str
    key_hash: bytes
    model_id: int
    pipeline: str
    tokens_in: int
    tokens_out: int
    charge: int
    commitment_root: bytes
    commitments: str | None = None  # JSON list of the stages' signed commitments
    commitments_error: str | None = None


def _sqlite_pragmas(conn: object, _record: object) -> None:
    """WAL + synchronous=NORMAL: a commit survives a process crash (what settlement needs) without
    an fsync per request."""
    cur = conn.cursor()  # type: ignore[attr-defined]
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class Store:
    """Thread-safe access to the request and batch tables."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, connect_args={"check_same_thread": False}
                                    if url.startswith("sqlite") else {})
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._migrate()
        self._lock = threading.Lock()
        with Session(self.engine) as s, s.begin():
            base = s.get(Meta, "seq_base")
            if base is None:
                s.add(Meta(key="seq_base", value=str(secrets.randbits(48) << 8)))
        with Session(self.engine) as s:
            top = s.scalar(select(func.max(RequestRow.seq)))
            self._next_seq = (top + 1) if top is not None else int(s.get(Meta, "seq_base").value)

    def _migrate(self) -> None:
        """Add nullable columns a store created by an older gateway lacks (SQLite ADD COLUMN)."""
        have = inspect(self.engine)
        with self.engine.begin() as conn:
            for table in (RequestRow.__table__, BatchRow.__table__):
                cols = {c["name"] for c in have.get_columns(table.name)}
                for col in table.columns:
                    if col.name not in cols:
                        if not col.nullable:
                            raise RuntimeError(f"cannot add NOT NULL column {table.name}.{col.name}")
                        ddl = col.type.compile(dialect=self.engine.dialect)
                        conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {ddl}'))

    def next_seq(self) -> int:
        with self._lock:
            seq, self._next_seq = self._next_seq, self._next_seq + 1
            return seq

    def record(self, r: Served) -> None:
        with Session(self.engine) as s, s.begin():
            s.add(RequestRow(seq=r.seq, request_id=r.request_id, key_hash=r.key_hash,
                             model_id=r.model_id, pipeline=r.pipeline, tokens_in=r.tokens_in,
                             tokens_out=r.tokens_out, charge=str(r.charge),
                             commitment_root=r.commitment_root, created_at=time.time(),
                             commitments=r.commitments, commitments_error=r.commitments_error))

    def unsettled_by_key(self) -> dict[bytes, int]:
        """Charges of records not yet in a settled batch, per key (reserved against caps)."""
        out: dict[bytes, int] = {}
        with Session(self.engine) as s:
            settled = select(BatchRow.id).where(BatchRow.status == "settled")
            rows = s.execute(select(RequestRow.key_hash, RequestRow.charge).where(
                (RequestRow.batch.is_(None)) | (RequestRow.batch.not_in(settled))))
            for kh, charge in rows:
                out[kh] = out.get(kh, 0) + int(charge)
        return out

    def cut_batch(self, size: int, max_age_s: float, force: bool = False) -> int | None:
        """Assign up to `size` unbatched records to a new batch if enough or old enough."""
        with Session(self.engine) as s, s.begin():
            q = select(RequestRow).where(RequestRow.batch.is_(None)).order_by(RequestRow.seq)
            rows = list(s.scalars(q.limit(size)))
            if not rows:
                return None
            if not force and len(rows) < size and time.time() - rows[0].created_at < max_age_s:
                return None
            batch = BatchRow(status="built", created_at=time.time(), attempts=0)
            s.add(batch)
            s.flush()
            for r in rows:
                r.batch = batch.id
            return batch.id

    def open_batches(self) -> list[BatchRow]:
        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.scalars(select(BatchRow).where(BatchRow.status.in_(("built", "broadcast")))
                                  .order_by(BatchRow.id)))

    def batch_records(self, batch_id: int) -> list[RequestRow]:
        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.scalars(select(RequestRow).where(RequestRow.batch == batch_id)
                                  .order_by(RequestRow.seq)))

    def set_batch(self, batch_id: int, **values: object) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(update(BatchRow).where(BatchRow.id == batch_id).values(**values))

    def batch(self, batch_id: int) -> BatchRow | None:
        with Session(self.engine, expire_on_commit=False) as s:
            return s.get(BatchRow, batch_id)

    def request(self, request_id: str) -> RequestRow | None:
        with Session(self.engine, expire_on_commit=False) as s:
            return s.scalar(select(RequestRow).where(RequestRow.request_id == request_id))

    def batches_awaiting_tasks(self) -> list[BatchRow]:
        """Settled batches with records whose verification task is not decided yet."""
        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.scalars(select(BatchRow).where(BatchRow.status == "settled",
                                                         BatchRow.tasks_done.is_(None))
                                  .order_by(BatchRow.id)))

    def batches_awaiting_release(self) -> list[BatchRow]:
        """Settled batches whose tasks are all decided but whose escrow was not released yet."""
        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.scalars(select(BatchRow).where(BatchRow.status == "settled",
                                                         BatchRow.tasks_done.is_not(None),
                                                         BatchRow.released.is_(None))
                                  .order_by(BatchRow.id)))

    def set_task(self, seq: int, state: str | None, task_id: int | None = None,
                 error: str | None = None) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(update(RequestRow).where(RequestRow.seq == seq).values(
                task_state=state, task_id=task_id, task_error=None if error is None else error[:1000]))

    def counts(self) -> dict[str, int]:
        """Requests (all, unbatched) and batches per status. The reads are separate statements
        (pysqlite opens no read transaction), so they go in the order records move — requests
        first, then the batches they join — and a record cut into a batch between two reads is
        seen in that batch, never in neither (which would look like "all settled")."""
        with Session(self.engine) as s:
            out = {"requests": int(s.scalar(select(func.count()).select_from(RequestRow)) or 0),
                   "requests_unbatched": int(s.scalar(select(func.count()).select_from(RequestRow)
                                                      .where(RequestRow.batch.is_(None))) or 0)}
            out.update({f"batches_{k}": int(v) for k, v in s.execute(
                select(BatchRow.status, func.count()).group_by(BatchRow.status))})
        return out
