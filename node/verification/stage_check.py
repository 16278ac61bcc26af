"""The node's verifier role: re-execute one stage with one prefill pass and judge a claimed output.

A check is "run layers [a, b) over these input rows" (DESIGN §5.3): the verifier loads only that
shard, recomputes the stage's output rows for every position with `StageExecutor.run` (one prefill
with a throw-away cache), and compares them with the claimed rows by the tolerance test
(`verifier.tolerance.judge`, thresholds from `verifier.profiles`). On the last stage it also checks
the claimed tokens against its own logits (`verifier.tokens.check_tokens`: greedy argmax with
near-ties, or sampling reproduced from the request's seed). `StageCheck.to_json()` is the verdict
`veriplex verify-stage` prints.

Files (the format is documented in verifier/README.md, "verify-stage files"):

- input: safetensors with `input_ids` (T,) int32/int64 on the first stage, `hidden` (T, d) float32 /
  bfloat16 / float16 otherwise — positions 0..T-1 of the request, in order;
- claimed: safetensors with `hidden` (T, d), the stage's output rows (before the final norm);
- tokens (last stage): JSON `{"tokens": [...], "first_position": P, "sampling": {"temperature",
  "top_p", "seed"}}`; token i sits at position P + i and is checked against the logits row P + i - 1.

Bad files, shapes or values raise `VerifyInputError` (an `ExecutionError`, so the node's `ModelError`
tree covers it) with a one-line message.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from node.runtime.executor import StageExecutor
from node.runtime.models.errors import ExecutionError
from protocol.sampling import Sampling
from verifier.errors import VerifierError
from verifier.tokens import TokenVerdict, check_tokens
from verifier.tolerance import Thresholds, Verdict, judge

INPUT_IDS = "input_ids"
HIDDEN = "hidden"
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


class VerifyInputError(ExecutionError):
    """A check's files or arguments are unusable: missing, malformed, wrong shape or dtype."""


@dataclass(frozen=True)
class TokenClaim:
    """The last stage's claimed tokens: token i at sequence position `first_position + i`."""

    tokens: tuple[int, ...]
    first_position: int | None  # None: the tokens end the sequence (P = T - len(tokens) + 1)
    sampling: Sampling

    def resolve_first(self, positions: int) -> int:
        """The first token's position given T claimed rows; the rows it needs must exist."""
        n = len(self.tokens)
        first = positions - n + 1 if self.first_position is None else self.first_position
        if first < 1 or first - 1 + n > positions:
            raise VerifyInputError(
                f"{n} tokens from position {first} need logits rows [{first - 1}, {first - 1 + n}) "
                f"but the stage has rows [0, {positions})"
            )
        return first


@dataclass(frozen=True)
class StageCheck:
    """The outcome of one check: the rows' verdict, the tokens' verdict (last stage), timings."""

    layers: tuple[int, int]
    positions: int
    rows: Verdict
    tokens: TokenVerdict | None
    recompute_s: float

    @property
    def passed(self) -> bool:
        return self.rows.passed and (self.tokens is None or self.tokens.passed)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "layers": list(self.layers),
            "positions": self.positions,
            "rows": self.rows.to_json(),
            "tokens": None if self.tokens is None else self.tokens.to_json(),
            "recompute_s": round(self.recompute_s, 6),
        }


# ── files ─────────────────────────────────────────────────────────────────────────────────────
def _read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise VerifyInputError(f"{what} file {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise VerifyInputError(f"{what} file {path} is not a readable safetensors file: {msg}") from e


def _one(tensors: dict[str, torch.Tensor], name: str, path: Path, what: str) -> torch.Tensor:
    if name not in tensors:
        raise VerifyInputError(
            f"{what} file {path} has no tensor {name!r} (it holds {sorted(tensors) or 'nothing'})"
        )
    return tensors[name]


def _rows(t: torch.Tensor, d: int, path: Path, what: str) -> torch.Tensor:
    if t.dtype not in _FLOATS:
        raise VerifyInputError(f"{what} {path}: {HIDDEN!r} must be float32/bfloat16/float16, got {t.dtype}")
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] != d:
        raise VerifyInputError(f"{what} {path}: {HIDDEN!r} must have shape (T, {d}), T >= 1; got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise VerifyInputError(f"{what} {path}: {HIDDEN!r} contains NaN or infinity")
    return t


def load_stage_input(path: str | Path, executor: StageExecutor) -> torch.Tensor:
    """The stage's input, ready for `executor.run`: token ids (T,) int64 or rows (T, d) in its dtype."""
    p, sh = Path(path), executor.shard
    tensors = _read_safetensors(p, "input")
    if sh.is_first:
        ids = _one(tensors, INPUT_IDS, p, "input")
        if ids.dtype not in (torch.int32, torch.int64) or ids.dim() != 1 or ids.numel() == 0:
            raise VerifyInputError(
                f"input {p}: {INPUT_IDS!r} must be a non-empty (T,) int32/int64 tensor on the first "
                f"stage; got shape {tuple(ids.shape)} dtype {ids.dtype}"
            )
        vocab = sh.embed_tokens.num_embeddings  # type: ignore[union-attr]
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise VerifyInputError(
                f"input {p}: token ids must be in [0, {vocab}), got [{int(ids.min())}, {int(ids.max())}]"
            )
        return ids.to(torch.int64)
    rows = _rows(_one(tensors, HIDDEN, p, "input"), sh.hidden_size, p, "input")
    return rows.to(sh.dtype)


def load_claimed(path: str | Path, positions: int, hidden_size: int) -> torch.Tensor:
    """The claimed output rows (T, d), any float dtype (compared as bf16 bits)."""
    p = Path(path)
    rows = _rows(_one(_read_safetensors(p, "claimed"), HIDDEN, p, "claimed"), hidden_size, p, "claimed")
    if rows.shape[0] != positions:
        raise VerifyInputError(
            f"claimed {p} has {rows.shape[0]} rows but the input has {positions} positions"
        )
    return rows


def load_token_claim(path: str | Path) -> TokenClaim:
    """Parse the tokens JSON (schema in the module docstring)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as e:
        raise VerifyInputError(f"tokens file {p} cannot be read: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise VerifyInputError(f"tokens file {p} is not JSON: {e.msg} at line {e.lineno}") from e
    if not isinstance(doc, dict):
        raise VerifyInputError(f"tokens file {p} must hold a JSON object, got {type(doc).__name__}")
    unknown = set(doc) - {"tokens", "first_position", "sampling"}
    if unknown:
        raise VerifyInputError(f"tokens file {p}: unknown fields {sorted(unknown)}")
    toks, first, samp = doc.get("tokens"), doc.get("first_position"), doc.get("sampling", {})
    if not isinstance(toks, list) or not toks or not all(type(t) is int and t >= 0 for t in toks):
        raise VerifyInputError(f"tokens file {p}: 'tokens' must be a non-empty list of token ids (ints >= 0)")
    if first is not None and type(first) is not int:
        raise VerifyInputError(f"tokens file {p}: 'first_position' must be an integer, got {first!r}")
    if not isinstance(samp, dict) or set(samp) - {"temperature", "top_p", "seed"}:
        raise VerifyInputError(
            f"tokens file {p}: 'sampling' must be an object with temperature, top_p, seed; got {samp!r}"
        )
    try:
        spec = Sampling(float(samp.get("temperature", 0.0)), float(samp.get("top_p", 1.0)),
                            int(samp.get("seed", 0)))
    except ValidationError as e:  # one line naming each bad field and why
        why = "; ".join(f"{'.'.join(map(str, x['loc']))} {x['msg']} (got {x.get('input')!r})"
                        for x in e.errors())
        raise VerifyInputError(f"tokens file {p}: bad sampling parameters: {why}") from e
    except (VerifierError, TypeError, ValueError) as e:
        raise VerifyInputError(f"tokens file {p}: bad sampling parameters: {e}") from e
    return TokenClaim(tuple(toks), first, spec)


# ── the check ─────────────────────────────────────────────────────────────────────────────────
def check_stage(
    executor: StageExecutor,
    x: torch.Tensor,
    claimed: torch.Tensor,
    thresholds: Thresholds,
    tokens: TokenClaim | None = None,
) -> StageCheck:
    """Recompute the stage over all positions with one prefill and judge `claimed` (T, d) against it.

    `tokens` is required on the last stage's token check and refused on other stages."""
    sh = executor.shard
    if tokens is not None and not sh.is_last:
        raise VerifyInputError(
            f"tokens can only be checked on the last stage; layers [{sh.start}, {sh.end}) of "
            f"{sh.num_layers} is not"
        )
    t0 = time.perf_counter()
    out = executor.run(x, logits="all" if tokens is not None else "none")
    elapsed = time.perf_counter() - t0
    T = out.hidden.shape[0]
    if tuple(claimed.shape) != tuple(out.hidden.shape):
        raise VerifyInputError(
            f"claimed rows have shape {tuple(claimed.shape)}, the stage computes {tuple(out.hidden.shape)}"
        )
    rows = judge(claimed.detach().cpu(), out.hidden.detach().cpu(), thresholds)
    tv = None
    if tokens is not None:
        assert out.logits is not None
        first = tokens.resolve_first(T)
        logits = out.logits[first - 1: first - 1 + len(tokens.tokens)].cpu()
        tv = check_tokens(logits, tokens.tokens, first, tokens.sampling,
                          thresholds.logit_tol, thresholds.mass_tol)
    return StageCheck((sh.start, sh.end), T, rows, tv, elapsed)


def check_files(
    executor: StageExecutor,
    input_path: str | Path,
    claimed_path: str | Path,
    thresholds: Thresholds,
    tokens_path: str | Path | None = None,
) -> StageCheck:
    """`check_stage` on the files of one check (formats above)."""
    x = load_stage_input(input_path, executor)
    claimed = load_claimed(claimed_path, x.shape[0], executor.shard.hidden_size)
    claim = load_token_claim(tokens_path) if tokens_path is not None else None
    return check_stage(executor, x, claimed, thresholds, claim)


def save_stage_files(
    directory: str | Path, x: torch.Tensor, claimed: torch.Tensor, tokens: TokenClaim | None = None,
    first: bool = False,
) -> tuple[Path, Path, Path | None]:
    """Write a check's files (input.safetensors, claimed.safetensors, tokens.json) into `directory`."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    inp, out = d / "input.safetensors", d / "claimed.safetensors"
    name = INPUT_IDS if first else HIDDEN
    save_file({name: x.detach().cpu().contiguous()}, str(inp))
    save_file({HIDDEN: claimed.detach().cpu().contiguous()}, str(out))
    tok = None
    if tokens is not None:
        tok = d / "tokens.json"
        doc: dict[str, Any] = {"tokens": list(tokens.tokens), "sampling": {
            "temperature": tokens.sampling.temperature, "top_p": tokens.sampling.top_p,
            "seed": tokens.sampling.seed}}
        if tokens.first_position is not None:
            doc["first_position"] = tokens.first_position
        tok.write_text(json.dumps(doc))
    return inp, out, tok
