"""Batched stage executor: one forward over the rows of many requests, each with its own KV cache.

Continuous batching (iteration-level scheduling, as in Orca / vLLM): each step the data plane hands
`BatchedExecutor.step` a list of `Work` items — one decode row of every running request plus
prefill chunks of new ones — and gets one `StageOutput` per item back. The rows are *packed*, not
padded: all items' rows are concatenated into one sequence of `N` rows, so every projection and MLP
GEMM runs once over `(1, N, d)` — that is where batching pays, since a decode step is bound by
reading the weights — and only attention is done per request, against that request's own KV:

    h = cat(rows of item 0, rows of item 1, …)                        # (1, N, d)
    pos = cat(arange(start_i, start_i + T_i))                          # (1, N) per-row positions
    for layer in layers[a:b]:
        x = input_layernorm(h)
        q, k, v = proj(x) → rope(pos)                                  # (1, H, N, hd), (1, Hkv, N, hd)
        for item i:  KV_i[layer][start_i : start_i + T_i] = k_i, v_i   # in place
                     o_i = sdpa(q_i, KV_i[layer][:start_i + T_i], causal mask with offset start_i)
        h = h + o_proj(cat o_i);  h = h + mlp(post_attention_layernorm(h))
    last stage: logits = lm_head(norm(rows that need them))            # one GEMM for the batch

The per-request attention call is transformers' own `sdpa_attention_forward` with the mask the
model's forward would build (none for a prefill from 0 or a full-attention decode, else a boolean
causal / sliding-window mask), and the layer's own modules do everything else, so a batch of one
computes exactly what `StageExecutor` computes. In a larger batch a row may differ by GEMM
blocking noise only (a few ulps); tokens are compared in the tests.

KV: `RequestKV` holds per layer a `(1, Hkv, alloc, hd)` K and V buffer, grown in blocks up to the
capacity the session was admitted with (so memory held never exceeds what admission reserved) and
cropped by a re-route's rewind. Device and dtype are the shard's: the same code runs bf16 on CUDA.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from node.runtime.executor import LogitsMode, Session, StageExecutor, StageOutput
from node.runtime.models.errors import ExecutionError
from protocol.sampling import Sampling

BLOCK = 64  # KV positions allocated at a time


class RequestKV:
    """One request's K and V for every layer of a stage, written in place, grown by blocks."""

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, capacity: int):
        self.n_layers, self.kv_heads, self.head_dim = n_layers, kv_heads, head_dim
        self.dtype, self.device, self.capacity = dtype, device, capacity
        self.alloc = 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    def ensure(self, n: int) -> None:
        """Make room for positions [0, n)."""
        if n <= self.alloc:
            return
        if n > self.capacity:
            raise ExecutionError(f"KV cache needs {n} positions; the session was admitted for "
                                 f"{self.capacity}")
        new = min(self.capacity, max(n, self.alloc * 2, BLOCK))
        new = min(self.capacity, -(-new // BLOCK) * BLOCK)
        shape = (1, self.kv_heads, new, self.head_dim)
        ks = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        vs = [torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        for old, fresh in zip(self.k + self.v, ks + vs, strict=False):
            fresh[:, :, : self.alloc].copy_(old)
        self.k, self.v, self.alloc = ks, vs, new

    def crop(self, delta: int) -> None:
        """DynamicCache's `crop(-k)`: nothing to free here; the session's length says what is valid."""

    @property
    def bytes_held(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.n_layers * self.kv_heads * self.alloc * self.head_dim * itemsize


@dataclass
class Work:
    """One request's rows for one step: positions [start, start + T) of an open session."""

    request_id: bytes
    x: torch.Tensor  # ids (T,) on the first stage, rows (T, d) elsewhere
    start: int
    logits: LogitsMode = "last"
    session: Session | None = None  # resolved by the caller when it may close sessions meanwhile


class BatchedExecutor(StageExecutor):
    """A `StageExecutor` whose forwards go through one packed, batched path (`step`)."""

    def __init__(self, shard):
        super().__init__(shard)
        cfg = self.config
        heads = int(cfg.num_attention_heads)
        self.kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        self.window = getattr(cfg, "sliding_window", None)
        first = shard.layers[0].self_attn if len(shard.layers) else None
        self._rope_fn = sys.modules[type(first).__module__].apply_rotary_pos_emb if first else None
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        self._sdpa = sdpa_attention_forward
        self._pad: tuple | None = None  # this step's padded decode K/V and masks

    def open(self, request_id: bytes, sampling: Sampling | None = None,
             capacity: int | None = None) -> Session:
        if request_id in self.sessions:
            raise ExecutionError(f"session {request_id.hex()} is already open on this stage")
        sh = self.shard
        kv = RequestKV(sh.end - sh.start, self.kv_heads, self.head_dim, sh.dtype, sh.device,
                       min(capacity or self.max_positions, self.max_positions))
        s = Session(request_id, kv, sampling or Sampling())
        self.sessions[request_id] = s
        return s

    def forward(self, request_id: bytes, x: torch.Tensor, start: int,
                logits: LogitsMode = "last") -> StageOutput:
        return self.step([Work(request_id, x, start, logits)])[0]

    # ── the batched step ──────────────────────────────────────────────────────────────────────
    @torch.inference_mode()
    def step(self, items: list[Work]) -> list[StageOutput]:
        """Run every item's rows in one packed forward; outputs in the items' order."""
        if not items:
            return []
        sh = self.shard
        seen: set[bytes] = set()
        sessions, inputs = [], []
        for w in items:
            if w.request_id in seen:
                raise ExecutionError(f"request {w.request_id.hex()} appears twice in one step")
            seen.add(w.request_id)
            s = w.session if w.session is not None else self.session(w.request_id)
            if w.start != s.length:
                raise ExecutionError(
                    f"session {w.request_id.hex()}: input starts at position {w.start} but the cache "
                    f"holds {s.length} positions (positions must arrive in order, without gaps)")
            h = self._embed_or_check(w.x)[0]  # (T, d)
            if w.start + h.shape[0] > self.max_positions:
                raise ExecutionError(
                    f"positions [{w.start}, {w.start + h.shape[0]}) exceed the model's "
                    f"max_position_embeddings ({self.max_positions})")
            kv = s.cache
            assert isinstance(kv, RequestKV), "sessions of a BatchedExecutor hold a RequestKV"
            kv.ensure(w.start + h.shape[0])
            sessions.append(s)
            inputs.append(h)
        lens = [h.shape[0] for h in inputs]
        bounds = [0]
        for n in lens:
            bounds.append(bounds[-1] + n)
        h = torch.cat(inputs, dim=0).unsqueeze(0) if len(inputs) > 1 else inputs[0].unsqueeze(0)
        pos = torch.cat([torch.arange(w.start, w.start + n, device=sh.device)
                         for w, n in zip(items, lens, strict=True)]).unsqueeze(0)  # (1, N)
        rope = sh.rotary_emb(h, position_ids=pos)  # (cos, sin), each (1, N, hd)
        masks = [self._masks(w.start, n) for w, n in zip(items, lens, strict=True)]
        self._prepare_decode(items, lens)
        for li, (layer, kind) in enumerate(zip(sh.layers, self._kinds, strict=True)):
            h = self._layer(layer, li, kind, h, rope, items, sessions, bounds, masks)
        outs = []
        for i, w in enumerate(items):
            sessions[i].length += lens[i]
            outs.append(StageOutput(start=w.start, hidden=h[0, bounds[i]: bounds[i + 1]]))
        if sh.is_last:
            self._logits(h[0], items, bounds, outs)
        return outs

    def _layer(self, layer, li, kind, h, rope, items, sessions, bounds, masks) -> torch.Tensor:
        attn = layer.self_attn
        N = h.shape[1]
        residual = h
        x = layer.input_layernorm(h)
        q = attn.q_proj(x).view(1, N, -1, self.head_dim).transpose(1, 2)  # (1, H, N, hd)
        k = attn.k_proj(x).view(1, N, -1, self.head_dim).transpose(1, 2)  # (1, Hkv, N, hd)
        v = attn.v_proj(x).view(1, N, -1, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q, k = self._rope_fn(q, k, cos, sin)
        parts: list[torch.Tensor | None] = []
        decodes: list[int] = []
        for i, w in enumerate(items):
            lo, hi = bounds[i], bounds[i + 1]
            kv = sessions[i].cache
            end = w.start + (hi - lo)
            kv.k[li][:, :, w.start: end].copy_(k[:, :, lo:hi])
            kv.v[li][:, :, w.start: end].copy_(v[:, :, lo:hi])
            if hi - lo == 1 and self._pad is not None:
                decodes.append(i)  # done together below
                parts.append(None)
                continue
            o, _ = self._sdpa(attn, q[:, :, lo:hi], kv.k[li][:, :, :end], kv.v[li][:, :, :end],
                              masks[i][kind], dropout=0.0, scaling=attn.scaling)
            parts.append(o)  # (1, T_i, H, hd)
        if decodes:
            o = self._decode_attention(attn, li, kind, q, items, sessions, bounds, decodes)
            for b, i in enumerate(decodes):
                parts[i] = o[b: b + 1]  # (1, 1, H, hd)
        done = [p for p in parts if p is not None]
        assert len(done) == len(parts)
        o = torch.cat(done, dim=1) if len(done) > 1 else done[0]
        h = residual + attn.o_proj(o.reshape(1, N, -1).contiguous())
        residual = h
        return residual + layer.mlp(layer.post_attention_layernorm(h))

    def _decode_attention(self, attn, li, kind, q, items, sessions, bounds, decodes) -> torch.Tensor:
        """Every decode row of the step in one padded attention call (B, H, 1, hd): per-request
        calls on one query row cost more in kernel launches than the arithmetic itself."""
        assert self._pad is not None
        Kp, Vp, mask = self._pad
        for b, i in enumerate(decodes):
            end = items[i].start + 1
            Kp[b, :, :end] = sessions[i].cache.k[li][0, :, :end]
            Vp[b, :, :end] = sessions[i].cache.v[li][0, :, :end]
        rows = torch.tensor([bounds[i] for i in decodes], device=q.device)
        qd = q[0].index_select(1, rows).transpose(0, 1).unsqueeze(2)  # (B, H, 1, hd)
        m = mask[kind]
        o = torch.nn.functional.scaled_dot_product_attention(
            qd, Kp, Vp, attn_mask=m, scale=attn.scaling,
            enable_gqa=self.kv_heads != qd.shape[1])  # (B, H, 1, hd)
        return o.transpose(1, 2)  # (B, 1, H, hd)

    def _prepare_decode(self, items: list[Work], lens: list[int]) -> None:
        """Zeroed padded K/V buffers and masks for this step's decode rows (None if < 2 of them)."""
        ends = [w.start + 1 for w, n in zip(items, lens, strict=True) if n == 1]
        if len(ends) < 2:
            self._pad = None
            return
        sh, L = self.shard, max(ends)
        shape = (len(ends), self.kv_heads, L, self.head_dim)
        Kp = torch.zeros(shape, dtype=sh.dtype, device=sh.device)
        Vp = torch.zeros(shape, dtype=sh.dtype, device=sh.device)
        kpos = torch.arange(L, device=sh.device).unsqueeze(0)  # (1, L)
        e = torch.tensor(ends, device=sh.device).unsqueeze(1)  # (B, 1)
        masks = {}
        for kind in set(self._kinds):
            m = kpos < e
            window = self.window if kind == "sliding_attention" else None
            if window is not None:
                m = m & (e - 1 - kpos < window)
            masks[kind] = m[:, None, None, :]  # (B, 1, 1, L)
        self._pad = (Kp, Vp, masks)

    def _masks(self, start: int, T: int) -> dict[str, torch.Tensor | None]:
        """Per attention kind, the (1, 1, T, start + T) boolean mask — None where `sdpa`'s own
        causal flag (prefill from 0) or no mask at all (a decode row sees every key) is exact."""
        end = start + T
        out: dict[str, torch.Tensor | None] = {}
        for kind in set(self._kinds):
            window = self.window if kind == "sliding_attention" else None
            if (start == 0 or T == 1) and (window is None or end <= window):
                out[kind] = None
                continue
            q = torch.arange(start, end, device=self.shard.device).unsqueeze(1)  # (T, 1)
            kpos = torch.arange(end, device=self.shard.device).unsqueeze(0)  # (1, L)
            m = kpos <= q
            if window is not None:
                m = m & (q - kpos < window)
            out[kind] = m[None, None]
        return out

    def _logits(self, h: torch.Tensor, items: list[Work], bounds: list[int],
                outs: list[StageOutput]) -> None:
        sh = self.shard
        assert sh.norm is not None and sh.lm_head is not None
        picks: list[torch.Tensor] = []
        spans: list[tuple[int, int] | None] = []
        for i, w in enumerate(items):
            lo, hi = bounds[i], bounds[i + 1]
            if w.logits == "none":
                spans.append(None)
                continue
            rows = h[lo:hi] if w.logits == "all" else h[hi - 1: hi]
            spans.append((sum(p.shape[0] for p in picks), rows.shape[0]))
            picks.append(rows)
        if not picks:
            return
        rows = torch.cat(picks, dim=0) if len(picks) > 1 else picks[0]
        logits = sh.head_logits(rows.unsqueeze(0))[0]  # (R, V), fp32 (the head rule)
        for out, span in zip(outs, spans, strict=True):
            if span is not None:
                out.logits = logits[span[0]: span[0] + span[1]]
