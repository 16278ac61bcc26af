"""Checkpoint layout and shard loading: a stage holds exactly its tensors, read from safetensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from node.runtime.models.checkpoint import EMBED, LM_HEAD, NORM, Checkpoint
from node.runtime.models.errors import CheckpointError, ShardError, UnsupportedArchitecture
from node.runtime.shard import load_shard


def all_module_tensors(shard) -> list[torch.Tensor]:
    mods = [shard.layers, shard.embed_tokens, shard.norm, shard.lm_head]
    return [t for m in mods if m is not None for t in [*m.parameters(), *m.buffers()]]


@pytest.mark.parametrize(("start", "end"), [(0, 8), (0, 3), (3, 6), (6, 8), (4, 5)])
def test_a_shard_holds_exactly_the_bytes_of_its_stage_tensors(
    tiny_model: Path, start: int, end: int
):
    ck = Checkpoint(tiny_model)
    shard = load_shard(tiny_model, start, end, device="cpu")
    assert shard.parameter_bytes() == ck.stage_bytes(start, end)
    held = set(shard.tensors())
    layer_names = {n for i in range(start, end) for n in ck.layer_tensor_names(i)}
    assert held - {EMBED, NORM, LM_HEAD} == layer_names
    assert (EMBED in held) == (start == 0)
    # A tied head held together with the embedding is the same tensor, listed once.
    assert (LM_HEAD in held) == (end == 8 and not (start == 0 and ck.tied_embeddings))
    assert (NORM in held) == (end == 8)
    assert not any(t.is_meta for t in all_module_tensors(shard)), "every parameter must be loaded"


def test_memory_held_grows_with_the_layers_served_not_the_model(tiny_llama: Path):
    ck = Checkpoint(tiny_llama)
    total = sum(t.nbytes for t in ck.tensors.values())
    spec = ck.spec()
    middle = load_shard(tiny_llama, 3, 5, device="cpu")
    assert middle.parameter_bytes() == spec.layer_bytes[3] + spec.layer_bytes[4]
    assert middle.parameter_bytes() < total / 3
    assert middle.embed_tokens is None and middle.norm is None and middle.lm_head is None


def test_tied_embeddings_are_loaded_once_on_a_single_stage(tiny_llama: Path):
    ck = Checkpoint(tiny_llama)
    assert ck.tied_embeddings and LM_HEAD not in ck.tensors
    whole = load_shard(tiny_llama, 0, 8, device="cpu")
    assert whole.lm_head.weight is whole.embed_tokens.weight
    assert whole.parameter_bytes() == sum(t.nbytes for t in ck.tensors.values())


def test_tied_last_stage_uses_the_embedding_matrix_as_its_head(tiny_llama: Path):
    last = load_shard(tiny_llama, 6, 8, device="cpu")
    stored = load_file(str(tiny_llama / "model.safetensors"))[EMBED]
    assert last.embed_tokens is None
    assert torch.equal(last.lm_head.weight, stored)


def test_untied_head_is_its_own_tensor(tiny_qwen2: Path):
    last = load_shard(tiny_qwen2, 6, 8, device="cpu")
    stored = load_file(str(tiny_qwen2 / "model.safetensors"))
    assert torch.equal(last.lm_head.weight, stored[LM_HEAD])
    assert not torch.equal(stored[LM_HEAD], stored[EMBED])


def test_layers_keep_their_global_index_for_the_kv_cache(tiny_qwen2: Path):
    shard = load_shard(tiny_qwen2, 5, 8, device="cpu")
    assert [layer.self_attn.layer_idx for layer in shard.layers] == [5, 6, 7]


def test_model_spec_accounts_for_every_stored_byte(tiny_model: Path):
    ck = Checkpoint(tiny_model)
    spec = ck.spec()
    stored = sum(t.nbytes for t in ck.tensors.values())
    head_only = spec.head_bytes - (spec.embed_bytes if spec.tied_embeddings else 0)
    assert sum(spec.layer_bytes) + spec.embed_bytes + head_only == stored
    assert spec.num_layers == 8 and spec.kv_bytes_per_token_per_layer(2) == 2 * 4 * 32 * 2


@pytest.mark.parametrize(("start", "end"), [(-1, 3), (3, 3), (5, 4), (0, 9)])
def test_invalid_layer_ranges_are_refused_quoting_the_range(tiny_llama: Path, start: int, end: int):
    with pytest.raises(ShardError, match=rf"\[{start}, {end}\) is invalid for a model of 8 layers"):
        load_shard(tiny_llama, start, end, device="cpu")


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_an_unsupported_architecture_is_named_in_the_error(tiny_llama: Path, tmp_path: Path):
    d = copy_checkpoint(tiny_llama, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitecture, match="model_type 'gpt2' is not supported"):
        Checkpoint(d)


def test_a_checkpoint_missing_a_layers_tensors_is_refused(tiny_llama: Path, tmp_path: Path):
    d = copy_checkpoint(tiny_llama, tmp_path / "m")
    tensors = load_file(str(d / "model.safetensors"))
    for name in [n for n in tensors if n.startswith("model.layers.5.")]:
        del tensors[name]
    del tensors[NORM]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"missing \['model.norm.weight'\], layers without tensors \[5\]"
    ):
        Checkpoint(d)


def test_tensors_that_disagree_with_the_config_are_refused_at_load(
    tiny_llama: Path, tmp_path: Path
):
    d = copy_checkpoint(tiny_llama, tmp_path / "m")
    tensors = load_file(str(d / "model.safetensors"))
    tensors["model.layers.2.mlp.up_proj.weight"] = torch.zeros(700, 256)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(
        ShardError,
        match=r"layer 2: .*wrong shapes \[\('mlp.up_proj.weight', \(700, 256\), \(704, 256\)\)\]",
    ):
        load_shard(d, 2, 4, device="cpu")


def test_a_directory_without_weights_or_config_is_a_clear_error(tmp_path: Path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        Checkpoint(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(
        '{"model_type": "llama", "num_hidden_layers": 2}'
    )
    with pytest.raises(CheckpointError, match="no .safetensors weight files"):
        Checkpoint(tmp_path / "empty")
    (tmp_path / "empty" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        Checkpoint(tmp_path / "empty")
