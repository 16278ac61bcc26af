"""Reading the chain into solver types: the model's shape (a scheduler model document or a Hugging
Face config.json, checked against what the ModelRegistry says) and each registered node's hardware
profile (checked, since the NodeRegistry stores whatever its owner sent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.model_registry import ModelInfo
from contracts.node_registry import Hardware, NodeInfo
from protocol.api_errors import ModelSpecError
from scheduler.errors import InvalidInput
from scheduler.service.chain_io import NET_UNREPORTED_MBPS, load_model_spec, node_spec
from tests.support.coordinator import MODEL

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


def _info(**hw: int) -> NodeInfo:
    base = {"vram_mib": 24576, "tflops_milli": 82_000, "mem_bw_gbps": 1008, "net_bw_mbps": 1000}
    return NodeInfo(owner="0x" + "11" * 20, registered=True, operator="0x" + "22" * 20,
                    endpoint="http://127.0.0.1:9000",
                    hardware=Hardware("RTX4090", **{**base, **hw}, region="eu-west"),
                    stake_wei=1, unbonding_wei=0, unbond_ready_block=0, jailed_until=0,
                    registered_block=1, slashed_total_wei=0)


def test_a_registered_hardware_profile_becomes_the_solvers_node() -> None:
    spec = node_spec(_info())
    assert (spec.vram_mib, spec.tflops, spec.mem_bw_gbps, spec.net_mbps) == (24576, 82.0, 1008.0,
                                                                             1000.0)
    assert spec.id == spec.operator and spec.region == "eu-west"


@pytest.mark.parametrize("field, value", [
    ("tflops_milli", 0), ("mem_bw_gbps", 0), ("vram_mib", 0),
    ("vram_mib", 2**200), ("tflops_milli", 2**255), ("vram_mib", 1 << 40),
])
def test_hardware_profiles_the_solver_cannot_use_are_refused_naming_the_field(
        field: str, value: int) -> None:
    with pytest.raises(InvalidInput, match=f"hardware.{field}: must be"):
        node_spec(_info(**{field: value}))


def test_an_unreported_network_speed_caps_nothing_but_the_regions_links() -> None:
    spec = node_spec(_info(net_bw_mbps=0))  # what `node register` sends when no NIC reports one
    assert spec.net_mbps == NET_UNREPORTED_MBPS
