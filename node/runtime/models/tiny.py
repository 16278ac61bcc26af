"""Tiny random causal LMs for tests: a safetensors checkpoint plus a locally trained BPE tokenizer.

`build_tiny_model(dir, arch=...)` writes, in well under a second, a directory that looks exactly like
a Hugging Face checkpoint of the Llama / Qwen2 / Mistral family (`config.json`, `model.safetensors`,
`tokenizer.json`, `tokenizer_config.json`), so every code path that serves a real model serves it
unchanged. Weights are drawn from a seeded generator and the tokenizer is trained on a seeded synthetic
corpus: the same arguments give byte-identical files (and so the same weights hash). Nothing is
downloaded. Other test packages import this function; the fixtures live in `tests/node/conftest.py`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

Arch = Literal["llama", "qwen2", "mistral"]

_WORDS = (
    "the a one two three four five six seven eight nine ten verify stage node layer token model "
    "chain block hash proof stake reward slash honest lazy worker pipeline prefill decode cache "
    "hidden state commit reveal verdict request client gateway epoch replica shard tensor merkle "
    "root leaf chunk tolerance noise greedy sample seed paris france capital city river mountain "
    "is of and to in that it was for on are as with his they at be this from have or by"
).split()


def synthetic_corpus(seed: int = 0, lines: int = 2000) -> list[str]:
    """Deterministic pseudo-sentences to train the tokenizer on (no data set needed)."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        n = rng.randint(4, 14)
        words = [rng.choice(_WORDS) for _ in range(n)]
        out.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ","]))
    return out


def train_tokenizer(vocab_size: int = 2048, seed: int = 0):  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer trained on `synthetic_corpus`, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )


def tiny_config(
    arch: Arch,
    vocab_size: int,
    *,
    layers: int = 8,
    hidden: int = 256,
    heads: int = 8,
    kv_heads: int = 4,
    mlp: int = 704,
    max_positions: int = 1024,
    tie_embeddings: bool = True,
    sliding_window: int | None = None,
):
    """The transformers config of a tiny model (≈7M parameters with the defaults)."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_embeddings,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common, use_sliding_window=False)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=sliding_window or max_positions)
    raise ValueError(f"unknown tiny arch {arch!r}; expected one of llama, qwen2, mistral")


def build_tiny_model(
    out_dir: str | Path,
    arch: Arch = "llama",
    seed: int = 0,
    *,
    vocab_size: int = 2048,
    layers: int = 8,
    hidden: int = 256,
    heads: int = 8,
    kv_heads: int = 4,
    mlp: int = 704,
    tie_embeddings: bool = True,
    init_std: float = 0.1,
    sliding_window: int | None = None,
) -> Path:
    """Write a tiny random `arch` checkpoint + tokenizer into `out_dir` (created) and return it.

    `sliding_window` (Mistral only) narrows attention to that many positions, so a test with a
    longer sequence exercises the sliding mask."""
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size, seed)
    config = tiny_config(
        arch,
        len(tokenizer),
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        mlp=mlp,
        tie_embeddings=tie_embeddings,
        sliding_window=sliding_window,
    )
    config.initializer_range = init_std
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # std 0.1 (not HF's 0.02): at 0.02 a tiny random model repeats one token forever, which would
    # make "same greedy tokens" a weak test. Biases (Qwen2's q/k/v) are drawn too, so none can hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, init_std)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
