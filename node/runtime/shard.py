"""Shard loading: the modules and weights of decoder layers [start, end) of a model, and nothing else.

A node serving layers `[a, b)` builds the model's module tree on PyTorch's `meta` device (no memory),
keeps only the modules of its stage — decoder layers `a..b-1`, plus the token embedding on the first
stage and the final norm + LM head on the last — and fills them with tensors read one by one from the
safetensors files (`safe_open`, straight to the target device and dtype, `assign=True` so nothing is
allocated twice). No full model is ever loaded: memory held is the stage's tensor bytes (see
`Shard.parameter_bytes`), which the tests compare with the checkpoint headers. With tied embeddings the
last stage loads the embedding matrix as its LM head (one tensor if the stage is also the first).
Layers keep their global index (`self_attn.layer_idx`), which is how they address the KV cache.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from node.runtime.models.checkpoint import (
    EMBED,
    LM_HEAD,
    NORM,
    Checkpoint,
    check_layer_range,
    layer_of,
)
from node.runtime.models.errors import ShardError


def default_device() -> torch.device:
    """CUDA when a GPU is present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (half the memory, tensor cores), fp32 on CPU (exact and faster there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def resolve_device_dtype(
    device: str = "auto", dtype: str = "auto"
) -> tuple[torch.device, torch.dtype]:
    """Turn the config strings ("auto", "cpu", "cuda:0", "float32", "bfloat16", ...) into torch objects."""
    dev = default_device() if device == "auto" else torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ShardError(f"device {device!r} requested but CUDA is not available")
    if dtype == "auto":
        return dev, default_dtype(dev)
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ShardError(f"dtype {dtype!r} is not one of auto, {', '.join(table)}")
    return dev, table[dtype]


@dataclass
class Shard:
    """The modules of one pipeline stage, on one device, in one dtype."""

    checkpoint: Path
    config: object  # transformers PretrainedConfig of the whole model
    start: int
    end: int
    num_layers: int
    device: torch.device
    dtype: torch.dtype
    layers: nn.ModuleList  # decoder layers start..end-1 (global indices kept inside)
    rotary_emb: nn.Module  # no weights: cos/sin from the config
    embed_tokens: nn.Embedding | None  # first stage only
    norm: nn.Module | None  # last stage only
    lm_head: nn.Linear | None  # last stage only (weight shared with embed_tokens when tied)

    @property
    def is_first(self) -> bool:
        return self.start == 0

    @property
    def is_last(self) -> bool:
        return self.end == self.num_layers

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    def head_logits(self, rows: torch.Tensor) -> torch.Tensor:
        """The network's head rule (last stage): logits = lm_head(norm(rows)) computed in float32
        from the rows as committed, whatever dtype the stage runs in. (…, T, d) → (…, T, V) fp32.

        In fp32 this is the modules themselves. In bf16 / fp16 the head runs on float32 copies of
        the final norm and LM head (made once), so a verifier reproduces every logit to float32
        rounding from the committed rows alone: token checks then need no bf16-sized tolerance
        (verifier/README.md, "two kinds of evidence")."""
        assert self.norm is not None and self.lm_head is not None, "head_logits: not the last stage"
        if self.dtype == torch.float32:
            return self.lm_head(self.norm(rows)).float()
        head = self.__dict__.get("_head_fp32")
        if head is None:
            import copy

            head = (copy.deepcopy(self.norm).float(), copy.deepcopy(self.lm_head).float())
            self.__dict__["_head_fp32"] = head
        norm32, lm32 = head
        return lm32(norm32(rows.float()))

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter this shard holds, by checkpoint name (a tied head appears once)."""
        out: dict[str, torch.Tensor] = {}
        for i, layer in zip(range(self.start, self.end), self.layers, strict=True):
            for k, v in layer.named_parameters():
                out[f"model.layers.{i}.{k}"] = v
        if self.embed_tokens is not None:
            out[EMBED] = self.embed_tokens.weight
        if self.norm is not None:
            out[NORM] = self.norm.weight
        if self.lm_head is not None and all(self.lm_head.weight is not t for t in out.values()):
            out[LM_HEAD] = self.lm_head.weight
        return out

    def parameter_bytes(self) -> int:
        """Bytes of distinct parameter storage this shard holds (what 'memory held' means here)."""
        seen: dict[int, int] = {}
        for t in self.tensors().values():
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
        return sum(seen.values())


def load_config(checkpoint_dir: str | Path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(checkpoint_dir), local_files_only=True)
    # One attention kernel everywhere, so a split model and the whole model compute the same thing.
    config._attn_implementation = "sdpa"
    return config


def load_shard(
    checkpoint_dir: str | Path,
    start: int,
    end: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Shard:
    """Load layers [start, end) (+ embeddings on the first stage, norm + LM head on the last)."""
    from transformers import AutoModelForCausalLM

    ckpt = Checkpoint(checkpoint_dir)
    check_layer_range(start, end, ckpt.num_layers)
    dev = torch.device(device) if device is not None else default_device()
    dt = dtype if dtype is not None else default_dtype(dev)
    config = load_config(checkpoint_dir)

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dt)
    body = skeleton.model
    layers = nn.ModuleList(body.layers[start:end])
    embed = body.embed_tokens if start == 0 else None
    is_last = end == ckpt.num_layers
    norm = body.norm if is_last else None
    lm_head = skeleton.lm_head if is_last else None
    rotary_cls = type(body.rotary_emb)
    del skeleton, body  # the rest of the tree stays on meta and is dropped here

    names = ckpt.stage_tensor_names(start, end)
    loaded = _read_tensors(ckpt, names, dev, dt)

    per_layer: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for name, t in loaded.items():
        if (i := layer_of(name)) is not None:
            per_layer[i][name.removeprefix(f"model.layers.{i}.")] = t
    for i, layer in zip(range(start, end), layers, strict=True):
        _assign(layer, per_layer[i], f"layer {i}")
    if embed is not None:
        _assign(embed, {"weight": loaded[EMBED]}, "embed_tokens")
    if norm is not None:
        _assign(norm, {"weight": loaded[NORM]}, "norm")
    if lm_head is not None:
        head = loaded.get(LM_HEAD, loaded.get(EMBED))
        assert head is not None  # Checkpoint guarantees LM_HEAD or tied EMBED
        if embed is not None and LM_HEAD not in loaded:
            lm_head.weight = embed.weight  # tied: one tensor, not two
        else:
            _assign(lm_head, {"weight": head}, "lm_head")

    with torch.device(dev):
        rotary = rotary_cls(config=config)
    for module in (layers, embed, norm, lm_head, rotary):
        if module is not None:
            module.eval().requires_grad_(False)
    return Shard(
        checkpoint=Path(checkpoint_dir),
        config=config,
        start=start,
        end=end,
        num_layers=ckpt.num_layers,
        device=dev,
        dtype=dt,
        layers=layers,
        rotary_emb=rotary,
        embed_tokens=embed,
        norm=norm,
        lm_head=lm_head,
    )


def _read_tensors(
    ckpt: Checkpoint, names: list[str], device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = defaultdict(list)
    for n in names:
        by_file[ckpt.tensors[n].file].append(n)
    out: dict[str, torch.Tensor] = {}
    for f, file_names in sorted(by_file.items()):
        # Read on CPU, then move: safetensors' direct-to-CUDA path needs the same dtype on disk.
        with safe_open(str(f), framework="pt", device="cpu") as st:
            for n in file_names:
                t = st.get_tensor(n)
                out[n] = (
                    t.to(device=device, dtype=dtype)
                    if (t.dtype != dtype or device.type != "cpu")
                    else t
                )
    return out


def _assign(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise ShardError(
            f"{what}: checkpoint tensors do not match the config: missing {missing}, "
            f"unexpected {extra}, wrong shapes {[(k, got[k], expected[k]) for k in wrong]}"
        )
    module.load_state_dict(state, strict=True, assign=True)
