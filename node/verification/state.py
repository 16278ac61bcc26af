"""The agent's memory across restarts: per task, its verdict, output root, salt and evidence rows.

A member must reveal exactly what it committed and open chunks of exactly the tree it revealed, so
everything needed is written before the commit transaction is sent (write, then fsync, then rename,
so a crash leaves the old file or the new one, never half of one):

    <dir>/task-<id>-r<round>.json   {"task_id", "round", "stage", "verdict", "output_root", "salt",
                                     "policy", "committed", "revealed", "opened", "note"}
    <dir>/task-<id>-r<round>.npy    the evidence rows as bf16 bit patterns (uint16, (P, d)),
                                     plus "tokens" in the JSON — enough to rebuild the tree.
    <dir>/cursor.json               {"next_block": N}: the first block whose TaskOpened events
                                     the agent has not read yet (a restart resumes there).

The directory is created 0700 and files 0600: a salt is a secret until it is revealed. Files of
finished tasks are removed by `forget`. No pickle (`np.load(allow_pickle=False)`).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from node.verification.errors import AgentStateError
from verifier.encoding import Domain, bf16_bits
from verifier.merkle import StageCommitment


@dataclass
class Vote:
    """One member's vote on one round of one task, and how far it got."""

    task_id: int
    round: int
    stage: int
    verdict: bool
    output_root: bytes
    salt: bytes
    policy: str
    tokens: list[int] = field(default_factory=list)
    leaf: list[int] = field(default_factory=lambda: [0, 0])  # (position, chunk) a FAIL names
    committed: bool = False
    revealed: bool = False
    opened: bool = False
    note: str = ""
    kind: int = 0  # the contract's VerdictKind; 0: PASS / FAIL by `verdict` (records before SUSPECT)

    @property
    def kind_code(self) -> int:
        """What is committed and revealed: `kind`, else PASS (1) / FAIL (2) by `verdict`."""
        return self.kind or (1 if self.verdict else 2)

    @property
    def label(self) -> str:
        return {1: "OK", 2: "FRAUD", 3: "SUSPECT", 4: "NO_INPUT"}.get(self.kind_code, str(self.kind_code))

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["output_root"] = "0x" + self.output_root.hex()
        d["salt"] = "0x" + self.salt.hex()
        return d

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Vote:
        try:
            kw = dict(d)
            kw["output_root"] = bytes.fromhex(str(d["output_root"]).removeprefix("0x"))
            kw["salt"] = bytes.fromhex(str(d["salt"]).removeprefix("0x"))
            return cls(**kw)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as e:
            raise AgentStateError(f"malformed vote record: {e}") from e


class AgentState:
    """Votes on disk, one JSON + one .npy per (task, round)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.dir, 0o700)
        except OSError as e:
            raise AgentStateError(f"cannot use {self.dir} for the agent's state: {e}") from e

    def _stem(self, task_id: int, rnd: int) -> Path:
        return self.dir / f"task-{task_id}-r{rnd}"

    def save(self, vote: Vote, rows: np.ndarray | None = None) -> None:
        """Write the vote (and, the first time, its evidence rows) atomically, mode 0600."""
        stem = self._stem(vote.task_id, vote.round)
        if rows is not None:
            bits = bf16_bits(rows) if rows.dtype != np.uint16 else rows
            self._atomic(stem.with_suffix(".npy"), lambda f: np.save(f, bits, allow_pickle=False))
        body = json.dumps(vote.to_json(), sort_keys=True).encode()
        self._atomic(stem.with_suffix(".json"), lambda f: f.write(body))

    def _atomic(self, path: Path, write) -> None:  # type: ignore[no-untyped-def]
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load(self, task_id: int, rnd: int) -> Vote | None:
        path = self._stem(task_id, rnd).with_suffix(".json")
        if not path.exists():
            return None
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise AgentStateError(f"{path} is readable by others (mode {mode:o}); it holds a salt")
        try:
            return Vote.from_json(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise AgentStateError(f"cannot read {path}: {e}") from e

    def votes(self) -> list[Vote]:
        out = []
        for p in sorted(self.dir.glob("task-*-r*.json")):
            name = p.stem  # task-<id>-r<round>
            try:
                tid, rnd = name.removeprefix("task-").split("-r")
                v = self.load(int(tid), int(rnd))
            except (ValueError, AgentStateError):
                continue
            if v is not None:
                out.append(v)
        return out

    def evidence(self, vote: Vote, chain_id: int, request_id: bytes) -> StageCommitment:
        """The tree the vote's output root commits to, rebuilt from the saved rows."""
        path = self._stem(vote.task_id, vote.round).with_suffix(".npy")
        try:
            bits = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise AgentStateError(f"cannot read the evidence of task {vote.task_id}: {e}") from e
        tree = StageCommitment.build(Domain(chain_id, request_id, vote.stage), bits, vote.tokens)
        if tree.root != vote.output_root:
            raise AgentStateError(f"saved evidence of task {vote.task_id} gives root 0x{tree.root.hex()}, "
                                  f"the vote says 0x{vote.output_root.hex()}")
        return tree

    def cursor(self) -> int | None:
        """The saved next block to scan, or None (never saved, or unreadable: rescan)."""
        try:
            n = json.loads((self.dir / "cursor.json").read_text())["next_block"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return n if isinstance(n, int) and n >= 0 else None

    def save_cursor(self, next_block: int) -> None:
        """Atomically, without an fsync: a lost cursor only means scanning some blocks again."""
        tmp = self.dir / "cursor.json.tmp"
        tmp.write_text(json.dumps({"next_block": int(next_block)}))
        os.replace(tmp, self.dir / "cursor.json")

    def forget(self, task_id: int) -> None:
        for p in self.dir.glob(f"task-{task_id}-r*"):
            p.unlink(missing_ok=True)
