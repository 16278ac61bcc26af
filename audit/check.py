"""`veriplex audit`: check a receipt against the chain — settlement, inclusion, stage signatures.

`audit(chain, receipt)` reads only chain data (through `contracts.client.Chain`: views and event
logs) plus the receipt (`verifier.receipt`) and returns an `AuditReport`: one `Check` per
claim, each `pass`, `fail` (with the reason), `skip` (nothing to check: e.g. an explorer receipt
carries no stage signatures) or `pending` (the chain has not got there yet: randomness, release).

1. **settled** — a `RequestSettled` event of the deployment's Payments names the request id and its
   fields (batch, tokens in/out, charge, commitment root, key, pipeline index) equal the receipt's;
2. **inclusion** — the record's leaf (`contracts.batch.Leaf`, built from the receipt's values)
   proves against the batch root stored in Payments, with the receipt's proof or, lacking one, a
   proof rebuilt from all the batch's `RequestSettled` records;
3. **pipeline** — the receipt's pipeline (and pipeline table) is the one the batch settled;
4. **commitments** / **stage j** — `commitment_root(stage commits)` is the record's commitment root,
   and each stage's attestation (`contracts.verification.attestation_digest`) recovers to the
   operator the batch names for that stage;
5. **sampling**, **verification**, **payout** — `audit.outcome`;
6. **recompute** (optional) — `audit.recompute`.

`connect` finds the deployment: the manifest (explicit, or the settings' for the chain id) when it
names the receipt's Payments, else one derived from the receipt's Payments address on that chain.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from web3 import Web3

from audit.outcome import check_outcome
from audit.report import AuditReport, Check, SettledRecord, Status, hx  # noqa: F401  (re-exported)
from contracts.batch import Leaf, Pipeline, request_id, verify_proof
from contracts.client import Chain
from contracts.errors import ContractsError
from contracts.manifest import Deployment, Manifest, check_live
from contracts.payments import settled_leaf
from contracts.rpc import Rpc
from contracts.verification import commitment_root
from verifier.errors import AuditError
from verifier.receipt import Receipt

ZERO32 = b"\x00" * 32
__all__ = ["AuditError", "AuditReport", "Check", "Status", "audit", "connect"]


def _same_addr(a: str, b: str) -> bool:
    return a.lower() == b.lower()


# ------------------------------------------------------------------ deployment
def connect(rpc_url: str, receipt: Receipt, manifest: Path | None = None,
            default_manifest: Callable[[int], Path] | None = None,
            timeout_s: float = 10.0) -> Chain:
    """A `Chain` for the deployment that settled `receipt` (see the module docstring).

    `manifest`: named by the user — used as is (a receipt for another Payments then fails the
    deployment check). `default_manifest(chain_id)`: the settings' manifest for the chain, used
    when it exists and names the receipt's Payments; otherwise the deployment is derived from the
    receipt's Payments address."""
    try:
        rpc = Rpc(rpc_url, timeout_s=timeout_s)
        chain_id = rpc.chain_id
        if manifest is not None:
            m = Manifest.load(Path(manifest))
            check_live(rpc, m)
            return Chain(rpc, m)
        path = default_manifest(chain_id) if default_manifest is not None else None
        if path is not None and Path(path).is_file():
            m = Manifest.load(Path(path))
            check_live(rpc, m)
            if receipt.payments is None or _same_addr(m.address("Payments"), receipt.payments):
                return Chain(rpc, m)
        if receipt.payments is None:
            raise AuditError(
                f"no deployment manifest for chain {chain_id}{f' at {path}' if path else ''} and "
                "the receipt names no Payments address: pass --manifest PATH")
        return Chain(rpc, _derived_manifest(rpc, chain_id, receipt.payments))
    except ContractsError as e:
        raise AuditError(str(e)) from e


def _derived_manifest(rpc: Rpc, chain_id: int, payments: str) -> Manifest:
    """A manifest for the deployment whose Payments is at `payments` (its Verification read from
    it), assuming this checkout's contract ABIs."""
    from contracts.build import compile_all

    if not rpc.code(payments):
        raise AuditError(f"no contract at the receipt's Payments address {payments} on chain "
                         f"{chain_id}: wrong --rpc-url?")
    arts = compile_all()
    deps = {"Payments": Deployment(payments, arts["Payments"].hash, 0)}
    chain = Chain(rpc, Manifest(chain_id, "", 0, deps))
    verification = str(chain.payments.params()["verification"])
    if int(verification, 16):
        deps["Verification"] = Deployment(verification, arts["Verification"].hash, 0)
    return Manifest(chain_id, "", 0, deps)


# ------------------------------------------------------------------ the audit
def audit(chain: Chain, receipt: Receipt) -> AuditReport:
    """Every check but `recompute` (see the module docstring). Raises `AuditError` only when the
    chain cannot be read; a receipt the chain contradicts gives failed checks."""
    report = AuditReport(receipt.rid_hex(), chain.chain_id, receipt.kind)
    try:
        if not _check_deployment(chain, receipt, report):
            return report
        rec = _find_record(chain, receipt, report)
        if rec is None:
            return report
        pipeline = _check_inclusion_and_pipeline(chain, receipt, rec, report)
        if pipeline is not None:
            _check_commitments(chain, receipt, rec, pipeline, report)
        check_outcome(chain, receipt, rec, pipeline, report)
    except ContractsError as e:
        raise AuditError(f"reading the chain failed: {e}") from e
    return report


def _check_deployment(chain: Chain, receipt: Receipt, report: AuditReport) -> bool:
    pay = chain.payments.address
    ver = chain.manifest.contracts.get("Verification")
    report.facts["deployment"] = {"payments": pay, "verification": ver.address if ver else None}
    problems = []
    if receipt.chain_id is not None and receipt.chain_id != chain.chain_id:
        problems.append(f"the receipt is for chain {receipt.chain_id}, the RPC serves chain "
                        f"{chain.chain_id}")
    if receipt.payments is not None and not _same_addr(receipt.payments, pay):
        problems.append(f"the receipt's Payments is {receipt.payments}, the manifest's is {pay}")
    if problems:
        report.add("deployment", Status.FAIL, "; ".join(problems))
        return False
    return True


def _find_record(chain: Chain, receipt: Receipt, report: AuditReport) -> SettledRecord | None:
    rid = receipt.request_id
    pay = chain.payments
    evs = pay.events("RequestSettled", request_id=rid)
    if not evs:
        where = f"Payments {pay.address} on chain {chain.chain_id}"
        claimed = f" although the receipt names batch {receipt.batch_id}" \
            if receipt.batch_id is not None else " (not yet? the gateway settles in batches)"
        report.add("settled", Status.FAIL, f"no settled record of this request at {where}{claimed}")
        return None
    ev = evs[0]
    leaf = settled_leaf(ev)
    rec = SettledRecord(int(ev.args["batch_id"]), leaf, ev.block_number, ev.tx_hash)
    report.facts["record"] = {
        "batch_id": rec.batch_id, "block_number": rec.block_number, "tx_hash": rec.tx_hash,
        "key_hash": hx(leaf.key_hash), "pipeline_index": leaf.pipeline_index,
        "tokens_in": leaf.tokens_in, "tokens_out": leaf.tokens_out, "charge_wei": str(leaf.charge),
        "commitment_root": hx(leaf.commitment_root)}
    diffs = [f"{name} {mine} but the chain settled {theirs}" for name, mine, theirs in (
        ("batch_id", receipt.batch_id, rec.batch_id),
        ("tokens_in", receipt.tokens_in, leaf.tokens_in),
        ("tokens_out", receipt.tokens_out, leaf.tokens_out),
        ("charge_wei", receipt.charge, leaf.charge),
        ("commitment_root", receipt.commitment_root and hx(receipt.commitment_root),
         hx(leaf.commitment_root)),
        ("key_hash", receipt.key_hash and hx(receipt.key_hash), hx(leaf.key_hash)),
        ("pipeline_index", receipt.pipeline_index, leaf.pipeline_index),
    ) if mine is not None and mine != theirs]
    if receipt.tx_hash is not None and receipt.tx_hash.lower() != ev.tx_hash[2:].lower():
        diffs.append(f"tx_hash 0x{receipt.tx_hash} but the record was settled in {ev.tx_hash}")
    if None not in (receipt.gateway, receipt.seq):
        want = request_id(chain.chain_id, chain.payments.address, str(receipt.gateway),
                          int(receipt.seq or 0))
        if want != rid:
            diffs.append(f"request id is not the one of gateway {receipt.gateway} seq "
                         f"{receipt.seq} ({hx(want)})")
    summary = (f"batch {rec.batch_id} (tx {ev.tx_hash[:12]}…, block {ev.block_number}): "
               f"{leaf.tokens_in} in / {leaf.tokens_out} out tokens, charge {leaf.charge} wei")
    if diffs:
        report.add("settled", Status.FAIL, "the receipt says " + "; ".join(diffs),
                   differences=diffs)
    else:
        report.add("settled", Status.PASS, summary)
    return rec


def _claimed_leaf(receipt: Receipt, rec: SettledRecord) -> Leaf:
    """The leaf the receipt claims: its own values, the chain's where it states none."""
    c = rec.leaf

    def pick(mine: Any, theirs: Any) -> Any:
        return theirs if mine is None else mine

    return Leaf(receipt.request_id, pick(receipt.key_hash, c.key_hash),
                pick(receipt.pipeline_index, c.pipeline_index), pick(receipt.tokens_in, c.tokens_in),
                pick(receipt.tokens_out, c.tokens_out), pick(receipt.charge, c.charge),
                pick(receipt.commitment_root, c.commitment_root))


def _check_inclusion_and_pipeline(chain: Chain, receipt: Receipt, rec: SettledRecord,
                                  report: AuditReport) -> Pipeline | None:
    pay = chain.payments
    batch = pay.batch(rec.batch_id)
    if batch is None:
        report.add("inclusion", Status.FAIL, f"batch {rec.batch_id} does not exist in Payments")
        return None
    report.facts["batch"] = {"batch_id": rec.batch_id, "root": hx(batch.root),
                             "release_block": batch.release_block, "released": batch.released}
    leaf = _claimed_leaf(receipt, rec)
    if receipt.proof is not None:
        proof, source = list(receipt.proof), "the receipt's proof"
    else:
        try:
            proof, index, count = pay.record_proof(rec.batch_id, rec.leaf.request_id)
        except ContractsError as exc:
            report.add("inclusion", Status.FAIL, f"{exc} ({hx(batch.root)})")
            return None
        source = f"a proof rebuilt from the batch's {count} records (leaf {index})"
    report.facts["batch"]["proof"] = [hx(p) for p in proof]
    if verify_proof(proof, batch.root, leaf.hash()):
        report.add("inclusion", Status.PASS,
                   f"the record's leaf proves against batch {rec.batch_id}'s root "
                   f"{hx(batch.root)[:12]}… with {source}", leaf=hx(leaf.hash()))
    else:
        why = ("the receipt's values differ from the settled record (see 'settled')"
               if leaf != rec.leaf else "the proof does not lead to the root")
        report.add("inclusion", Status.FAIL,
                   f"the receipt's record is not in batch {rec.batch_id} with {source}: {why}",
                   leaf=hx(leaf.hash()))
    return _check_pipeline(chain, receipt, rec, report)


def _check_pipeline(chain: Chain, receipt: Receipt, rec: SettledRecord,
                    report: AuditReport) -> Pipeline | None:
    table = chain.payments.batch_pipelines(rec.batch_id)
    idx = rec.leaf.pipeline_index
    if idx >= len(table):
        report.add("pipeline", Status.FAIL, f"pipeline index {idx} is outside the batch's table "
                   f"of {len(table)}")
        return None
    pipe = table[idx]
    report.facts["pipeline"] = {"model_id": pipe.model_id, "stages": [
        {"operator": s.operator, "layers": [s.layer_start, s.layer_end]} for s in pipe.stages]}
    problems = []
    if receipt.model_id is not None and receipt.model_id != pipe.model_id:
        problems.append(f"the receipt names model {receipt.model_id}, the batch settled the "
                        f"request for model {pipe.model_id}")
    if receipt.pipelines is not None and [_norm(p) for p in receipt.pipelines] != \
            [_norm(p) for p in table]:
        problems.append("the receipt's pipeline table differs from the one the batch settled")
    if receipt.pipeline:
        mine = [(e.operator.lower(), e.layers) for e in receipt.pipeline]
        chain_side = [(s.operator.lower(), (s.layer_start, s.layer_end)) for s in pipe.stages]
        if mine != chain_side:
            problems.append(f"the receipt's pipeline {_fmt(mine)} is not the settled one "
                            f"{_fmt(chain_side)}")
    if problems:
        report.add("pipeline", Status.FAIL, "; ".join(problems))
    else:
        report.add("pipeline", Status.PASS, f"model {pipe.model_id}, {len(pipe.stages)} stage(s): "
                   + _fmt([(s.operator, (s.layer_start, s.layer_end)) for s in pipe.stages]))
    return pipe


def _norm(p: Pipeline) -> tuple[Any, ...]:
    return (p.model_id, tuple((s.operator.lower(), s.layer_start, s.layer_end) for s in p.stages))


def _fmt(stages: list[tuple[str, tuple[int, int]]]) -> str:
    return ", ".join(f"{Web3.to_checksum_address(op)[:10]}… [{a}, {b})" for op, (a, b) in stages)


def _check_commitments(chain: Chain, receipt: Receipt, rec: SettledRecord, pipe: Pipeline,
                       report: AuditReport) -> None:
    from contracts.verification import attestation_digest
    from protocol.dataplane_errors import BadSignature
    from protocol.identity import recover

    root = rec.leaf.commitment_root
    if not receipt.commitments:
        why = f" (the gateway says: {receipt.commitments_error})" \
            if receipt.commitments_error else ""
        if root == ZERO32:
            report.add("commitments", Status.FAIL, "the record commits to no stage outputs (zero "
                       f"commitment root): nothing about this answer can be verified{why}")
        else:
            report.add("commitments", Status.SKIP, "the receipt carries no stage commitments "
                       f"(a {receipt.kind} receipt); get the gateway's receipt to check them")
        return
    claims = sorted(receipt.commitments, key=lambda c: c.stage)
    stages = [c.stage for c in claims]
    if stages != list(range(len(pipe.stages))):
        report.add("commitments", Status.FAIL, f"the receipt commits stages {stages}, the "
                   f"pipeline has {len(pipe.stages)}")
        return
    got = commitment_root([c.commit for c in claims])
    if got == root:
        report.add("commitments", Status.PASS, f"{len(claims)} stage commitment(s) hash to the "
                   f"record's commitment root {hx(root)[:12]}…")
    else:
        report.add("commitments", Status.FAIL, f"the stage commitments hash to {hx(got)[:12]}…, "
                   f"the settled record commits to {hx(root)[:12]}…", computed=hx(got))
    report.facts["commitments"] = []
    for c, st in zip(claims, pipe.stages, strict=True):
        name, op = f"stage {c.stage}", st.operator
        report.facts["commitments"].append({
            "stage": c.stage, "operator": op, "layers": [st.layer_start, st.layer_end],
            "root": hx(c.commit.root), "positions": c.commit.positions,
            "hidden_size": c.commit.hidden_size, "n_tokens": c.commit.n_tokens})
        if c.operator is not None and not _same_addr(c.operator, op):
            report.add(name, Status.FAIL, f"the receipt names operator {c.operator}, the batch "
                       f"names {op} for layers [{st.layer_start}, {st.layer_end})")
            continue
        if c.layers is not None and c.layers != (st.layer_start, st.layer_end):
            report.add(name, Status.FAIL, f"the receipt says layers {list(c.layers)}, the batch "
                       f"settled [{st.layer_start}, {st.layer_end})")
            continue
        if c.signature is None:
            report.add(name, Status.FAIL, "the stage commitment is not signed")
            continue
        digest = attestation_digest(chain.chain_id, receipt.request_id, c.stage, c.commit)
        try:
            signer = recover(digest, c.signature)
        except BadSignature as e:
            report.add(name, Status.FAIL, f"the attestation signature is invalid: {e}")
            continue
        if _same_addr(signer, op):
            report.add(name, Status.PASS, f"root {hx(c.commit.root)[:12]}… ({c.commit.positions} "
                       f"positions × {c.commit.hidden_size}, {c.commit.n_tokens} tokens) signed by "
                       f"{op}, the batch's operator for layers [{st.layer_start}, {st.layer_end})")
        else:
            report.add(name, Status.FAIL, f"the attestation is signed by {signer}, but the batch "
                       f"names {op} for layers [{st.layer_start}, {st.layer_end})", signer=signer)
