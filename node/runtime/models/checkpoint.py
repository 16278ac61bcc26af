"""Checkpoint layout: which tensors a Hugging Face Llama / Qwen2 / Mistral checkpoint holds, and where.

A checkpoint is a directory with `config.json` and one `model.safetensors` or several shards listed
by `model.safetensors.index.json`. This module reads only headers (names, dtypes, shapes, byte
sizes) — never tensor data — and answers layout questions: which tensors belong to layer `i`, which
a stage `[a, b)` needs (`stage_tensor_names`), and the per-layer byte and KV figures the scheduler
plans with (`ModelSpec`). Tensor names follow the standard layout::

    model.embed_tokens.weight                 first stage (and last, if embeddings are tied)
    model.layers.<i>.<...>                    layer i
    model.norm.weight, lm_head.weight         last stage (lm_head absent when tied)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from node.runtime.models.errors import CheckpointError, ShardError, UnsupportedArchitecture

SUPPORTED_ARCHS = ("llama", "qwen2", "mistral")
EMBED = "model.embed_tokens.weight"
NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")
# Buffers some older exports saved; they are recomputed from the config, never loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1}


@dataclass(frozen=True)
class TensorInfo:
    """Header facts about one stored tensor."""

    name: str
    file: Path
    dtype: str  # safetensors dtype string: "F32", "BF16", ...
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = _DTYPE_BYTES[self.dtype]
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class ModelSpec:
    """What the scheduler needs to know about a model, read from its checkpoint."""

    arch: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    num_kv_heads: int
    head_dim: int
    tied_embeddings: bool
    layer_bytes: tuple[int, ...]  # stored bytes of each decoder layer
    embed_bytes: int  # first stage
    head_bytes: int  # last stage: final norm + LM head (the embedding matrix again when tied)

    def kv_bytes_per_token_per_layer(self, dtype_bytes: int) -> int:
        """K and V for one position of one layer, at `dtype_bytes` per value."""
        return 2 * self.num_kv_heads * self.head_dim * dtype_bytes


def layer_of(name: str) -> int | None:
    """The decoder layer index a tensor name belongs to, or None for embeddings / norm / head."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else None


class Checkpoint:
    """A local checkpoint directory, opened for layout questions (headers only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"checkpoint directory {self.path} does not exist")
        self.config_dict = read_config_dict(self.path)
        arch = self.config_dict.get("model_type")
        if arch not in SUPPORTED_ARCHS:
            raise UnsupportedArchitecture(
                f"{self.path}: model_type {arch!r} is not supported; expected one of "
                f"{', '.join(SUPPORTED_ARCHS)}"
            )
        self.arch: str = arch
        self.num_layers = int(self.config_dict["num_hidden_layers"])
        self.tied_embeddings = bool(self.config_dict.get("tie_word_embeddings", False))
        self.tensors: dict[str, TensorInfo] = _read_headers(self.path)
        self._check_complete()

    def _check_complete(self) -> None:
        unknown = [
            n for n in self.tensors if layer_of(n) is None and n not in (EMBED, NORM, LM_HEAD)
        ]
        if unknown:
            raise CheckpointError(f"{self.path}: unexpected tensors {sorted(unknown)[:5]}")
        bad = sorted(
            {i for n in self.tensors if (i := layer_of(n)) is not None and i >= self.num_layers}
        )
        if bad:
            raise CheckpointError(
                f"{self.path}: tensors for layers {bad} but num_hidden_layers is {self.num_layers}"
            )
        missing = [n for n in (EMBED, NORM) if n not in self.tensors]
        if LM_HEAD not in self.tensors and not self.tied_embeddings:
            missing.append(LM_HEAD)
        empty = [i for i in range(self.num_layers) if not self.layer_tensor_names(i)]
        if missing or empty:
            raise CheckpointError(
                f"{self.path}: incomplete checkpoint: missing {missing}, layers without tensors {empty}"
            )

    def layer_tensor_names(self, i: int) -> list[str]:
        return sorted(n for n in self.tensors if layer_of(n) == i)

    def stage_tensor_names(self, start: int, end: int) -> list[str]:
        """Tensors a stage running layers [start, end) loads (tied head: the embedding, once)."""
        check_layer_range(start, end, self.num_layers)
        names = [n for i in range(start, end) for n in self.layer_tensor_names(i)]
        if start == 0:
            names.append(EMBED)
        if end == self.num_layers:
            names.append(NORM)
            if LM_HEAD in self.tensors:
                names.append(LM_HEAD)
            elif EMBED not in names:
                names.append(EMBED)
        return names

    def stage_bytes(self, start: int, end: int) -> int:
        return sum(self.tensors[n].nbytes for n in self.stage_tensor_names(start, end))

    def spec(self) -> ModelSpec:
        c = self.config_dict
        heads = int(c["num_attention_heads"])
        hidden = int(c["hidden_size"])
        embed = self.tensors[EMBED].nbytes
        head = self.tensors[NORM].nbytes + (
            self.tensors[LM_HEAD].nbytes if LM_HEAD in self.tensors else embed
        )
        return ModelSpec(
            arch=self.arch,
            num_layers=self.num_layers,
            hidden_size=hidden,
            vocab_size=int(c["vocab_size"]),
            num_kv_heads=int(c.get("num_key_value_heads") or heads),
            head_dim=int(c.get("head_dim") or hidden // heads),
            tied_embeddings=self.tied_embeddings,
            layer_bytes=tuple(
                sum(self.tensors[n].nbytes for n in self.layer_tensor_names(i))
                for i in range(self.num_layers)
            ),
            embed_bytes=embed,
            head_bytes=head,
        )


def check_layer_range(start: int, end: int, num_layers: int) -> None:
    if not (0 <= start < end <= num_layers):
        raise ShardError(
            f"layer range [{start}, {end}) is invalid for a model of {num_layers} layers; "
            f"need 0 <= start < end <= {num_layers}"
        )


def read_config_dict(path: Path) -> dict:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"{path}: no config.json")
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{cfg}: unreadable JSON: {exc}") from exc
    if not isinstance(data, dict) or "num_hidden_layers" not in data:
        raise CheckpointError(f"{cfg}: not a causal LM config (no num_hidden_layers)")
    return data


def safetensors_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint: the index's shards if there is an index, else all files."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{index}: malformed index: {exc}") from exc
        files = sorted({path / f for f in weight_map.values()})
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no .safetensors weight files")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{path}: weight files listed but missing: {missing}")
    return files


def _read_headers(path: Path) -> dict[str, TensorInfo]:
    from safetensors import safe_open

    out: dict[str, TensorInfo] = {}
    for f in safetensors_files(path):
        try:
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():
                    if name.endswith(_IGNORED_SUFFIXES):
                        continue
                    sl = st.get_slice(name)
                    dtype = sl.get_dtype()
                    if dtype not in _DTYPE_BYTES:
                        raise CheckpointError(f"{f}: tensor {name} has unsupported dtype {dtype}")
                    if name in out:
                        raise CheckpointError(
                            f"{path}: tensor {name} stored twice ({out[name].file}, {f})"
                        )
                    out[name] = TensorInfo(name, f, dtype, tuple(sl.get_shape()))
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own SafetensorError / OSError
            raise CheckpointError(f"{f}: not a readable safetensors file: {exc}") from exc
    return out
