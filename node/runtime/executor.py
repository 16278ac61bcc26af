"""Stage executor: runs decoder layers [a, b) of one model over one request at a time, with a KV cache.

Reads like nanoGPT's forward, split at stage boundaries. Shapes: `T` positions in this call, `d` the
hidden size, `V` the vocabulary. A request's positions are fed in order: a prefill over `[0, T)`, then
decode steps of one position each; `start` must equal the positions already cached (`Session.length`).

    first stage:   ids (T,) ──embed_tokens──► h (1, T, d)
    every stage:   for layer in layers[a:b]: h = layer(h, mask, rope(pos), cache)      # (1, T, d)
    last stage:    logits = lm_head(norm(h))                                          # (T', V)

The stage's output rows are `h` *before* the final norm (the residual stream after layer b-1): what
the next stage consumes and what the hidden-state store keeps and verifiers recompute. Each request
has its own `DynamicCache(config=...)`; layers index it by their global layer index, and the causal
mask is built with `layer_idx=a` (the stage's first layer), without which cached decode breaks on
every stage but the first. A verification job ("run layers [a, b) over these rows") is the same code:
`run()` does one prefill over known positions with a throw-away cache.

Sampling (last stage): greedy (`temperature == 0`: argmax, lowest token id on ties), or temperature +
top-p with a per-request seed — see `sample_token` for the exact, reproducible rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from node.runtime.models.errors import ExecutionError, UnknownSession
from node.runtime.shard import Shard
from protocol.sampling import Sampling, sample_token  # noqa: F401  (the executor samples by the network's rule)

LogitsMode = Literal["none", "last", "all"]


@dataclass
class StageOutput:
    """Result of one forward call over positions [start, start + T)."""

    start: int
    hidden: torch.Tensor  # (T, d) stage output rows, pre final norm, in the shard's dtype
    logits: torch.Tensor | None = None  # last stage: (T, V) for "all", (1, V) for "last"; fp32


@dataclass
class Session:
    """One request's state on this stage: its KV cache and how many positions it holds."""

    request_id: bytes
    cache: object  # transformers DynamicCache
    sampling: Sampling
    length: int = 0
    created_at: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)


class StageExecutor:
    """Runs one shard over many requests, each with its own KV cache (sessions keyed by request id)."""

    def __init__(self, shard: Shard):
        self.shard = shard
        cfg = shard.config
        self.config = cfg
        self.max_positions = int(cfg.max_position_embeddings)
        self.sessions: dict[bytes, Session] = {}
        # Mask kind per layer, as the model's own forward would choose it.
        types = getattr(cfg, "layer_types", None)
        sliding = getattr(cfg, "sliding_window", None)
        self._kinds = [
            types[i] if types else ("sliding_attention" if sliding else "full_attention")
            for i in range(shard.start, shard.end)
        ]

    # ── sessions ──────────────────────────────────────────────────────────────────────────────
    def open(self, request_id: bytes, sampling: Sampling | None = None,
             capacity: int | None = None) -> Session:
        """Open a session; `capacity` (positions) bounds what a batched executor allocates."""
        from transformers import DynamicCache

        if request_id in self.sessions:
            raise ExecutionError(f"session {request_id.hex()} is already open on this stage")
        s = Session(request_id, DynamicCache(config=self.config), sampling or Sampling())
        self.sessions[request_id] = s
        return s

    def close(self, request_id: bytes) -> None:
        """Free a request's KV cache (finish, cancel or timeout). Unknown ids are an error."""
        if self.sessions.pop(request_id, None) is None:
            raise UnknownSession(
                f"no session {request_id.hex()} on stage [{self.shard.start}, {self.shard.end})"
            )

    def close_idle(self, max_idle_s: float, now: float | None = None) -> list[bytes]:
        """Free every session unused for more than `max_idle_s` (monotonic clock); returns their ids."""
        now = time.monotonic() if now is None else now
        idle = [rid for rid, s in self.sessions.items() if now - s.last_used > max_idle_s]
        for rid in idle:
            del self.sessions[rid]
        return idle

    def session(self, request_id: bytes) -> Session:
        s = self.sessions.get(request_id)
        if s is None:
            raise UnknownSession(
                f"no session {request_id.hex()} on stage [{self.shard.start}, {self.shard.end})"
            )
        return s

    @property
    def kv_bytes_per_token(self) -> int:
        """KV cache bytes one position costs on this stage (all its layers, K and V)."""
        cfg = self.config
        heads = int(cfg.num_attention_heads)
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        itemsize = torch.empty((), dtype=self.shard.dtype).element_size()
        return (self.shard.end - self.shard.start) * 2 * kv_heads * head_dim * itemsize

    # ── compute ───────────────────────────────────────────────────────────────────────────────
    def forward(
        self, request_id: bytes, x: torch.Tensor, start: int, logits: LogitsMode = "last"
    ) -> StageOutput:
        """Run this stage over positions [start, start + T) of an open session, extending its cache.

        `x` is token ids (T,) on the first stage, hidden rows (T, d) from the previous stage otherwise.
        """
        s = self.session(request_id)
        if start != s.length:
            raise ExecutionError(
                f"session {request_id.hex()}: input starts at position {start} but the cache holds "
                f"{s.length} positions (positions must arrive in order, without gaps)"
            )
        out = self._forward(x, start, s.cache, logits)
        s.length += out.hidden.shape[0]
        s.last_used = time.monotonic()
        return out

    def run(self, x: torch.Tensor, start: int = 0, logits: LogitsMode = "all") -> StageOutput:
        """One prefill over known positions with a throw-away cache (verification, replay checks)."""
        from transformers import DynamicCache

        if start != 0:
            raise ExecutionError(f"a cache-less run must start at position 0, got {start}")
        return self._forward(x, 0, DynamicCache(config=self.config), logits)

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor, start: int, cache, logits: LogitsMode) -> StageOutput:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        sh = self.shard
        h = self._embed_or_check(x)  # (1, T, d)
        T = h.shape[1]
        if start + T > self.max_positions:
            raise ExecutionError(
                f"positions [{start}, {start + T}) exceed the model's max_position_embeddings "
                f"({self.max_positions})"
            )
        pos = torch.arange(start, start + T, device=sh.device).unsqueeze(0)  # (1, T)
        rope = sh.rotary_emb(h, position_ids=pos)  # (cos, sin), each (1, T, head_dim)
        masks = {}
        for kind in set(self._kinds):
            first = sh.start + self._kinds.index(kind)  # first layer of this kind in the stage
            fn = (
                create_causal_mask
                if kind == "full_attention"
                else create_sliding_window_causal_mask
            )
            masks[kind] = fn(
                config=self.config,
                inputs_embeds=h,
                attention_mask=None,
                cache=cache,
                position_ids=pos,
                layer_idx=first,
            )
        for layer, kind in zip(sh.layers, self._kinds, strict=True):
            h = layer(
                h,
                attention_mask=masks[kind],
                position_embeddings=rope,
                position_ids=pos,
                cache=cache,
                use_cache=True,
            )  # (1, T, d)
        out = StageOutput(start=start, hidden=h[0])
        if logits != "none" and sh.is_last:
            assert sh.norm is not None and sh.lm_head is not None
            rows = h if logits == "all" else h[:, -1:]
            out.logits = sh.head_logits(rows)[0]  # (T, V) or (1, V), fp32 (the head rule)
        return out

    def _embed_or_check(self, x: torch.Tensor) -> torch.Tensor:
        sh = self.shard
        if not isinstance(x, torch.Tensor):
            raise ExecutionError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if sh.is_first:
            if x.dim() != 1 or x.dtype not in (torch.int64, torch.int32) or x.numel() == 0:
                raise ExecutionError(
                    f"first stage wants token ids of shape (T,) int64, T >= 1; got shape "
                    f"{tuple(x.shape)} dtype {x.dtype}"
                )
            vocab = sh.embed_tokens.num_embeddings  # type: ignore[union-attr]
            lo, hi = int(x.min()), int(x.max())
            if lo < 0 or hi >= vocab:
                raise ExecutionError(f"token ids must be in [0, {vocab}), got range [{lo}, {hi}]")
            return sh.embed_tokens(x.to(sh.device, torch.int64)).unsqueeze(0)  # (1, T, d)
        if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] != sh.hidden_size:
            raise ExecutionError(
                f"stage [{sh.start}, {sh.end}) wants hidden rows of shape (T, {sh.hidden_size}), "
                f"T >= 1; got {tuple(x.shape)}"
            )
        if x.dtype != sh.dtype:
            raise ExecutionError(f"hidden rows must be {sh.dtype}, got {x.dtype}")
        if not torch.isfinite(x).all():
            raise ExecutionError("hidden rows contain NaN or infinity")
        return x.to(sh.device).unsqueeze(0)  # (1, T, d)


@dataclass
class LocalGeneration:
    """What `generate_local` returns: the new tokens and each stage's output rows for every position."""

    tokens: list[int]
    stage_hidden: list[
        torch.Tensor
    ]  # per stage: (prompt + generated - 1, d); the last token is never fed


def generate_local(
    stages: list[StageExecutor],
    prompt: list[int],
    max_new_tokens: int,
    sampling: Sampling | None = None,
    request_id: bytes = b"\x00" * 32,
    stop_ids: tuple[int, ...] = (),
) -> LocalGeneration:
    """Drive a chain of stages in one process: prefill, then decode until `max_new_tokens` or a stop id.

    The reference the networked pipeline must match, and the engine of tests and benchmarks.
    """
    if not stages or not stages[0].shard.is_first or not stages[-1].shard.is_last:
        raise ExecutionError("stages must start at layer 0 and end at the model's last layer")
    for a, b in zip(stages, stages[1:], strict=False):
        if a.shard.end != b.shard.start:
            raise ExecutionError(
                f"stages are not contiguous: [.., {a.shard.end}) then [{b.shard.start}, ..)"
            )
    if not prompt:
        raise ExecutionError("prompt must hold at least one token")
    params = sampling or Sampling()
    for st in stages:
        st.open(request_id, params)
    rows: list[list[torch.Tensor]] = [[] for _ in stages]
    tokens: list[int] = []
    try:
        x: torch.Tensor = torch.tensor(prompt, dtype=torch.int64)
        start = 0
        while True:
            for k, st in enumerate(stages):
                out = st.forward(request_id, x, start)
                rows[k].append(out.hidden)
                x = out.hidden
            assert out.logits is not None
            position = start + x.shape[0]  # the position of the token being sampled
            tok = sample_token(out.logits[-1], params, position)
            tokens.append(tok)
            if len(tokens) >= max_new_tokens or tok in stop_ids:
                break
            start = position
            x = torch.tensor([tok], dtype=torch.int64)
    finally:
        for st in stages:
            st.sessions.pop(request_id, None)
    return LocalGeneration(tokens, [torch.cat(r, dim=0) for r in rows])
