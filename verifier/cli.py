"""`veriplex params check`: the verification game's equilibrium margin for the deployed parameters.

Reads the Verification parameters (sample rate, stage slash), the Payments shares and the model
registry's prices from the chain named by the settings (RPC URL + deployment manifest), then
prints `verifier.params.equilibrium_margin` per active model for a stated request size — the
charge a cheater's compute saving is estimated from. Exit status 0 when every margin is
positive, 1 when one is not (or on an error, printed as one line).
"""

from __future__ import annotations

import json

import click

from protocol.settings import Settings
from verifier.params import Margin, MarginInputs, equilibrium_margin

WEI_PER_ETH = 10**18


@click.group()
def params() -> None:
    """Inspect the deployed protocol parameters."""


@params.command("check")
@click.option(
    "--detection",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Chance a checked cheating stage is caught (bench/verify.py measures it). "
    "Default: settings verification.detection (0.99).",
)
@click.option(
    "--compute-cost-fraction",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Share of an operator's revenue that is compute cost. "
    "Default: settings verification.compute_cost_fraction (0.5).",
)
@click.option(
    "--stages",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="Stages per pipeline (a sampled request checks one of them).",
)
@click.option(
    "--tokens-in",
    type=click.IntRange(0),
    default=512,
    show_default=True,
    help="Input tokens of the request the gain is estimated for.",
)
@click.option(
    "--tokens-out",
    type=click.IntRange(0),
    default=128,
    show_default=True,
    help="Output tokens of that request.",
)
@click.option(
    "--charge-wei",
    type=click.IntRange(0),
    default=None,
    help="Use this charge instead of the registry's prices.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def check_cmd(
    settings: Settings,
    detection: float | None,
    compute_cost_fraction: float | None,
    stages: int,
    tokens_in: int,
    tokens_out: int,
    charge_wei: int | None,
    as_json: bool,
) -> None:
    """Print p · detection · slash − gain from cheating, and whether it is positive."""
    from contracts.client import Chain
    from contracts.errors import ContractsError
    from contracts.rpc import Rpc

    if detection is None:
        detection = float(settings.verification.detection)
    if compute_cost_fraction is None:
        compute_cost_fraction = float(settings.verification.compute_cost_fraction)
    try:
        rpc = Rpc(settings.chain.rpc_url, timeout_s=settings.chain.timeout_s)
        chain = Chain.connect(settings.chain.rpc_url, settings.manifest_path(rpc.chain_id))
        vp = chain.verification.params()
        pay = chain.payments.params()
        charges: list[tuple[str, int]]
        if charge_wei is not None:
            charges = [("--charge-wei", charge_wei)]
        else:
            charges = [
                (f"{m.name} (#{m.model_id})", m.charge(tokens_in, tokens_out))
                for m in chain.model_registry.models()
                if m.active
            ]
            if not charges:
                raise click.ClickException("no active model in the registry: pass --charge-wei")
    except ContractsError as exc:
        raise click.ClickException(str(exc)) from exc

    margins: list[tuple[str, Margin]] = []
    for name, charge in charges:
        inp = MarginInputs(
            sample_bps=vp.sample_bps,
            stage_slash_wei=vp.stage_slash_wei,
            protocol_fee_bps=int(pay["protocol_fee_bps"]),
            verifier_share_bps=int(pay["verifier_share_bps"]),
            stages=stages,
            charge_wei=charge,
            detection=detection,
            compute_cost_fraction=compute_cost_fraction,
        )
        margins.append((name, equilibrium_margin(inp)))
    ok = all(m.positive for _, m in margins)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "chain_id": chain.chain_id,
                    "verification": chain.verification.address,
                    "tokens_in": tokens_in,
                    "tokens_out": tokens_out,
                    "models": [{"model": name, **m.to_json()} for name, m in margins],
                    "positive": ok,
                },
                indent=2,
            )
        )
    else:
        click.echo(f"chain {chain.chain_id}, Verification at {chain.verification.address}")
        click.echo(
            f"sample rate p = {vp.sample_bps / 100:.2f}%, stage slash = "
            f"{vp.stage_slash_wei / WEI_PER_ETH:g} ETH, detection = {detection}, "
            f"{stages} stage(s), compute cost = {compute_cost_fraction:.0%} of revenue"
        )
        for name, m in margins:
            click.echo(
                f"{name}: charge {m.inputs.charge_wei} wei for {tokens_in}+{tokens_out} tokens; "
                f"expected penalty {m.expected_penalty_wei:.4g} wei - gain {m.gain_wei:.4g} wei "
                f"= margin {m.margin_wei:.4g} wei: {'POSITIVE' if m.positive else 'NOT POSITIVE'} "
                f"(break-even p = {m.break_even_sample_bps / 100:.4g}%)"
            )
    if not ok:
        raise SystemExit(1)
