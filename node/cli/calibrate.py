"""`veriplex calibrate`: fit a verification profile on this machine's benign noise and write it.

Serves requests with the model the legitimate ways (padded batches of mixed-length requests with
batched cached decode, one at a time, chunked and whole prefills, 1 or 2 threads — see
`node.verification.calib_checks`), checks every single-layer stage, the stages of 2- and 3-stage
pipelines and the whole model as a verifier would (one prefill from the committed bf16 input), and
fits a `verifier.evidence.Profile` (`verifier.calibrate.fit_profile`). With `--merge` the result is
never tighter than the shipped profile of that precision (bounds and honest tails take the wider
of the two), so a deployment's fit can only add tolerance for its own hardware. Prints the profile's
hash — the value `ModelRegistry.set_serving` records.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("calibrate")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Checkpoint directory (config.json + safetensors).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="bf16", show_default=True,
              help="The serving precision to calibrate.")
@click.option("--requests", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="About how many requests to serve (batches of 1..32 plus single-request modes).")
@click.option("--max-prompt", type=click.IntRange(3, 4096), default=64, show_default=True,
              help="Longest prompt served (tokens). Long enough for the rows whose massive activation "
                   "the last layers cancel, bf16's largest honest noise (verifier/README.md).")
@click.option("--max-new", type=click.IntRange(2, 4096), default=32, show_default=True,
              help="Most tokens generated per request.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--merge/--no-merge", default=True, show_default=True,
              help="Never tighter than the shipped profile of this precision.")
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the profile JSON.")
def calibrate(model_dir: Path, precision: str, requests: int, max_prompt: int, max_new: int, seed: int,
              merge: bool, out: Path) -> None:
    """Fit a verification profile for MODEL at PRECISION and write it to OUT."""
    import numpy as np
    import torch

    from node.verification.calib_checks import benign_checks, serve_mix
    from node.verification.calib_lab import Lab, load_smollm2
    from verifier.calibrate import fit_profile
    from verifier.errors import VerifierError
    from verifier.evidence import ProofLimits
    from verifier.profiles import SHIPPED, widen

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    try:
        lab = Lab(load_smollm2(dtype, model_dir), model_dir.name)
    except (OSError, ValueError) as e:
        raise click.ClickException(f"--model {model_dir}: {e}") from e
    rng = np.random.default_rng(seed)
    sizes, total = [], 0
    for b in (1, 2, 4, 8, 16, 32) * 64:
        if total + b > requests:
            break
        sizes.append(b)
        total += b
    groups = serve_mix(lab, rng, sizes or [1], ("decode1", "chunked", "prefill", "decode1"), max_prompt, max_new)
    pairs: list = []
    checks = benign_checks(lab, model_dir.name, groups, ProofLimits(), logit_pairs=pairs)
    try:
        prof = fit_profile([c.m for c in checks], precision, logit_pairs=pairs,
                           note=f"veriplex calibrate on {model_dir.name}: {len(checks)} benign checks")
        if merge:
            prof = widen(prof, SHIPPED[precision])
    except VerifierError as e:
        raise click.ClickException(str(e)) from e
    out.write_text(json.dumps(prof.to_json(), indent=2) + "\n")
    click.echo(f"{len(checks)} benign checks on {model_dir.name} ({precision}); profile written to {out}")
    click.echo(f"profile hash: 0x{prof.hash.hex()}")
