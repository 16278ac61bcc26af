"""SQLAlchemy tables of the explorer's index: blocks, transactions, logs (decoded when the ABI is
known), and two tables derived from Payments events for fast pages (requests, and which operator
served which request). Every row carries its block number so a reorg or `evm_revert` deletes it
with one range delete. Hashes and addresses are stored lowercase 0x-hex; wei amounts as decimal
strings (they overflow 64-bit integers)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text, create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key/value state of the index (the indexed chain id, the running total of charges)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Block(Base):
    __tablename__ = "blocks"
    number: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(66), index=True)
    parent_hash: Mapped[str] = mapped_column(String(66))
    timestamp: Mapped[int] = mapped_column(BigInteger)
    miner: Mapped[str] = mapped_column(String(42))
    gas_used: Mapped[int] = mapped_column(BigInteger)
    gas_limit: Mapped[int] = mapped_column(BigInteger)
    tx_count: Mapped[int] = mapped_column(Integer)


class Tx(Base):
    __tablename__ = "txs"
    hash: Mapped[str] = mapped_column(String(66), primary_key=True)
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    tx_index: Mapped[int] = mapped_column(Integer)
    sender: Mapped[str] = mapped_column(String(42), index=True)
    to: Mapped[str | None] = mapped_column(String(42), index=True, nullable=True)
    created: Mapped[str | None] = mapped_column(String(42), index=True, nullable=True)
    value_wei: Mapped[str] = mapped_column(String(80))
    nonce: Mapped[int] = mapped_column(BigInteger)
    input: Mapped[str] = mapped_column(Text)
    status: Mapped[bool] = mapped_column(Boolean)
    gas_used: Mapped[int] = mapped_column(BigInteger)
    fee_wei: Mapped[str] = mapped_column(String(80))
    contract: Mapped[str | None] = mapped_column(String(64), nullable=True)
    method: Mapped[str | None] = mapped_column(String(128), nullable=True)
    args: Mapped[Any] = mapped_column(JSON, nullable=True)
    revert_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_txs_block_idx", "block_number", "tx_index"),)


class Log(Base):
    __tablename__ = "logs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    tx_hash: Mapped[str] = mapped_column(String(66), index=True)
    log_index: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(42), index=True)
    topic0: Mapped[str | None] = mapped_column(String(66), nullable=True)
    topic1: Mapped[str | None] = mapped_column(String(66), nullable=True)
    topic2: Mapped[str | None] = mapped_column(String(66), nullable=True)
    topic3: Mapped[str | None] = mapped_column(String(66), nullable=True)
    data: Mapped[str] = mapped_column(Text)
    contract: Mapped[str | None] = mapped_column(String(64), nullable=True)
    event: Mapped[str | None] = mapped_column(String(64), nullable=True)
    args: Mapped[Any] = mapped_column(JSON, nullable=True)

    __table_args__ = (
        Index("ix_logs_event_t1", "event", "topic1"),
        Index("ix_logs_event_t2", "event", "topic2"),
        Index("ix_logs_event_t3", "event", "topic3"),
        Index("ix_logs_topic1", "topic1"),
        Index("ix_logs_topic2", "topic2"),
        Index("ix_logs_topic3", "topic3"),
    )


class Request(Base):
    """One settled request record (Payments.RequestSettled joined with its batch)."""

    __tablename__ = "requests"
    request_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    tx_hash: Mapped[str] = mapped_column(String(66))
    payments: Mapped[str] = mapped_column(String(42))  # the Payments that settled it
    batch_id: Mapped[int] = mapped_column(BigInteger, index=True)
    gateway: Mapped[str] = mapped_column(String(42))
    key_hash: Mapped[str] = mapped_column(String(66))
    model_id: Mapped[int] = mapped_column(BigInteger, index=True)
    tokens_in: Mapped[int] = mapped_column(BigInteger)
    tokens_out: Mapped[int] = mapped_column(BigInteger)
    charge_wei: Mapped[str] = mapped_column(String(80))
    commitment_root: Mapped[str] = mapped_column(String(66))
    pipeline: Mapped[Any] = mapped_column(JSON)

    __table_args__ = (Index("ix_requests_model_block", "model_id", "block_number"),)


class Served(Base):
    """Operator `operator` served layers [layer_start, layer_end) of request `request_id`."""

    __tablename__ = "served"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    operator: Mapped[str] = mapped_column(String(42), index=True)
    request_id: Mapped[str] = mapped_column(String(66))
    layer_start: Mapped[int] = mapped_column(Integer)
    layer_end: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_served_operator_block", "operator", "block_number"),)


class Task(Base):
    """One verification task (from `TaskOpened`, updated by `TaskFinalized` / `ClientRefunded`):
    what request lists, reputations and the network page need without decoding logs.
    `block_number` is the opening block (reorgs delete the row); `final_block` the closing one
    (reorgs below it reopen the task: `tasks.rewind`)."""

    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    verification: Mapped[str] = mapped_column(String(42))
    task_id: Mapped[int] = mapped_column(BigInteger)
    batch_id: Mapped[int] = mapped_column(BigInteger)
    request_id: Mapped[str] = mapped_column(String(66), index=True)
    stage: Mapped[int] = mapped_column(Integer)
    stage_operator: Mapped[str] = mapped_column(String(42), index=True)
    status: Mapped[str] = mapped_column(String(32))  # a word of status.STATUSES (or "status N")
    final_block: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)

    __table_args__ = (Index("ix_tasks_verification_task", "verification", "task_id"),)


BLOCK_SCOPED = (Tx, Log, Request, Served, Task)


def make_engine(url: str) -> Engine:
    """An engine for `url` with the schema created (SQLite gets WAL so the UI reads while we write)."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    Base.metadata.create_all(engine)
    return engine
