"""Test support for the verifier: a tiny random Llama and the (claimed, recomputed) row pairs it yields.

The model (8 layers, hidden 256, 8 heads / 4 KV heads, MLP 704) is built with `transformers` from a
config and a seed — nothing is downloaded. `TinyLab` runs it and captures a stage's input and output
rows (the residual stream before layer a and after layer b−1, before the final norm) with forward
hooks. A *worker* computes a stage in some legitimate way (`run`: repeated, 1 thread, in a batch of
4, cached decode, eager attention); a *verifier* recomputes it with one prefill from the stage's
committed input (`verify`). `benign_pairs` and `attack_pairs` build the pairs the tolerance test must
pass and fail. Used by `tests/verifier` (through conftest fixtures) and by `bench/tolerance.py`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import numpy as np
import torch
import transformers

from verifier.encoding import bf16_bits, bf16_to_float

VOCAB = 512
STAGES = ((0, 4), (4, 8))  # layer ranges whose output rows the tests compare
VARIANTS = ("repeat", "threads1", "batch4", "decode", "eager")
ATTACKS = ("other_seed", "int8_all", "int8_one", "int4_all", "int4_one", "skip_layer",
           "noise_rows", "forged_row", "other_request")


def tiny_llama(seed: int, path=None, dtype=torch.float32):
    """A fresh random tiny Llama (eval mode); saved to and reloaded from `path` if given."""
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=704, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
        tie_word_embeddings=True, attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    if path is not None:
        model.save_pretrained(path)
        model = transformers.LlamaForCausalLM.from_pretrained(path, local_files_only=True).eval()
    return model.to(dtype)


def prompts(n: int, length: int, seed: int) -> torch.Tensor:
    """n random token sequences (n, length) from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, length), generator=g)


def round_bf16(rows: np.ndarray) -> np.ndarray:
    """What a commitment keeps of fp32 rows: their bf16 rounding, back as fp32."""
    return bf16_to_float(bf16_bits(rows))


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass early."""


def _forward(model, **kwargs) -> None:
    with contextlib.suppress(_Stop):
        model(**kwargs)


class TinyLab:
    """Runs one tiny model; rows come back as (T, d) fp32 numpy arrays."""

    def __init__(self, model):
        self.model = model
        self.layers = model.model.layers

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @contextlib.contextmanager
    def _capture(self, layers: set[int], skip: int | None = None) -> Iterator[dict]:
        got: dict[int, list] = {i: [] for i in layers}
        last = max(layers)

        def keep(i: int, out: torch.Tensor) -> None:
            got[i].append(out.detach())
            if i == last and last < len(self.layers) - 1:
                raise _Stop  # nothing after the last captured layer is needed

        hooks = [self.layers[i].register_forward_hook(lambda m, inp, o, i=i: keep(i, o)) for i in layers]
        if skip is not None:  # the layer hands its input on unchanged: a skipped layer
            hooks.append(self.layers[skip].register_forward_hook(
                lambda m, inp, kw, o: inp[0] if inp else kw["hidden_states"], with_kwargs=True))
        try:
            yield got
        finally:
            for h in hooks:
                h.remove()

    def run(self, ids, stage=(4, 8), variant: str = "repeat", batch_with=None, skip=None):
        """A worker's (input rows or None on the first stage, output rows) for prompt `ids` (T,)."""
        rows = self.run_layers(ids, {stage[0] - 1, stage[1] - 1} - {-1}, variant, batch_with, skip)
        return rows.get(stage[0] - 1), rows[stage[1] - 1]

    @torch.inference_mode()
    def run_layers(self, ids, layers: set[int], variant: str = "repeat", batch_with=None,
                   skip=None) -> dict[int, np.ndarray]:
        """Output rows of each layer in `layers` for prompt `ids` (T,), computed the `variant` way."""
        ids = torch.as_tensor(ids).reshape(1, -1)
        old_threads = torch.get_num_threads()
        try:
            with self._capture(layers, skip) as got:
                if variant == "decode":  # prefill half, then cached decode one position at a time
                    cache = transformers.DynamicCache(config=self.model.config)
                    half = ids.shape[1] // 2
                    _forward(self.model, input_ids=ids[:, :half], cache=cache, use_cache=True)
                    for t in range(half, ids.shape[1]):
                        _forward(self.model, input_ids=ids[:, t:t + 1], cache=cache, use_cache=True)
                else:
                    if variant == "threads1":
                        torch.set_num_threads(1)
                    if variant == "eager":
                        self.model.set_attn_implementation("eager")
                    if variant == "batch4":
                        extra = batch_with if batch_with is not None else prompts(3, ids.shape[1], 99)
                        ids = torch.cat([ids, torch.as_tensor(extra).reshape(-1, ids.shape[1])])
                    elif variant not in ("repeat", "threads1", "eager"):
                        raise ValueError(f"unknown variant {variant!r}")
                    _forward(self.model, input_ids=ids, use_cache=False)
        finally:
            torch.set_num_threads(old_threads)
            self.model.set_attn_implementation("sdpa")

        return {i: torch.cat([p[0] for p in parts]).float().numpy() for i, parts in got.items()}

    @torch.inference_mode()
    def verify(self, ids, rows, stage=(4, 8), skip=None) -> np.ndarray:
        """A verifier's recomputation: one prefill of layers [a, b) over the committed input — token
        ids on the first stage, input rows (T, d) otherwise."""
        a, b = stage
        if a == 0:
            return self.run(ids, stage, "repeat", skip=skip)[1]
        h = torch.from_numpy(np.asarray(rows, dtype=np.float32)).to(self.dtype).unsqueeze(0)
        pos = torch.arange(h.shape[1]).unsqueeze(0)
        rope = self.model.model.rotary_emb(h, position_ids=pos)
        cache = transformers.DynamicCache(config=self.model.config)
        mask = transformers.masking_utils.create_causal_mask(
            config=self.model.config, inputs_embeds=h, attention_mask=None,
            cache=cache, position_ids=pos, layer_idx=a)
        for i in range(a, b):
            if i != skip:
                h = self.layers[i](h, attention_mask=mask, position_embeddings=rope, position_ids=pos,
                                   cache=cache, use_cache=True)
        return h[0].float().numpy()

    @torch.inference_mode()
    def logits(self, ids, decode: bool = False) -> np.ndarray:
        """(T, V) fp32 logits: one prefill, or (decode) a prefill of the first half then cached decode."""
        ids = torch.as_tensor(ids).reshape(1, -1)
        if not decode:
            return self.model(input_ids=ids).logits[0].float().numpy()
        cache = transformers.DynamicCache(config=self.model.config)
        half = ids.shape[1] // 2
        parts = [self.model(input_ids=ids[:, :half], cache=cache, use_cache=True).logits[0]]
        for t in range(half, ids.shape[1]):
            parts.append(self.model(input_ids=ids[:, t:t + 1], cache=cache, use_cache=True).logits[0])
        return torch.cat(parts).float().numpy()


def fake_quantize_(model, bits: int, group: int | None = None, layers=None) -> None:
    """Round every linear weight of the decoder layers (all, or `layers`) to `bits`-bit symmetric
    integers, per output channel (group None) or per group of `group` inputs, in place."""
    qmax = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            if layers is not None and i not in layers:
                continue
            for mod in layer.modules():
                if isinstance(mod, torch.nn.Linear):
                    w = mod.weight
                    g = w.reshape(w.shape[0], -1, group) if group else w.reshape(w.shape[0], 1, -1)
                    scale = g.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / qmax
                    w.copy_((torch.round(g / scale).clamp(-qmax, qmax) * scale).reshape(w.shape))


def committed_input(rows: np.ndarray | None, rounded: bool) -> np.ndarray | None:
    """The verifier's input: the worker's exact rows, or (`rounded`) what the previous stage's
    commitment authenticates — their bf16 rounding."""
    if rows is None:
        return None
    return round_bf16(rows) if rounded else rows


def benign_pairs(lab: TinyLab, batch: torch.Tensor, stages=STAGES, variants=VARIANTS,
                 rounded_inputs: bool = False) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, claimed, recomputed) for every prompt × stage × worker variant."""
    out = []
    bounds = {i for a, b in stages for i in (a - 1, b - 1)} - {-1}
    for n, ids in enumerate(batch):
        for v in variants:
            rows = lab.run_layers(ids, bounds, v)
            for a, b in stages:
                rec = lab.verify(ids, committed_input(rows.get(a - 1), rounded_inputs), (a, b))
                out.append((f"{v} stage {(a, b)} prompt {n}", rows[b - 1], rec))
    return out


def attacked_worker(lab: TinyLab, attack: str, stage: tuple[int, int]) -> tuple[TinyLab, int | None]:
    """A worker model for weight-level attacks and the layer it skips (if any)."""
    a, b = stage
    one = [a + (b - a) // 2]
    if attack == "other_seed":
        return TinyLab(tiny_llama(seed=7, dtype=lab.dtype)), None
    if attack == "skip_layer":
        return lab, one[0]
    m = copy.deepcopy(lab.model)
    bits, group = (8, None) if attack.startswith("int8") else (4, 32)
    fake_quantize_(m, bits, group, layers=one if attack.endswith("_one") else range(a, b))
    return TinyLab(m), None


def attack_pairs(lab: TinyLab, batch: torch.Tensor, attack: str, stages=STAGES,
                 rounded_inputs: bool = False, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, claimed, recomputed) where the worker cheats with `attack` on honest inputs."""
    rng = np.random.default_rng(seed)
    out = []
    for stage in stages:
        worker, skip = (lab, None) if attack in ("noise_rows", "forged_row", "other_request") \
            else attacked_worker(lab, attack, stage)
        for n, ids in enumerate(batch):
            inp, honest = lab.run(ids, stage)
            rec = lab.verify(ids, committed_input(inp, rounded_inputs), stage)
            rms = np.sqrt((honest**2).mean(axis=1, keepdims=True))
            if attack == "noise_rows":  # every row forged: honest + 1 % of its RMS as Gaussian noise
                claimed = honest + rng.standard_normal(honest.shape).astype(np.float32) * rms * 0.01
            elif attack == "forged_row":  # one row replaced by noise of the row's scale
                claimed = honest.copy()
                p = int(rng.integers(0, len(honest)))
                claimed[p] = rng.standard_normal(honest.shape[1]).astype(np.float32) * rms[p]
            elif attack == "other_request":  # replayed from another request of the same length
                if len(batch) < 2:
                    raise ValueError("the other_request attack needs at least two prompts")
                other = batch[(n + 1) % len(batch)]
                claimed = lab.run(other, stage)[1]
            else:
                claimed = worker.verify(ids, inp, stage, skip=skip)
            out.append((f"{attack} stage {stage} prompt {n}", claimed, rec))
    return out
