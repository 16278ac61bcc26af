"""Hidden-state store: each stage's output rows of every request, kept on disk for the verification window.

For every (request id, layer range) a stage serves, it appends its output hidden states — one row of
`d` values per position, prompt and generated alike — as positions are computed, and verifiers later
read any position range back. One file per (request, stage), named `<request id hex>-<a>-<b>.vphs`::

    offset 0   4s   magic b"VPHS"
           4   u16  version (1)
           6   u8   dtype code (protocol.tensors.DTYPE_CODES: 1 f32, 2 bf16, 3 f16)
           7   u8   reserved, 0
           8   u32  hidden size d
          12   u32  capacity: positions reserved at admission
          16   u32  layer start a
          20   u32  layer end b
          24   32s  request id
          56   f64  created_at (unix seconds)
          64   f64  expires_at (unix seconds; rewritten in place when the request finishes)
          72   ...  rows: position p at 72 + p·d·itemsize, raw little-endian values (bf16 as 16-bit patterns)

All integers little-endian. The number of rows held is derived from the file size (a torn final row
after a crash is ignored and overwritten). Never pickle.

Next to each rows file, a *request file* `<request id hex>-<a>-<b>.vptk` keeps what the stage must
know to answer COMMIT / FETCH after its session closed: who the gateway was, which stage of how many
it served, and the token ids it saw (the OPEN's sequence, then every TOKEN received or sampled)::

    offset 0   4s   magic b"VPTK"      4  u16 version (1)     6  u16 stage index
           8   u16  stages in the pipeline               10  u16 reserved, 0
          12   20s  gateway address                      32  ...  u32 token ids, position order

It lives and dies with the rows file (same retention, same eviction), as does the *input file*
`<request id hex>-<a>-<b>.vpin`: the input stage's signed commitment (a COMMITTED body) that the
stage checked against the rows it received before it committed (node.dataplane.input_check).

Disk use is bounded by admission, not by failing mid-generation: `open()` reserves
`header + capacity × row bytes` against `max_bytes`, first evicting every expired request; if the
reservation still does not fit, it raises `StoreFull` quoting the figures. A request expires
`retention_s` after `close()` (the verification window) or, if never closed, `max_open_s` after it was
opened (abandoned). `evict_expired()` is also meant to be called periodically by the server.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from node.runtime.models.errors import StoreError, StoreFull
from protocol.tensors import CODE_OF, DTYPE_CODES, itemsize, tensor_bytes, tensor_from_bytes

log = logging.getLogger(__name__)

MAGIC = b"VPHS"
VERSION = 1
HEADER = struct.Struct("<4sHBBIIII32sdd")
HEADER_SIZE = HEADER.size  # 72
_EXPIRES_OFFSET = HEADER_SIZE - 8
SUFFIX = ".vphs"
INFO_MAGIC = b"VPTK"
INFO_HEADER = struct.Struct("<4sHHHH20s")
INFO_SUFFIX = ".vptk"
MAX_OPEN_FILES = 256  # descriptors kept open (two per running request), least recently used closed
INPUT_SUFFIX = ".vpin"  # the input stage's signed commitment the stage checked (COMMITTED body)


@dataclass
class RequestInfo:
    """What a stage keeps about a request besides its rows: the gateway, its place, the tokens."""

    gateway: str  # checksum address
    stage: int
    n_stages: int
    tokens: list[int]

    @property
    def commits_tokens(self) -> bool:
        """The first and the last stage commit the token sequence; middle stages do not."""
        return self.stage == 0 or self.stage == self.n_stages - 1


@dataclass
class StoreEntry:
    """The store's in-memory index of one file."""

    path: Path
    request_id: bytes
    layer_start: int
    layer_end: int
    dtype: torch.dtype
    hidden: int
    capacity: int
    created_at: float
    expires_at: float
    rows: int  # positions written so far
    info: RequestInfo | None = None

    @property
    def info_path(self) -> Path:
        return self.path.with_suffix(INFO_SUFFIX)

    @property
    def input_path(self) -> Path:
        return self.path.with_suffix(INPUT_SUFFIX)

    @property
    def row_bytes(self) -> int:
        return self.hidden * itemsize(self.dtype)

    @property
    def reserved_bytes(self) -> int:
        return HEADER_SIZE + self.capacity * self.row_bytes


Key = tuple[bytes, int, int]


class HiddenStateStore:
    """Per-request, per-stage hidden rows on disk, with a byte budget and time-based eviction."""

    def __init__(
        self,
        root: str | Path,
        max_bytes: int,
        retention_s: float,
        max_open_s: float,
        clock: Callable[[], float] = time.time,
    ):
        if max_bytes <= 0 or retention_s <= 0 or max_open_s <= 0:
            raise StoreError(
                f"max_bytes ({max_bytes}), retention_s ({retention_s}) and max_open_s ({max_open_s}) "
                "must all be positive"
            )
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.retention_s = retention_s
        self.max_open_s = max_open_s
        self.clock = clock
        self.entries: dict[Key, StoreEntry] = {}
        self._fds: OrderedDict[Path, int] = OrderedDict()  # open files of running requests, LRU
        self._scan()

    @classmethod
    def from_settings(cls, settings) -> HiddenStateStore:  # protocol.settings.Settings
        m = settings.models
        return cls(
            settings.hidden_store_dir,
            m.hidden_store_max_bytes,
            m.hidden_retention_s,
            m.hidden_max_open_s,
        )

    # ── open files ────────────────────────────────────────────────────────────────────────────
    def _fd(self, path: Path) -> int:
        """A descriptor of `path`, kept open while its request runs: every decoded position
        writes a row and a token, and opening the file for each cost 11 µs here (pwrite: 0.8)."""
        fd = self._fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDWR)
            while len(self._fds) >= MAX_OPEN_FILES:
                os.close(self._fds.popitem(last=False)[1])
        self._fds[path] = fd
        return fd

    def _forget(self, e: StoreEntry) -> None:
        """Close the entry's kept descriptors (it finished, or its files are going)."""
        for path in (e.path, e.info_path):
            fd = self._fds.pop(path, None)
            if fd is not None:
                os.close(fd)

    # ── admission and lifetime ────────────────────────────────────────────────────────────────
    @property
    def reserved_bytes(self) -> int:
        return sum(e.reserved_bytes for e in self.entries.values())

    def open(
        self,
        request_id: bytes,
        layer_start: int,
        layer_end: int,
        hidden: int,
        dtype: torch.dtype,
        capacity: int,
    ) -> StoreEntry:
        """Admit a request on a stage: reserve room for `capacity` positions of `hidden` values."""
        _check_request_id(request_id)
        if dtype not in CODE_OF:
            raise StoreError(f"dtype {dtype} cannot be stored; supported: {list(CODE_OF)}")
        if (
            not (0 <= layer_start < layer_end < 2**32)
            or not (0 < hidden < 2**32)
            or not (0 < capacity < 2**32)
        ):
            raise StoreError(
                f"bad store entry: layers [{layer_start}, {layer_end}), hidden {hidden}, capacity {capacity}"
            )
        key = (request_id, layer_start, layer_end)
        if key in self.entries:
            raise StoreError(
                f"request {request_id.hex()} layers [{layer_start}, {layer_end}) is already open"
            )
        now = self.clock()
        entry = StoreEntry(
            path=self.root / f"{request_id.hex()}-{layer_start}-{layer_end}{SUFFIX}",
            request_id=request_id,
            layer_start=layer_start,
            layer_end=layer_end,
            dtype=dtype,
            hidden=hidden,
            capacity=capacity,
            created_at=now,
            expires_at=now + self.max_open_s,
            rows=0,
        )
        need = entry.reserved_bytes
        if self.reserved_bytes + need > self.max_bytes:
            self.evict_expired()
        if self.reserved_bytes + need > self.max_bytes:
            raise StoreFull(
                f"request {request_id.hex()} needs {need} bytes ({capacity} positions × {entry.row_bytes} "
                f"+ {HEADER_SIZE}); {self.reserved_bytes} of {self.max_bytes} are reserved by "
                f"{len(self.entries)} unexpired requests"
            )
        entry.path.write_bytes(_pack_header(entry))
        self.entries[key] = entry
        return entry

    def reopen(self, request_id: bytes, layer_start: int, layer_end: int, capacity: int) -> StoreEntry:
        """Admit again a request this stage closed earlier (a re-route that comes back after its
        session ended, e.g. when the stage upstream died): the stored rows are dropped, since the
        stage recomputes them from the resumed sequence, and the entry is open again."""
        e = self.entry(request_id, layer_start, layer_end)
        if capacity != e.capacity:
            raise StoreError(f"request {request_id.hex()} layers [{layer_start}, {layer_end}) was "
                             f"admitted for {e.capacity} positions, not {capacity}")
        self.truncate(request_id, layer_start, layer_end, 0)
        e.expires_at = self.clock() + self.max_open_s
        with e.path.open("r+b") as f:
            f.seek(_EXPIRES_OFFSET)
            f.write(struct.pack("<d", e.expires_at))
        return e

    def close(self, request_id: bytes, layer_start: int, layer_end: int) -> None:
        """The request finished: keep its rows for `retention_s` from now, then let them go."""
        e = self.entry(request_id, layer_start, layer_end)
        e.expires_at = self.clock() + self.retention_s
        os.pwrite(self._fd(e.path), struct.pack("<d", e.expires_at), _EXPIRES_OFFSET)
        self._forget(e)

    def evict_expired(self) -> int:
        """Delete every request whose time is up; returns how many files went."""
        now = self.clock()
        gone = [k for k, e in self.entries.items() if e.expires_at <= now]
        for k in gone:
            e = self.entries.pop(k)
            self._forget(e)
            e.path.unlink(missing_ok=True)
            e.info_path.unlink(missing_ok=True)
            e.input_path.unlink(missing_ok=True)
        return len(gone)

    # ── what the stage knows about the request ────────────────────────────────────────────────
    def set_info(self, request_id: bytes, layer_start: int, layer_end: int, gateway: str,
                 stage: int, n_stages: int, tokens: list[int] | tuple[int, ...]) -> RequestInfo:
        """Record (or, after a re-route, replace) the gateway, the stage's place and the tokens."""
        from eth_utils import to_canonical_address, to_checksum_address

        e = self.entry(request_id, layer_start, layer_end)
        if not (0 <= stage < n_stages < 2**16) or any(not 0 <= t < 2**32 for t in tokens):
            raise StoreError(f"bad request info: stage {stage} of {n_stages}, {len(tokens)} tokens")
        info = RequestInfo(to_checksum_address(gateway), stage, n_stages, [int(t) for t in tokens])
        head = INFO_HEADER.pack(INFO_MAGIC, VERSION, stage, n_stages, 0, to_canonical_address(gateway))
        e.info_path.write_bytes(head + struct.pack(f"<{len(tokens)}I", *info.tokens))
        e.info = info
        return info

    def put_token(self, request_id: bytes, layer_start: int, layer_end: int, position: int,
                  token: int) -> bool:
        """The token at `position` (dropping any recorded after it); False if it would leave a gap
        or the request has no info."""
        e = self.entries.get((request_id, layer_start, layer_end))
        if e is None or e.info is None or not 0 <= position <= len(e.info.tokens):
            return False
        toks = e.info.tokens
        if position < len(toks) and toks[position] == token and position == len(toks) - 1:
            return True
        rewrite = position < len(toks)
        del toks[position:]
        toks.append(int(token))
        fd = self._fd(e.info_path)
        if rewrite:
            os.ftruncate(fd, INFO_HEADER.size + 4 * position)
        os.pwrite(fd, struct.pack("<I", int(token)), INFO_HEADER.size + 4 * position)
        return True

    def put_input(self, request_id: bytes, layer_start: int, layer_end: int, blob: bytes) -> None:
        """Keep the input stage's signed commitment this stage checked before it committed
        (node.dataplane.input_check): the evidence for stage-level blame, as long as the rows."""
        e = self.entry(request_id, layer_start, layer_end)
        e.input_path.write_bytes(blob)

    def input(self, request_id: bytes, layer_start: int, layer_end: int) -> bytes | None:
        """The kept input commitment (a COMMITTED body), None if none was checked."""
        e = self.entries.get((request_id, layer_start, layer_end))
        if e is None or not e.input_path.exists():
            return None
        return e.input_path.read_bytes()

    def info(self, request_id: bytes, layer_start: int, layer_end: int) -> RequestInfo:
        e = self.entry(request_id, layer_start, layer_end)
        if e.info is None:
            raise StoreError(f"request {request_id.hex()} layers [{layer_start}, {layer_end}) has "
                             "rows but no request record (gateway, stage, tokens)")
        return e.info

    def find(self, request_id: bytes) -> list[StoreEntry]:
        """Every entry this store holds for a request (one per layer range served)."""
        return [e for (rid, _, _), e in self.entries.items() if rid == request_id]

    # ── rows ──────────────────────────────────────────────────────────────────────────────────
    def entry(self, request_id: bytes, layer_start: int, layer_end: int) -> StoreEntry:
        e = self.entries.get((request_id, layer_start, layer_end))
        if e is None:
            raise StoreError(
                f"no hidden states for request {request_id.hex()} layers [{layer_start}, {layer_end}) "
                "(never stored, or evicted after its retention window)"
            )
        return e

    def append(
        self, request_id: bytes, layer_start: int, layer_end: int, start: int, rows: torch.Tensor
    ) -> None:
        """Write rows (T, d) for positions [start, start + T); `start` must be the rows held so far."""
        e = self.entry(request_id, layer_start, layer_end)
        if rows.dim() != 2 or rows.shape[1] != e.hidden or rows.dtype != e.dtype:
            raise StoreError(
                f"rows must be (T, {e.hidden}) {e.dtype}; got {tuple(rows.shape)} {rows.dtype}"
            )
        if start != e.rows:
            raise StoreError(f"rows must be appended in order: got position {start}, {e.rows} held")
        if start + rows.shape[0] > e.capacity:
            raise StoreError(
                f"positions [{start}, {start + rows.shape[0]}) exceed the {e.capacity} reserved at admission"
            )
        os.pwrite(self._fd(e.path), tensor_bytes(rows), HEADER_SIZE + start * e.row_bytes)
        e.rows += rows.shape[0]

    def truncate(self, request_id: bytes, layer_start: int, layer_end: int, rows: int) -> None:
        """Forget rows from position `rows` on (a re-routed request resumes from an earlier position)."""
        e = self.entry(request_id, layer_start, layer_end)
        if not 0 <= rows <= e.rows:
            raise StoreError(f"cannot truncate {e.rows} rows to {rows}")
        if rows < e.rows:
            os.ftruncate(self._fd(e.path), HEADER_SIZE + rows * e.row_bytes)
            e.rows = rows

    def read(
        self, request_id: bytes, layer_start: int, layer_end: int, pos_from: int, pos_to: int
    ) -> torch.Tensor:
        """Rows for positions [pos_from, pos_to) as a (pos_to - pos_from, d) tensor."""
        e = self.entry(request_id, layer_start, layer_end)
        if not (0 <= pos_from < pos_to <= e.rows):
            raise StoreError(
                f"positions [{pos_from}, {pos_to}) out of range: request {request_id.hex()} layers "
                f"[{layer_start}, {layer_end}) holds positions [0, {e.rows})"
            )
        n = pos_to - pos_from
        with e.path.open("rb") as f:
            f.seek(HEADER_SIZE + pos_from * e.row_bytes)
            buf = f.read(n * e.row_bytes)
        if len(buf) != n * e.row_bytes:
            raise StoreError(f"{e.path}: file shorter than its {e.rows} rows; it was truncated")
        return tensor_from_bytes(buf, e.dtype, (n, e.hidden))

    # ── restart ───────────────────────────────────────────────────────────────────────────────
    def _scan(self) -> None:
        """Rebuild the index from the files on disk (after a restart); corrupt files are removed."""
        for path in sorted(self.root.glob(f"*{SUFFIX}")):
            try:
                e = read_header(path)
            except StoreError as exc:
                log.warning("hidden store: removing unreadable file %s: %s", path, exc)
                path.unlink(missing_ok=True)
                continue
            if e.info_path.exists():
                try:
                    e.info = read_info(e.info_path)
                except StoreError as exc:
                    log.warning("hidden store: ignoring unreadable request file: %s", exc)
            self.entries[(e.request_id, e.layer_start, e.layer_end)] = e
        for path in (*self.root.glob(f"*{INFO_SUFFIX}"), *self.root.glob(f"*{INPUT_SUFFIX}")):
            if not path.with_suffix(SUFFIX).exists():
                path.unlink(missing_ok=True)  # its rows were evicted before a crash


def _check_request_id(request_id: bytes) -> None:
    if not isinstance(request_id, bytes) or len(request_id) != 32:
        raise StoreError(f"request id must be 32 bytes, got {request_id!r}")


def _pack_header(e: StoreEntry) -> bytes:
    return HEADER.pack(
        MAGIC,
        VERSION,
        CODE_OF[e.dtype],
        0,
        e.hidden,
        e.capacity,
        e.layer_start,
        e.layer_end,
        e.request_id,
        e.created_at,
        e.expires_at,
    )


def read_header(path: Path) -> StoreEntry:
    """Parse and validate one store file's header; the row count comes from the file size."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) != HEADER_SIZE:
        raise StoreError(f"{path}: {len(raw)} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, version, code, reserved, hidden, capacity, a, b, rid, created, expires = HEADER.unpack(
        raw
    )
    if magic != MAGIC or version != VERSION:
        raise StoreError(
            f"{path}: magic {magic!r} version {version}, expected {MAGIC!r} version {VERSION}"
        )
    if code not in DTYPE_CODES or reserved != 0 or hidden == 0 or not a < b:
        raise StoreError(
            f"{path}: bad header: dtype code {code}, hidden {hidden}, layers [{a}, {b})"
        )
    e = StoreEntry(path, rid, a, b, DTYPE_CODES[code], hidden, capacity, created, expires, 0)
    e.rows = min((size - HEADER_SIZE) // e.row_bytes, capacity)
    return e


def read_info(path: Path) -> RequestInfo:
    """Parse a request file (gateway, stage, tokens); a torn final token is ignored."""
    from eth_utils import to_checksum_address

    raw = path.read_bytes()
    if len(raw) < INFO_HEADER.size:
        raise StoreError(f"{path}: {len(raw)} bytes, shorter than the {INFO_HEADER.size}-byte header")
    magic, version, stage, n_stages, reserved, gateway = INFO_HEADER.unpack_from(raw, 0)
    if magic != INFO_MAGIC or version != VERSION or reserved != 0 or not stage < n_stages:
        raise StoreError(f"{path}: bad header (magic {magic!r}, version {version}, stage {stage} "
                         f"of {n_stages})")
    n = (len(raw) - INFO_HEADER.size) // 4
    tokens = list(struct.unpack_from(f"<{n}I", raw, INFO_HEADER.size))
    return RequestInfo(to_checksum_address(gateway), stage, n_stages, tokens)


def disk_usage(root: str | Path) -> int:
    """Bytes the store's files take on disk now (for status output and tests)."""
    return sum(os.path.getsize(p) for p in Path(root).glob(f"*{SUFFIX}"))
