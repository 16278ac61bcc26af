"""`veriplex verify-stage`: the off-chain check of one stage, on files (DESIGN §5.3–5.4).

Loads only layers [a, b) of the model, re-executes the stage with one prefill pass over the input
file, judges the claimed rows with the tolerance test and, on the last stage with `--tokens`, the
claimed tokens; prints the verdict with its statistics (a human summary, or JSON with `--json`).
Exit status: 0 pass, 1 fail, 2 error (bad files, wrong shapes, layers outside the model — one line
on stderr). File formats: verifier/README.md, "verify-stage files".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from node.runtime.models.errors import ModelError
from verifier.errors import VerifierError

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


def _layers(value: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not A:B (two integers, e.g. 0:4)") from None
    if not 0 <= a < b:
        raise click.BadParameter(f"{value!r}: need 0 <= A < B")
    return a, b


def _human(check, profile: str) -> str:
    s = check.rows.stats
    a, b = check.layers
    lines = [
        f"verdict: {'PASS' if check.passed else 'FAIL'}  (layers [{a}, {b}), {check.positions} "
        f"positions, profile {profile}, recompute {check.recompute_s * 1000:.1f} ms)",
        f"rows: {'pass' if check.rows.passed else 'FAIL'}  exponent agreement {s.exponent_agreement:.4f} "
        f"(worst row {s.min_row_exponent_agreement:.4f}), mean mantissa distance "
        f"{s.mantissa_mean_ulp:.3f} ulp, relative error {s.rel_err:.3g} (worst row "
        f"{s.max_row_rel_err:.3g}), beyond {s.scaled_k} scale ulp {s.scaled_frac_beyond_k:.3g} "
        f"(worst row {s.max_row_scaled_frac_beyond_k:.3g}), chunks failing the rule "
        f"{s.failing_chunk_frac:.3g} (worst chunk {s.worst_chunk_bad} bad)",
    ]
    lines += [f"  - {r}" for r in check.rows.reasons]
    if check.tokens is not None:
        t = check.tokens
        lines.append(f"tokens: {'pass' if t.passed else 'FAIL'}  {t.checked} checked, "
                     f"{len(t.mismatches)} unexplained")
        lines += [f"  - position {p}: claimed {c}, logits give {r}" for p, c, r in t.mismatches[:10]]
    return "\n".join(lines)


@click.command("verify-stage")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Checkpoint directory (config.json + safetensors).")
@click.option("--layers", required=True, help="The stage's layer range A:B (layers A..B-1).")
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path),
              help="Stage input: safetensors with `input_ids` (T,) on the first stage, `hidden` (T, d) otherwise.")
@click.option("--claimed", "claimed_path", required=True, type=click.Path(path_type=Path),
              help="Claimed output: safetensors with `hidden` (T, d).")
@click.option("--tokens", "tokens_path", type=click.Path(path_type=Path), default=None,
              help="Last stage: JSON with the claimed tokens and sampling parameters.")
@click.option("--profile", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Threshold profile and compute dtype (auto: fp32 on CPU, bf16 on CUDA).")
@click.option("--thresholds", "thresholds_path", type=click.Path(path_type=Path), default=None,
              help="JSON thresholds (verifier.tolerance.Thresholds fields) replacing the profile's.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def verify_stage(model_dir: Path, layers: str, input_path: Path, claimed_path: Path,
                 tokens_path: Path | None, profile: str, thresholds_path: Path | None, device: str,
                 as_json: bool) -> None:
    """Re-execute layers A:B with one prefill pass and judge the claimed output rows (and tokens)."""
    try:
        a, b = _layers(layers)
        check, used = _run(model_dir, a, b, input_path, claimed_path, tokens_path, profile,
                           thresholds_path, device)
    except click.BadParameter as e:
        click.echo(f"error: --layers {e.message}", err=True)
        sys.exit(EXIT_ERROR)
    except (ModelError, VerifierError, OSError) as e:
        click.echo(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", err=True)
        sys.exit(EXIT_ERROR)
    if as_json:
        click.echo(json.dumps({"profile": used, **check.to_json()}, indent=2))
    else:
        click.echo(_human(check, used))
    sys.exit(EXIT_PASS if check.passed else EXIT_FAIL)


def _run(model_dir: Path, a: int, b: int, input_path: Path, claimed_path: Path,
         tokens_path: Path | None, profile: str, thresholds_path: Path | None, device: str):
    import torch

    from node.runtime.executor import StageExecutor
    from node.runtime.models.errors import ShardError
    from node.runtime.shard import load_shard, resolve_device_dtype
    from node.verification.stage_check import VerifyInputError, check_files
    from verifier.profiles import PROFILES
    from verifier.tolerance import Thresholds

    for p, what in ((input_path, "input"), (claimed_path, "claimed"), (tokens_path, "tokens")):
        if p is not None and not p.is_file():
            raise VerifyInputError(f"{what} file {p} does not exist")
    if not (model_dir / "config.json").is_file():
        raise ShardError(f"--model {model_dir} is not a checkpoint directory (no config.json)")
    dev, dtype = resolve_device_dtype(device, {"auto": "auto", "fp32": "float32", "bf16": "bfloat16"}[profile])
    used = "bf16" if dtype == torch.bfloat16 else "fp32"
    thresholds = PROFILES[used]
    if thresholds_path is not None:
        try:
            thresholds = Thresholds.from_json(json.loads(thresholds_path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise VerifyInputError(f"--thresholds {thresholds_path}: {e}") from e
        used = str(thresholds_path)
    executor = StageExecutor(load_shard(model_dir, a, b, dev, dtype))
    return check_files(executor, input_path, claimed_path, thresholds, tokens_path), used
