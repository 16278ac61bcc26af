"""`veriplex audit RECEIPT`: check a receipt against any RPC endpoint and print a checklist.

RECEIPT is the gateway's receipt JSON (the `veriplex` object of a response, a whole response, or
`GET /v1/receipts/{id}`), the explorer's downloaded receipt, or a bare request id. Prints one line
per check — ✓ pass, ✗ fail, – nothing to check, … not decided on chain yet — each with its reason,
or with `--json` the whole report (checks plus the record, batch, pipeline, commitments,
verification task and payouts read from the chain). `--recompute --model DIR` re-executes the
checked stage and compares its values at the chunks opened on chain (audit.recompute).
Exit status: 0 no check failed, 1 a check failed, 2 bad input (unreadable or malformed receipt,
unreachable RPC, no deployment found) — one line `error: ...` on stderr, no traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from audit.check import AuditReport, Status
from protocol.settings import Settings

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
MARKS = {Status.PASS: "✓", Status.FAIL: "✗", Status.SKIP: "–", Status.PENDING: "…"}


def render(report: AuditReport) -> str:
    """The human checklist."""
    dep = report.facts.get("deployment", {})
    lines = [f"audit of request {report.request_id} ({report.receipt_kind} receipt) on chain "
             f"{report.chain_id}, Payments {dep.get('payments')}"]
    width = max((len(c.name) for c in report.checks), default=0)
    for c in report.checks:
        lines.append(f"{MARKS[c.status]} {c.name.ljust(width)}  {c.summary}")
        for row in c.details.get("chunks", []):
            lines.append(f"    {row['line']}")
    failed = sum(1 for c in report.checks if c.status is Status.FAIL)
    pending = sum(1 for c in report.checks if c.status is Status.PENDING)
    verdict = "PASS" if report.ok else "FAIL"
    tail = f"{failed} of {len(report.checks)} checks failed" if failed else \
        f"{len(report.checks)} checks, none failed"
    if pending:
        tail += f"; {pending} pending on chain (run again later)"
    lines.append(f"result: {verdict} ({tail})")
    return "\n".join(lines)


def _settings_manifest(settings: Settings, chain_id: int) -> Path:
    """The settings' manifest for the chain: <home>/deployments/<chain id>.json, else the devnet's."""
    path = Path(settings.manifest_path(chain_id))
    return path if path.is_file() else Path(settings.manifest_path(None))


def _fail(message: str) -> None:
    click.echo(f"error: {message.splitlines()[0] if message else 'unknown error'}", err=True)
    sys.exit(EXIT_ERROR)


@click.command("audit")
@click.argument("receipt")
@click.option("--rpc-url", default=None,
              help="JSON-RPC endpoint of any node of the chain (default: the settings').")
@click.option("--manifest", type=click.Path(path_type=Path), default=None,
              help="Deployment manifest (default: the settings' for the chain if it names the "
                   "receipt's Payments, else derived from the receipt's Payments address).")
@click.option("--recompute", is_flag=True,
              help="Re-execute the checked stage at the chunks opened on chain (needs --model).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoint directory of the request's model (for --recompute).")
@click.option("--key-file", type=click.Path(path_type=Path), default=None,
              help="Hex private key (file mode 0600) that signs FETCH for --recompute; it must "
                   "be a registered operator's (or the gateway's) for stages to answer.")
@click.option("--account", default=None,
              help="Wallet account whose key signs FETCH (instead of --key-file).")
@click.option("--password-file", type=click.Path(path_type=Path), default=None,
              help="File whose first line is the --account's wallet password (default: prompt).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def audit(settings: Settings, receipt: str, rpc_url: str | None, manifest: Path | None,
          recompute: bool, model_dir: Path | None, key_file: Path | None, account: str | None,
          password_file: Path | None, device: str, as_json: bool) -> None:
    """Check RECEIPT (a receipt JSON file or a request id) against the chain."""
    from audit.check import AuditError, connect
    from audit.check import audit as run_audit
    from verifier.errors import VerifierError
    from verifier.receipt import load_receipt

    if recompute and model_dir is None:
        _fail("--recompute needs --model DIR (the request's model checkpoint)")
    if not recompute and (model_dir is not None or key_file is not None or account is not None):
        _fail("--model, --key-file and --account only apply with --recompute")
    url = rpc_url or settings.chain.rpc_url
    explicit = manifest or settings.chain.manifest
    try:
        rec = load_receipt(receipt)
        if recompute:
            from audit.recompute import recompute_checks, signing_key

            key = signing_key(settings, key_file, account, password_file)
        chain = connect(url, rec, manifest=explicit,
                        default_manifest=lambda cid: _settings_manifest(settings, cid),
                        timeout_s=settings.chain.timeout_s)
        report = run_audit(chain, rec)
        if recompute:
            recompute_checks(chain, rec, report, model_dir, key, device)  # type: ignore[arg-type]
    except (AuditError, VerifierError) as e:
        _fail(str(e))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, default=str))
    else:
        click.echo(render(report))
    sys.exit(EXIT_PASS if report.ok else EXIT_FAIL)
