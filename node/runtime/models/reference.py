"""The unsplit Hugging Face model, run the way a pipeline runs: the yardstick for splits and benchmarks.

`whole_model_reference` loads the whole checkpoint with `AutoModelForCausalLM` (same attention kernel,
device and dtype as the stages), runs one prefill and then cached decode steps with greedy sampling, and
returns the tokens plus the residual stream after every layer — `rows[b]` is what a stage ending at
layer `b` must output, before the final norm (HF's own `hidden_states[-1]` is after it, so the last
boundary is captured with a hook on the norm's input).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Reference:
    tokens: list[int]
    rows: dict[int, torch.Tensor]  # layer boundary b (1..n) -> (positions, d)


def load_whole_model(
    checkpoint: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32
):
    from transformers import AutoModelForCausalLM

    return (
        AutoModelForCausalLM.from_pretrained(
            str(checkpoint), local_files_only=True, dtype=dtype, attn_implementation="sdpa"
        )
        .to(device)
        .eval()
    )


@torch.inference_mode()
def whole_model_reference(model, prompt: list[int], steps: int) -> Reference:
    """Greedy-decode `steps` tokens after `prompt` (prefill, then one cached step per token)."""
    from transformers import DynamicCache

    n = model.config.num_hidden_layers
    pre_norm: list[torch.Tensor] = []
    hook = model.model.norm.register_forward_pre_hook(lambda _m, args: pre_norm.append(args[0]))
    try:
        cache = DynamicCache(config=model.config)
        rows: dict[int, list[torch.Tensor]] = {b: [] for b in range(1, n + 1)}
        tokens: list[int] = []
        device = next(model.parameters()).device
        x = torch.tensor([prompt], device=device)
        for _ in range(steps):
            out = model(
                input_ids=x, cache=cache, use_cache=True, output_hidden_states=True
            )
            hs = list(out.hidden_states)
            hs[n] = pre_norm.pop()
            for b in range(1, n + 1):
                rows[b].append(hs[b][0])
            tokens.append(int(out.logits[0, -1].argmax()))
            x = torch.tensor([[tokens[-1]]], device=device)
    finally:
        hook.remove()
    return Reference(tokens, {b: torch.cat(r) for b, r in rows.items()})
