"""Honest and cheating workers of one stage, for `tests/verify_stage` and `bench/verify.py`.

A `Bench` serves a tiny checkpoint split into stages with the node's own code (`load_shard`,
`StageExecutor`, `generate_local`). An *honest* worker runs a request some legitimate way — cached
decode after a prefill of the prompt, one prefill of the whole sequence, on 1 thread, or a prefill in
two chunks — and yields one `Task` per stage: the stage's input as the verifier receives it (token ids
on the first stage; rows exact or, `rounded`, their bf16 rounding — what the previous stage's
commitment authenticates), the claimed rows, and on the last stage the claimed tokens. A *cheating*
worker replaces the claim (`ATTACKS`): another model (other seed; other size = half the MLP width),
int8 / 4-bit fake-quantized weights in one or all of the stage's layers (`tests/verifier/lab.py`'s
`fake_quantize_`), a skipped layer, every row + 1 % RMS noise, one forged row, rows replayed from
another request, random tokens (last stage). `Bench.verify(task)` is the verifier: `check_stage`.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from node.runtime.executor import StageExecutor, generate_local
from node.runtime.models.tiny import build_tiny_model
from node.runtime.shard import load_shard
from node.verification.stage_check import StageCheck, TokenClaim, check_stage
from protocol.sampling import Sampling, sample_token
from tests.support.lab import fake_quantize_
from verifier.encoding import bf16_bits, bf16_to_float
from verifier.tolerance import Thresholds

VARIANTS = ("decode", "prefill", "threads1", "chunked")
ATTACKS = ("other_seed", "other_size", "int8_all", "int8_one", "int4_all", "int4_one", "skip_layer",
           "noise_rows", "forged_row", "other_request", "random_tokens")
SAMPLINGS = (Sampling(0.0, 1.0, 0), Sampling(0.7, 0.9, 11), Sampling(1.0, 1.0, 23))


@dataclass
class Task:
    """One verified stage of one request: what the verifier gets."""

    stage: int
    x: torch.Tensor  # input ids (T,) or rows (T, d) in the shard's dtype
    claimed: torch.Tensor  # (T, d)
    tokens: TokenClaim | None  # last stage only


@dataclass
class Request:
    """An honest run: every stage's exact input and output rows, and the generated tokens."""

    ids: torch.Tensor  # (T,) the sequence fed: prompt + generated tokens but the last
    inputs: list[torch.Tensor]  # per stage: ids or exact input rows
    outputs: list[torch.Tensor]  # per stage (T, d)
    tokens: list[int]
    sampling: Sampling


class _Skip(torch.nn.Module):
    """A decoder layer that hands its input on: the skipped-layer cheat."""

    def forward(self, h, *args, **kwargs):  # noqa: D401 - torch signature
        return h


def build_models(root: Path, init_std: float = 0.1) -> dict[str, Path]:
    """The served tiny Llama and the two substitute models, written under `root`."""
    served = build_tiny_model(root / "served", seed=0, init_std=init_std)
    return {
        "served": served,
        "other_seed": _reseeded(served, root / "other-seed", seed=7, init_std=init_std),
        "other_size": build_tiny_model(root / "other-size", seed=0, mlp=352, init_std=init_std),
    }


def _reseeded(src: Path, out: Path, seed: int, init_std: float) -> Path:
    """The served model's architecture and tokenizer with weights drawn from another seed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(src), local_files_only=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0.0, init_std)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(src), local_files_only=True).save_pretrained(out)
    return out


class Bench:
    """Stages of the served model (`ranges`) plus cheating executors, in one dtype on CPU."""

    def __init__(self, models: dict[str, Path], ranges=((0, 4), (4, 8)), dtype=torch.float32):
        self.models, self.ranges, self.dtype = models, tuple(ranges), dtype
        self.stages = [StageExecutor(load_shard(models["served"], a, b, "cpu", dtype)) for a, b in ranges]
        self._cheats: dict[tuple[str, int], StageExecutor] = {}

    @property
    def last(self) -> int:
        return len(self.ranges) - 1

    @property
    def vocab(self) -> int:
        return int(self.stages[0].shard.embed_tokens.num_embeddings)

    def prompt(self, rng: random.Random, length: int) -> list[int]:
        """A random prompt of `length` token ids (special ids 0-2 left out)."""
        return [rng.randrange(3, self.vocab) for _ in range(length)]

    # ── honest ──────────────────────────────────────────────────────────────────────────────
    @torch.inference_mode()
    def run(self, prompt: list[int], new_tokens: int, sampling: Sampling, variant: str) -> Request:
        """Generate with cached decode, then (unless `variant` is "decode") recompute the rows the
        variant's way over the same sequence."""
        gen = generate_local(self.stages, prompt, new_tokens, sampling)
        ids = torch.tensor(prompt + gen.tokens[:-1], dtype=torch.int64)
        outputs = list(gen.stage_hidden)
        if variant != "decode":
            outputs = self._rows(ids, variant)
        inputs = [ids] + outputs[:-1]
        return Request(ids, inputs, outputs, gen.tokens, sampling)

    def _rows(self, ids: torch.Tensor, variant: str) -> list[torch.Tensor]:
        old = torch.get_num_threads()
        try:
            if variant == "threads1":
                torch.set_num_threads(1)
            out, x = [], ids
            for st in self.stages:
                if variant == "chunked":  # prefill in two chunks through a session's cache
                    rid = b"\x01" * 32
                    st.open(rid)
                    try:
                        half = max(1, x.shape[0] // 2)
                        h = torch.cat([st.forward(rid, x[:half], 0, "none").hidden,
                                       st.forward(rid, x[half:], half, "none").hidden])
                    finally:
                        st.close(rid)
                elif variant in ("prefill", "threads1"):
                    h = st.run(x, logits="none").hidden
                else:
                    raise ValueError(f"unknown variant {variant!r}")
                out.append(h)
                x = h
            return out
        finally:
            torch.set_num_threads(old)

    def tasks(self, req: Request, rounded: bool) -> list[Task]:
        """One task per stage, the verifier's input taken exact or bf16-rounded."""
        out = []
        for k, _ in enumerate(self.ranges):
            x = req.inputs[k] if k == 0 else (self.round(req.inputs[k]) if rounded else req.inputs[k])
            out.append(Task(k, x, req.outputs[k], self.token_claim(req) if k == self.last else None))
        return out

    def token_claim(self, req: Request, tokens=None) -> TokenClaim:
        s = req.sampling
        return TokenClaim(tuple(req.tokens if tokens is None else tokens), None,
                          Sampling(s.temperature, s.top_p, s.seed))

    def round(self, rows: torch.Tensor) -> torch.Tensor:
        """bf16 rounding of rows, back in the shard's dtype."""
        return torch.from_numpy(bf16_to_float(bf16_bits(rows))).to(self.dtype)

    # ── cheats ──────────────────────────────────────────────────────────────────────────────
    def _cheat(self, attack: str, k: int) -> StageExecutor:
        key = (attack, k)
        if key not in self._cheats:
            a, b = self.ranges[k]
            if attack in ("other_seed", "other_size"):
                ex = StageExecutor(load_shard(self.models[attack], a, b, "cpu", self.dtype))
            else:
                ex = StageExecutor(copy.copy(self.stages[k].shard))
                ex.shard.layers = copy.deepcopy(self.stages[k].shard.layers)
                mid = (b - a) // 2  # the stage's middle layer, index within the stage
                if attack == "skip_layer":
                    ex.shard.layers[mid] = _Skip()
                else:
                    bits, group = (8, None) if attack.startswith("int8") else (4, 32)
                    shim = SimpleNamespace(model=SimpleNamespace(layers=ex.shard.layers))
                    fake_quantize_(shim, bits, group, layers=[mid] if attack.endswith("_one") else None)
            self._cheats[key] = ex
        return self._cheats[key]

    @torch.inference_mode()
    def attack(self, task: Task, req: Request, attack: str, other: Request, rng: np.random.Generator) -> Task:
        """The task as a worker cheating with `attack` would claim it (honest inputs)."""
        honest = task.claimed
        tokens = task.tokens
        if attack in ("noise_rows", "forged_row"):
            h = honest.float().numpy().copy()
            rms = np.sqrt((h**2).mean(axis=1, keepdims=True))
            if attack == "noise_rows":
                h = h + rng.standard_normal(h.shape).astype(np.float32) * rms * 0.01
            else:
                p = int(rng.integers(0, len(h)))
                h[p] = rng.standard_normal(h.shape[1]).astype(np.float32) * rms[p]
            claimed = torch.from_numpy(h).to(honest.dtype)
        elif attack == "other_request":
            if other.outputs[task.stage].shape != honest.shape:
                raise ValueError("other_request needs another request of the same length")
            claimed = other.outputs[task.stage]
        elif attack == "random_tokens":
            if task.tokens is None:
                raise ValueError("random_tokens applies to the last stage only")
            vocab = self.stages[-1].shard.lm_head.weight.shape[0]  # type: ignore[union-attr]
            r = random.Random(int(rng.integers(0, 2**31)))
            claimed, tokens = honest, self.token_claim(req, [r.randrange(vocab) for _ in req.tokens])
        else:  # weight-level cheats: recompute with the cheating stage, tokens from its own logits
            ex = self._cheat(attack, task.stage)
            out = ex.run(req.inputs[task.stage], logits="all" if task.tokens is not None else "none")
            claimed = out.hidden
            if task.tokens is not None:
                assert out.logits is not None
                n, T = len(req.tokens), honest.shape[0]
                first = T - n + 1
                toks = [sample_token(out.logits[first - 1 + i], req.sampling, first + i) for i in range(n)]
                tokens = self.token_claim(req, toks)
        return Task(task.stage, task.x, claimed, tokens)

    def verify(self, task: Task, thresholds: Thresholds) -> StageCheck:
        return check_stage(self.stages[task.stage], task.x, task.claimed, thresholds, task.tokens)


