"""The caller's side of COMMIT and FETCH: ask a stage, after a request ran, for its signed stage
commitment (the gateway, once per stage, to build the record's commitment root) or for its stored
output rows and token ids (verifiers, auditors, the gateway). One fresh TCP connection per question;
every answer is checked — attestation (or frame) signer, request, shape — before it is returned.

`SignedStageCommit` is what a gateway keeps per stage and puts in receipts (`to_json` /
`from_json`, `check` re-verifies the attestation from the JSON alone).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coincurve import PrivateKey

from contracts.verification import attestation_digest
from protocol.dataplane_errors import BadMessage, BadSignature, RemoteError, StageFailed
from protocol.frames import (
    Frame,
    InputRelay,
    Kind,
    commit_body,
    fetch_body,
    make_frame,
    parse_committed,
    parse_error,
    parse_frame,
    read_frame,
)
from protocol.identity import recover
from protocol.messages import PipelineRequest, StageCommit

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SignedStageCommit:
    """One stage's commitment for a request, with the operator's attestation signature."""

    stage: int
    operator: str
    layers: tuple[int, int]
    commit: StageCommit
    signature: bytes

    def check(self, chain_id: int, request_id: bytes) -> None:
        """Raise `BadSignature` unless the attestation recovers to `operator`."""
        got = recover(attestation_digest(chain_id, request_id, self.stage, self.commit), self.signature)
        if got.lower() != self.operator.lower():
            raise BadSignature(f"stage {self.stage} commitment is attested by {got}, not by its "
                               f"operator {self.operator}")

    def to_json(self) -> dict[str, Any]:
        c = self.commit
        return {"stage": self.stage, "operator": self.operator, "layers": list(self.layers),
                "root": "0x" + c.root.hex(), "positions": c.positions, "hidden_size": c.hidden_size,
                "n_tokens": c.n_tokens, "signature": "0x" + self.signature.hex()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SignedStageCommit:
        try:
            a, b = (int(x) for x in d["layers"])
            root = bytes.fromhex(str(d["root"]).removeprefix("0x"))
            sig = bytes.fromhex(str(d["signature"]).removeprefix("0x"))
            if len(root) != 32 or len(sig) != 65:
                raise ValueError(f"root must be 32 bytes and signature 65, got {len(root)}, {len(sig)}")
            sc = StageCommit(root, int(d["positions"]), int(d["hidden_size"]), int(d["n_tokens"]))
            return cls(int(d["stage"]), str(d["operator"]), (a, b), sc, sig)
        except (KeyError, TypeError, ValueError) as e:
            raise BadMessage(f"malformed stage commitment {d!r:.200}: {e}") from None


async def _ask(host: str, port: int, f: Frame, want: Kind, timeout_s: float,
               max_frame_bytes: int) -> Frame:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (TimeoutError, OSError) as e:
        raise StageFailed(f"stage {f.stage} at {host}:{port} is unreachable: {e}", f.stage) from None
    try:
        writer.write(f.to_bytes())
        try:
            buf = await asyncio.wait_for(read_frame(reader, max_frame_bytes), timeout_s)
        except TimeoutError:
            raise StageFailed(f"stage {f.stage} at {host}:{port} did not answer {f.kind.name} in "
                              f"{timeout_s} s", f.stage) from None
        except (ConnectionError, asyncio.IncompleteReadError):
            buf = None
        if buf is None:
            raise StageFailed(f"stage {f.stage} at {host}:{port} closed the connection", f.stage)
        got = parse_frame(buf)
        if got.kind == Kind.ERROR:
            info = parse_error(got.body)
            raise RemoteError(int(info.code), info.stage, info.message)
        if got.kind != want or got.request_id != f.request_id or got.chain_id != f.chain_id:
            raise BadMessage(f"asked {f.kind.name} for request {f.request_id.hex()}, got "
                             f"{got.kind.name} for {got.request_id.hex()} (chain {got.chain_id})")
        return got
    finally:
        writer.close()


def expected_tokens(n_stages: int, stage: int, positions: int) -> int:
    """Token ids stage `stage` commits for `positions` rows: P + 1 on the first and last stage."""
    return positions + 1 if stage in (0, n_stages - 1) else 0


def input_tokens(stage: int, positions: int) -> int:
    """Token ids the commitment of stage `stage`'s input stage covers (what COMMIT relays to
    `stage` > 0): P + 1 when that is the first stage, none otherwise (an input stage is never the
    last one) — `expected_tokens` of stage `stage - 1`."""
    return positions + 1 if stage == 1 else 0


def input_relay(previous: tuple[StageCommit, bytes], stage: int, sequence: Sequence[int],
                positions: int) -> InputRelay:
    """What COMMIT relays to stage `stage` (> 0): stage `stage - 1`'s answer and the token ids its
    commitment covers (`input_tokens`: the first P + 1 of the sequence after the first stage)."""
    sc, sig = previous
    return InputRelay(sc, sig, tuple(int(t) for t in sequence[: input_tokens(stage, positions)]))


async def request_commitment(key: PrivateKey, chain_id: int, request: PipelineRequest, stage: int,
                             positions: int, timeout_s: float = 30.0,
                             relay: InputRelay | None = None) -> tuple[StageCommit, bytes]:
    """Ask stage `stage` of `request` (signed by `key`, the request's gateway) for its commitment
    over rows [0, positions); checks who signed it and that its shape is the one asked for. Every
    stage but the first needs `relay`, its input stage's answer (`input_relay`)."""
    if not 0 <= stage < len(request.stages):
        raise ValueError(f"stage {stage} of a {len(request.stages)}-stage pipeline")
    st = request.stages[stage]
    rid = request.rid
    f = make_frame(key, Kind.COMMIT, chain_id, rid, 0, request.epoch, stage,
                   commit_body(positions, relay))
    got = await _ask(st.host, st.port, f, Kind.COMMITTED, timeout_s, 4096)
    # The attestation (checked below) binds the operator to everything the body says; the frame's
    # own signature adds nothing, so it is not recovered a second time.
    sc, sig = parse_committed(got.body)
    want_tokens = expected_tokens(len(request.stages), stage, positions)
    if sc.positions != positions or sc.n_tokens != want_tokens:
        raise BadMessage(f"stage {stage} committed {sc.positions} positions and {sc.n_tokens} tokens; "
                         f"asked for {positions} positions and {want_tokens} tokens")
    SignedStageCommit(stage, st.operator, (st.start, st.end), sc, sig).check(chain_id, rid)
    return sc, sig


async def commit_all(key: PrivateKey, chain_id: int, request: PipelineRequest, positions: int,
                     sequence: Sequence[int], timeout_s: float = 30.0) -> list[SignedStageCommit]:
    """Every stage's commitment, in stage order, each relaying the one before (`sequence`: the
    request's token ids, prompt and generated)."""
    out: list[SignedStageCommit] = []
    prev: tuple[StageCommit, bytes] | None = None
    for j, st in enumerate(request.stages):
        relay = None if prev is None else input_relay(prev, j, sequence, positions)
        prev = await request_commitment(key, chain_id, request, j, positions, timeout_s, relay)
        out.append(SignedStageCommit(j, st.operator, (st.start, st.end), *prev))
    return out


async def fetch_rows(key: PrivateKey, chain_id: int, host: str, port: int, request_id: bytes,
                     stage: int, layers: tuple[int, int], pos_from: int, pos_to: int, *,
                     operator: str | None = None, timeout_s: float = 30.0,
                     max_frame_bytes: int = 64 * 2**20) -> tuple[torch.Tensor, list[int]]:
    """Stored output rows [pos_from, pos_to) of layers `layers` (float32 (T, d)) and the token ids
    the stage saw. `operator`, if given, must be the signer of the answer."""
    from protocol.rows import parse_rows  # torch: only callers that read rows pay for it

    f = make_frame(key, Kind.FETCH, chain_id, request_id, 0, 0, stage,
                   fetch_body(layers[0], layers[1], pos_from, pos_to))
    got = await _ask(host, port, f, Kind.ROWS, timeout_s, max_frame_bytes)
    signer = got.signer()
    if operator is not None and signer.lower() != operator.lower():
        raise BadSignature(f"ROWS signed by {signer}, not by stage operator {operator}")
    start, rows, tokens = parse_rows(got.body)
    if start != pos_from or rows.shape[0] != pos_to - pos_from:
        raise BadMessage(f"asked for rows [{pos_from}, {pos_to}), got {rows.shape[0]} from {start}")
    return rows, tokens
