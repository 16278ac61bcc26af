"""`veriplex audit --recompute`: re-execute the checked stage and compare the chunks opened on chain.

For the request's verification task (stage j, layers [a, b), committed shape P × d), the auditor:

1. fetches the stage's inputs over the data plane (FETCH, `node.dataplane.query.fetch_rows`, signed
   with the auditor's key — stages answer only the request's gateway or an active registered
   operator): for j > 0 the rows [0, P) of stage j-1, for j = 0 the token ids stage 0 saw;
2. authenticates them: the fetched rows (and tokens) must rebuild the committed root — stage j-1's
   from the receipt's stage commitments (which the `commitments` check tied to the settled
   record), or for j = 0 stage 0's own root from the task on chain (it commits the token sequence);
3. runs layers [a, b) of the model with one prefill pass (`node.runtime.executor.StageExecutor.run`);
4. compares its own bf16 values at every chunk opened on chain (`ChunksOpened`) with the stage's
   and each member's, by the contract's integer chunk rule (`verifier.chunk_rule`, with the
   deployed D and K), and says per chunk who agrees.

The `recompute` check passes when the auditor's values agree with every chunk the stage opened.
"""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import numpy as np

from audit.check import AuditError, AuditReport, Status
from protocol.settings import Settings
from verifier.chunk_rule import chunk_bad_count
from verifier.encoding import CHUNK, Domain, bf16_bits, pad_rows
from verifier.merkle import StageCommitment
from verifier.receipt import Receipt


def signing_key(settings: Settings, key_file: Path | None, account: str | None,
                password_file: Path | None = None) -> bytes:
    """The key that signs FETCH: a hex key file only its owner can read, or a wallet account."""
    if (key_file is None) == (account is None):
        raise AuditError("--recompute needs exactly one of --key-file or --account: FETCH is "
                         "signed, and stages answer only the request's gateway or a registered "
                         "operator")
    if key_file is not None:
        from node.wallet.errors import WalletError
        from node.wallet.keystore import parse_private_key
        from node.wallet.passwords import read_secret_file

        try:
            mode = key_file.stat().st_mode
        except OSError as e:
            raise AuditError(f"cannot read --key-file {key_file}: {e}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuditError(f"key file {key_file} is readable by others (mode "
                             f"{stat.S_IMODE(mode):o}); chmod 600 it")
        try:
            return parse_private_key(read_secret_file(key_file, "key"))
        except WalletError as e:
            raise AuditError(f"--key-file {key_file}: {e}") from None
    from node.wallet.cli import unlock
    from node.wallet.errors import WalletError

    try:
        return bytes(unlock(settings, str(account), password_file).key)
    except WalletError as e:
        raise AuditError(f"--account {account}: {e}") from None


def recompute_checks(chain: Any, receipt: Receipt, report: AuditReport, model_dir: Path,
                     key: bytes, device: str = "auto") -> None:
    """Add the `recompute` check (see the module docstring)."""
    v = report.facts.get("verification") or {}
    if not v.get("task_id"):
        report.add("recompute", Status.SKIP, "no verification task: no chunks were opened on "
                   "chain to compare with")
        return
    openings = v.get("openings") or []
    if not openings:
        report.add("recompute", Status.SKIP, f"task {v['task_id']} has no opened chunks yet "
                   f"({v.get('status')}): run again after its openings")
        return
    try:
        inputs, source = _inputs(chain, receipt, report, v, key)
    except _Refused as e:
        report.add("recompute", Status.FAIL, str(e))
        return
    if inputs is None:
        report.add("recompute", Status.SKIP, source)
        return
    own = _run_stage(model_dir, tuple(v["layers"]), inputs, device)  # (P, d) bf16 bits
    _compare(chain, report, v, own, source)


class _Refused(Exception):
    """The data plane did not hand out the inputs (refused, unreachable, mismatching)."""


def _inputs(chain: Any, receipt: Receipt, report: AuditReport, v: dict[str, Any],
            key: bytes) -> tuple[Any, str]:
    """(the stage's authenticated input — token ids or rows —, where it came from), or (None,
    why not)."""
    import torch

    stage, sc = int(v["stage"]), v["stage_commit"]
    positions = int(sc["positions"])
    src = max(stage - 1, 0)
    pipe = report.facts.get("pipeline", {}).get("stages", [])
    if src >= len(pipe):
        return None, "the batch's pipeline table does not cover the checked stage"
    if src == stage:  # stage 0: authenticated by its own committed root (it commits the tokens)
        commit = (bytes.fromhex(sc["root"][2:]), positions, int(sc["hidden_size"]),
                  int(sc["n_tokens"]))
    else:
        claim = next((c for c in receipt.commitments if c.stage == src), None)
        ok = {c.name: c.status for c in report.checks}.get("commitments") is Status.PASS
        if claim is None or not ok:
            return None, (f"the inputs of stage {stage} cannot be authenticated: the receipt "
                          f"carries no verified commitment of stage {src} (use the gateway's "
                          "receipt)")
        c = claim.commit
        commit = (c.root, c.positions, c.hidden_size, c.n_tokens)
    ep = receipt.pipeline[src] if src < len(receipt.pipeline) else None
    if ep is None or ep.host is None or ep.port is None:
        return None, (f"the receipt gives no data-plane address for stage {src} (use the "
                      "gateway's receipt, which lists each stage's host and port)")
    operator = pipe[src]["operator"]
    layers = tuple(pipe[src]["layers"])
    rows, tokens = _fetch(key, chain.chain_id, ep.host, ep.port, receipt.request_id, src, layers,
                          commit[1], operator)
    root, p, d, n_tokens = commit
    if tuple(rows.shape) != (p, d) or len(tokens) < n_tokens:
        raise _Refused(f"stage {src} returned {tuple(rows.shape)} rows and {len(tokens)} tokens; "
                       f"it committed {p} × {d} rows and {n_tokens} tokens")
    rebuilt = StageCommitment.build(Domain(chain.chain_id, receipt.request_id, src), rows,
                                    tokens[:n_tokens])
    if rebuilt.root != root:
        raise _Refused(f"the rows (and tokens) stage {src} returned do not rebuild its committed "
                       f"root 0x{root.hex()[:10]}…: its store does not hold what it committed")
    where = f"stage {src} at {ep.host}:{ep.port}, checked against its committed root"
    if stage == 0:
        if len(tokens) < positions:
            raise _Refused(f"stage 0 returned {len(tokens)} token ids for {positions} positions")
        return torch.tensor(tokens[:positions], dtype=torch.int64), f"token ids from {where}"
    return rows, f"rows [0, {p}) from {where}"


def _fetch(key: bytes, chain_id: int, host: str, port: int, rid: bytes, stage: int,
           layers: tuple[int, ...], positions: int, operator: str) -> tuple[Any, list[int]]:
    from coincurve import PrivateKey

    from node.dataplane.query import fetch_rows
    from protocol.dataplane_errors import DataPlaneError, RemoteError
    from protocol.identity import address_of_key

    pk = PrivateKey(key)
    try:
        return asyncio.run(fetch_rows(pk, chain_id, host, port, rid, stage,
                                      (int(layers[0]), int(layers[1])), 0, positions,
                                      operator=operator))
    except RemoteError as e:
        raise _Refused(
            f"stage {stage} at {host}:{port} refused FETCH from {address_of_key(pk)}: "
            f"{e} — stages hand stored rows only to the "
            "request's gateway or an active registered operator: pass --key-file/--account of "
            "such a key, or ask the gateway") from None
    except DataPlaneError as e:
        raise _Refused(f"FETCH from stage {stage} at {host}:{port} failed: {e}") from None


def _run_stage(model_dir: Path, layers: tuple[int, ...], x: Any, device: str) -> np.ndarray:
    """Layers [a, b) over the inputs with one prefill → bf16 bits (P, chunks × 32)."""
    import torch

    from node.runtime.executor import StageExecutor
    from node.runtime.models.errors import ModelError
    from node.runtime.shard import load_shard, resolve_device_dtype

    try:
        dev, dtype = resolve_device_dtype(device, "auto")
        shard = load_shard(model_dir, int(layers[0]), int(layers[1]), dev, dtype)
        if x.dtype.is_floating_point:
            x = x.to(dtype)
        out = StageExecutor(shard).run(x, logits="none")
    except (ModelError, OSError) as e:
        raise AuditError(f"--model {model_dir}: {str(e).splitlines()[0]}") from None
    return pad_rows(bf16_bits(out.hidden.detach().to("cpu", torch.float32)))


def _compare(chain: Any, report: AuditReport, v: dict[str, Any], own: np.ndarray,
             source: str) -> None:
    ver = chain.verification
    d_ulp, k_bad = ver.chunk_rule(ver.task(int(v["task_id"])))  # the rule fixed when it opened
    stage_op = str(v["stage_operator"]).lower()
    rows: dict[tuple[int, int], list[str]] = {}
    results: list[dict[str, Any]] = []
    stage_opened, stage_agrees = False, True
    for o in v["openings"]:
        party = str(o["party"])
        is_stage = party.lower() == stage_op
        stage_opened |= is_stage
        for ch in o["chunks"]:
            p, k = int(ch["position"]), int(ch["chunk"])
            if p >= own.shape[0] or (k + 1) * CHUNK > own.shape[1]:
                raise AuditError(f"opened chunk ({p}, {k}) is outside the recomputed rows "
                                 f"{own.shape}: is --model the request's model?")
            mine = own[p, k * CHUNK:(k + 1) * CHUNK]
            bad = chunk_bad_count(np.asarray(ch["values"], dtype=np.uint16), mine, d_ulp)
            agrees = bad <= k_bad
            if is_stage:
                stage_agrees &= agrees
            who = f"{'stage' if is_stage else 'member'} {party[:10]}…"
            rows.setdefault((p, k), []).append(
                f"{who} {'agrees' if agrees else 'DISAGREES'} ({bad} of {CHUNK} bad)")
            results.append({"position": p, "chunk": k, "party": party, "stage": is_stage,
                            "bad": bad, "agrees": agrees})
    lines = [{"line": f"position {p}, chunk {k}: " + "; ".join(parts)}
             for (p, k), parts in sorted(rows.items())]
    rule = f"chunk rule D = {d_ulp}, K = {k_bad}"
    outcome = str(v.get("status"))
    if not stage_opened:
        report.add("recompute", Status.FAIL, f"the stage operator opened no chunks; my values vs "
                   f"the members' ({rule}, inputs: {source})", chunks=lines, results=results)
    elif stage_agrees:
        report.add("recompute", Status.PASS, f"my recomputation agrees with every chunk the stage "
                   f"opened ({rule}; inputs: {source}); chain outcome {outcome}",
                   chunks=lines, results=results)
    else:
        report.add("recompute", Status.FAIL, f"my recomputation disagrees with the stage's opened "
                   f"chunks ({rule}; inputs: {source}); chain outcome {outcome}",
                   chunks=lines, results=results)
