"""Benign and cheating workers of a whole model, for calibrating and testing the stage check.

`Lab` runs a Hugging Face causal LM (SmolLM2 from its imported checkpoint, or a tiny random model
built from a config and a seed) with its own layer loop, so it can do what a serving worker does and
what a verifier does, in fp32 or bf16 on CPU:

- a *worker* (`serve`) generates greedy tokens for many requests and keeps the residual stream at
  every layer boundary (`Run.rows[l]` = input of layer l, `rows[L]` = output of the last layer,
  before the final norm) in one of the legitimate ways: `batched` — the serving core: a padded
  batched prefill of prompts of mixed lengths (left padding, per-row positions) then batched cached
  decode steps; `decode1` — one request at a time, prefill then cached decode; `chunked` — the final
  sequence prefilled in chunks through the cache; `prefill` — one prefill of the final sequence;
  each optionally on 1 thread;
- a *verifier* (`recompute`) runs layers [a, b) with one prefill from the stage's input (token ids
  on the first stage, else the previous stage's stored rows, proven against its commitment), one
  request at a time or as a right-padded batch.

Cheats are model edits (`cheat_model`: int8 / 4-bit / fp8 weights, pruned heads, another model,
half-width MLP, skipped layers) or row edits done by the caller. Used by `bench/verify.py`,
`bench/tolerance.py` and `tests/verifier`. Nothing is downloaded: SmolLM2 is the checkpoint
`veriplex model import smollm2` wrote.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

SMOLLM2 = Path(os.environ.get("VERIPLEX_SMOLLM2", Path.home() / ".veriplex" / "models" / "smollm2"))
MODES = ("batched", "decode1", "chunked", "prefill")


def smollm2_available() -> bool:
    return (SMOLLM2 / "model.safetensors").is_file()


def load_smollm2(dtype: torch.dtype = torch.float32, path: Path = SMOLLM2):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path), local_files_only=True, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval().to(dtype)


def tiny_model(arch: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32, *, layers: int = 6,
               hidden: int = 128, heads: int = 4, kv_heads: int = 2, mlp: int = 352, vocab: int = 512,
               init_std: float = 0.1):
    """A random tiny decoder (eval mode) of `arch` (llama, qwen2, mistral) from a config and a seed."""
    common: dict[str, Any] = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1024,
        tie_word_embeddings=True, initializer_range=init_std, attn_implementation="sdpa")
    cfg = {"llama": lambda: transformers.LlamaConfig(**common),
           "qwen2": lambda: transformers.Qwen2Config(**common, use_sliding_window=False),
           "mistral": lambda: transformers.MistralConfig(**common, sliding_window=1024)}[arch]()
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval().to(dtype)


@dataclass
class Run:
    """One request as a worker served it."""

    ids: list[int]  # the sequence fed: prompt + generated tokens but the last
    prompt_len: int
    tokens: list[int]  # generated tokens; token i sits at position prompt_len + i
    rows: list[torch.Tensor]  # per layer boundary l = 0..L: (T, d) in the model's dtype
    logits: torch.Tensor | None = None  # (len(tokens), V) fp32: the worker's own logits of each token


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def to_bf16(rows: torch.Tensor) -> torch.Tensor:
    """What a commitment authenticates: the rows' bf16 rounding (round to nearest even)."""
    return rows.to(torch.bfloat16)


class Lab:
    """A model's layers driven by hand: batched, cached, chunked, or one stage from committed rows."""

    def __init__(self, model, name: str = "model"):
        self.model, self.name = model, name
        self.inner = model.model
        self.layers = self.inner.layers
        self.config = model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def vocab(self) -> int:
        return int(self.config.vocab_size)

    def prompt(self, rng: np.random.Generator, length: int) -> list[int]:
        return [int(t) for t in rng.integers(3, self.vocab, length)]

    # ── the layer loop ────────────────────────────────────────────────────────────────────────
    def _layers(self, h: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None, a: int, b: int,
                cache=None, keep: list | None = None, edits=None) -> torch.Tensor:
        """Layers [a, b) over h (B, T, d); `keep` collects each layer's output."""
        rope = self.inner.rotary_emb(h, position_ids=pos)
        for i in range(a, b):
            layer = edits.get(i, self.layers[i]) if edits else self.layers[i]
            h = layer(h, attention_mask=mask, position_embeddings=rope, position_ids=pos,
                      cache=cache, use_cache=cache is not None)
            if keep is not None:
                keep.append(h)
        return h

    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        """(T, V) fp32 logits of last-layer rows (T, d), in the model's dtype (what a worker does)."""
        return self.model.lm_head(self.inner.norm(rows.unsqueeze(0)))[0].float()

    @torch.inference_mode()
    def logits_fp32(self, rows: torch.Tensor) -> torch.Tensor:
        """(T, V) logits of rows (T, d) through the final norm and LM head in float32: the
        verifier's token reference from the claimed rows (the row check vouches for them), so the
        token tolerance covers only this head's rounding, not the stage's accumulated noise."""
        h = to_bf16(rows).float() if self.dtype != torch.float32 else rows.float()
        norm = self.inner.norm
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight.float()
        return h @ self.model.lm_head.weight.float().T

    # ── workers ───────────────────────────────────────────────────────────────────────────────
    @torch.inference_mode()
    def serve(self, prompts: Sequence[list[int]], new: Sequence[int], mode: str = "batched",
              n_threads: int | None = None, chunk: int = 16) -> list[Run]:
        """Generate `new[i]` greedy tokens after `prompts[i]`, keeping every boundary's rows."""
        with threads(n_threads):
            if mode == "batched":
                return self._serve_batched(prompts, new)
            runs = [self._serve_batched([p], [n]) [0] for p, n in zip(prompts, new, strict=True)]
            if mode == "decode1":
                return runs
            if mode in ("prefill", "chunked"):
                return [self._refill(r, chunk if mode == "chunked" else None) for r in runs]
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")

    def _serve_batched(self, prompts: Sequence[list[int]], new: Sequence[int]) -> list[Run]:
        B, L = len(prompts), self.n_layers
        lens = [len(p) for p in prompts]
        P, steps = max(lens), max(new) - 1  # the last token is never fed
        ids = torch.zeros(B, P, dtype=torch.int64)
        valid = torch.zeros(B, P, dtype=torch.bool)
        for i, p in enumerate(prompts):  # left padding: every request's last prompt token at P-1
            ids[i, P - len(p):] = torch.tensor(p)
            valid[i, P - len(p):] = True
        pos = (valid.long().cumsum(1) - 1).clamp_min(0)
        cache = transformers.DynamicCache(config=self.config)
        causal = torch.tril(torch.ones(P, P, dtype=torch.bool))
        mask = (causal[None] & valid[:, None, :]) | torch.eye(P, dtype=torch.bool)[None]  # pads see themselves
        keep: list[torch.Tensor] = []
        h0 = self.inner.embed_tokens(ids)
        h = self._layers(h0, pos, mask[:, None], 0, L, cache, keep)
        bounds = [[h0], *[[k] for k in keep]]  # per boundary, list of (B, t, d) pieces
        step_logits = [self.logits_batch(h[:, -1:])[:, 0]]  # (B, V) per step
        toks = [[int(t)] for t in step_logits[0].argmax(-1)]
        seen = valid.clone()
        last = pos[:, -1]
        for _ in range(steps):
            x = torch.tensor([t[-1] for t in toks]).unsqueeze(1)
            last = last + 1
            seen = torch.cat([seen, torch.ones(B, 1, dtype=torch.bool)], 1)
            keep = []
            h0 = self.inner.embed_tokens(x)
            h = self._layers(h0, last[:, None], seen[:, None, None, :], 0, L, cache, keep)
            for piece, k in zip(bounds, [h0, *keep], strict=True):
                piece.append(k)
            step_logits.append(self.logits_batch(h)[:, 0])
            for t, nt in zip(toks, step_logits[-1].argmax(-1), strict=True):
                t.append(int(nt))
        worker_logits = torch.stack(step_logits, 1)  # (B, steps + 1, V)
        full = [torch.cat(piece, 1) for piece in bounds]  # (B, P + steps, d)
        runs = []
        for i, (p, n) in enumerate(zip(prompts, new, strict=True)):
            T = len(p) + n - 1
            lo = P - len(p)
            rows = [f[i, lo:lo + T].clone() for f in full]
            runs.append(Run(list(p) + toks[i][:n - 1], len(p), toks[i][:n], rows, worker_logits[i, :n].clone()))
        return runs

    def logits_batch(self, h: torch.Tensor) -> torch.Tensor:
        """The worker's logits of (B, t, d) rows: the network's head rule — final norm and LM head
        in float32 from the rows as committed (bf16 logits are too coarse to reproduce a token:
        ulp 0.5 at |logit| ≥ 64)."""
        return self.logits_fp32(h)

    def _refill(self, run: Run, chunk: int | None) -> Run:
        """The same sequence recomputed by one prefill, or by a prefill in chunks through a cache."""
        ids = torch.tensor(run.ids).unsqueeze(0)
        T, L = ids.shape[1], self.n_layers
        cache = transformers.DynamicCache(config=self.config)
        pieces: list[list[torch.Tensor]] = [[] for _ in range(L + 1)]
        step = chunk or T
        for s in range(0, T, step):
            x = ids[:, s:s + step]
            t = x.shape[1]
            mask = torch.ones(1, 1, t, s + t, dtype=torch.bool)
            mask[0, 0, :, s:] = torch.tril(torch.ones(t, t, dtype=torch.bool))
            keep: list[torch.Tensor] = []
            h0 = self.inner.embed_tokens(x)
            self._layers(h0, torch.arange(s, s + t)[None], None if chunk is None else mask, 0, L, cache, keep)
            for piece, k in zip(pieces, [h0, *keep], strict=True):
                piece.append(k)
        rows = [torch.cat(p, 1)[0] for p in pieces]
        n = len(run.tokens)
        return Run(run.ids, run.prompt_len, run.tokens, rows,
                   self.logits_fp32(rows[L])[run.prompt_len - 1: run.prompt_len - 1 + n])

    # ── the verifier ──────────────────────────────────────────────────────────────────────────
    @torch.inference_mode()
    def recompute(self, inputs: Sequence[torch.Tensor], a: int, b: int, batched: bool = False,
                  edits=None, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """Layers [a, b) over each committed input — token ids (T,) when a == 0, else rows (T, d)
        (given as bf16, cast to the model's dtype) — by one prefill; (T, d) outputs."""
        dt = dtype or self.dtype
        def embed(x: torch.Tensor) -> torch.Tensor:
            return self.inner.embed_tokens(x.long()).to(dt) if a == 0 else x.to(dt)
        if not batched:
            outs = []
            for x in inputs:
                h = embed(x).unsqueeze(0)
                pos = torch.arange(h.shape[1])[None]
                outs.append(self._layers(h, pos, None, a, b, edits=edits)[0])
            return outs
        T = max(x.shape[0] for x in inputs)
        d = self.config.hidden_size
        h = torch.zeros(len(inputs), T, d, dtype=dt)
        valid = torch.zeros(len(inputs), T, dtype=torch.bool)
        for i, x in enumerate(inputs):  # right padding: real rows never attend a pad
            h[i, :x.shape[0]] = embed(x)
            valid[i, :x.shape[0]] = True
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))[None] & (valid[:, None, :] | torch.eye(T, dtype=torch.bool)[None])
        out = self._layers(h, torch.arange(T)[None].expand(len(inputs), T), mask[:, None], a, b, edits=edits)
        return [out[i, :x.shape[0]] for i, x in enumerate(inputs)]

    def stage_input(self, run: Run, a: int) -> torch.Tensor:
        """What the verifier of stage [a, ·) gets: token ids, or the previous stage's stored rows in
        the worker's dtype (the node's verifier fetches them and checks that their bf16 rounding
        rebuilds the committed root; in bf16 they are the committed rows themselves)."""
        return torch.tensor(run.ids) if a == 0 else run.rows[a]


# ── cheats ──────────────────────────────────────────────────────────────────────────────────────
def _linears(layer) -> list[torch.nn.Linear]:
    return [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]


@torch.no_grad()
def quantize_layer(layer, kind: str):
    """A copy of `layer` with its linear weights fake-quantized: int8 per output channel, int4 in
    groups of 32, or fp8 (e4m3, per output channel scale)."""
    q = copy.deepcopy(layer)
    for mod in _linears(q):
        w = mod.weight.float()
        if kind == "fp8":
            scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 448.0
            w2 = (w / scale).to(torch.float8_e4m3fn).float() * scale
        else:
            bits, group = (8, w.shape[1]) if kind == "int8" else (4, 32)
            qmax = 2 ** (bits - 1) - 1
            g = w.reshape(w.shape[0], -1, group)
            scale = g.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / qmax
            w2 = (torch.round(g / scale).clamp(-qmax, qmax) * scale).reshape(w.shape)
        mod.weight.copy_(w2.to(mod.weight.dtype))
    return q


@torch.no_grad()
def prune_heads(layer, heads: Sequence[int], head_dim: int):
    """A copy of `layer` whose attention output ignores `heads` (their o_proj columns zeroed)."""
    q = copy.deepcopy(layer)
    for h in heads:
        q.self_attn.o_proj.weight[:, h * head_dim:(h + 1) * head_dim] = 0
    return q


@torch.no_grad()
def perturb_layer(layer, std: float, seed: int):
    """A copy of `layer` with N(0, std²) added to every weight — 'another model'."""
    q = copy.deepcopy(layer)
    g = torch.Generator().manual_seed(seed)
    for p in q.parameters():
        p.add_((torch.randn(p.shape, generator=g) * std).to(p.dtype))
    return q


@torch.no_grad()
def half_mlp(layer):
    """A copy of `layer` whose MLP keeps the half of its channels with the largest down-projection
    norms — a smaller model (structured pruning)."""
    q = copy.deepcopy(layer)
    m = q.mlp
    keep = m.down_proj.weight.float().norm(dim=0).argsort(descending=True)[: m.down_proj.weight.shape[1] // 2]
    mask = torch.zeros(m.down_proj.weight.shape[1], dtype=m.down_proj.weight.dtype)
    mask[keep] = 1
    m.down_proj.weight.mul_(mask[None])
    return q


class Skip(torch.nn.Module):
    """A decoder layer that hands its input on: the skipped-layer cheat."""

    def forward(self, h, *args, **kwargs):  # noqa: D401 - torch signature
        return h
