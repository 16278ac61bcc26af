"""Resolving the model's shape: a scheduler model document or a Hugging Face config.json, checked
against what the ModelRegistry says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.model_registry import ModelInfo
from scheduler.service.chain_io import load_model_spec
from scheduler.service.errors import ModelSpecError

from .conftest import MODEL

INFO = ModelInfo(model_id=3, name="coord-test", layers=MODEL.layers, hidden_size=MODEL.hidden,
                 weights_root=b"\x01" * 32, tokenizer_hash=b"\x02" * 32, price_in_wei=1,
                 price_out_wei=1, active=True)
HF = {"num_hidden_layers": MODEL.layers, "hidden_size": MODEL.hidden,
      "num_attention_heads": MODEL.heads, "num_key_value_heads": MODEL.kv_heads,
      "intermediate_size": MODEL.intermediate, "vocab_size": MODEL.vocab,
      "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def test_a_checkpoint_config_gives_the_shape_with_the_registry_id(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(HF))
    spec = load_model_spec(INFO, None, tmp_path, None)
    assert spec.to_dict() == {**MODEL.to_dict(), "model_id": 3}


def test_the_models_dir_is_searched_by_registry_name(tmp_path: Path) -> None:
    (tmp_path / INFO.name).mkdir()
    (tmp_path / INFO.name / "config.json").write_text(json.dumps({**HF, "torch_dtype": "float32"}))
    assert load_model_spec(INFO, None, None, tmp_path).dtype_bytes == 4


def test_a_spec_file_that_disagrees_with_the_registry_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "m.json"
    f.write_text(json.dumps({**MODEL.to_dict(), "layers": MODEL.layers + 1}))
    with pytest.raises(ModelSpecError, match=f"layers {MODEL.layers + 1} vs {MODEL.layers}"):
        load_model_spec(INFO, f, None, None)


def test_a_missing_shape_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ModelSpecError, match="pass --model-spec FILE or --checkpoint DIR"):
        load_model_spec(INFO, None, None, tmp_path)
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"hidden_size": 4}))
    with pytest.raises(ModelSpecError, match="num_attention_heads"):
        load_model_spec(INFO, None, tmp_path, None)


@pytest.mark.parametrize("config, message", [
    ({**HF, "num_attention_heads": 0}, "heads: must be > 0, got 0"),
    ({**HF, "num_key_value_heads": 5}, "must divide by heads"),
    ({**HF, "vocab_size": -1}, "vocab: must be > 0"),
    ({**HF, "hidden_size": "576"}, "hidden: expected a finite number"),
    ([1, 2, 3], "lacks or mangles a field"),
])
def test_a_config_with_impossible_values_is_refused_naming_the_field(
        tmp_path: Path, config: object, message: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSpecError, match=message):
        load_model_spec(INFO, None, tmp_path, None)


def test_spec_files_that_are_not_json_or_nest_too_deeply_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "m.json"
    for text, message in (("{not json", "malformed JSON"), ("[" * 50_000 + "]" * 50_000, "nested")):
        f.write_text(text)
        with pytest.raises(ModelSpecError, match=message):
            load_model_spec(INFO, f, None, None)
        (tmp_path / "config.json").write_text(text)
        with pytest.raises(ModelSpecError, match=message):
            load_model_spec(INFO, None, tmp_path, None)
