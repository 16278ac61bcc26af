"""`veriplex audit` on receipts of requests settled on a real devnet: a good receipt passes every
check, each kind of tampering fails the check it should with its reason, the verification outcome
(passed, or fraud proven with slash and refund) is read from the chain, and bad input exits 2."""

from __future__ import annotations

import copy
import json

from coincurve import PrivateKey

from contracts.verification import attestation_digest
from protocol.identity import sign_digest
from protocol.messages import StageCommit

from .game import PARAMS


def checks(result) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def test_a_good_receipt_passes_every_check_and_shows_the_passed_task(run_audit, honest_batch):
    served = honest_batch.served[0]
    res = run_audit(served.receipt, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    got = {c["name"]: c["status"] for c in report["checks"]}
    assert got == {"settled": "pass", "inclusion": "pass", "pipeline": "pass",
                   "commitments": "pass", "stage 0": "pass", "stage 1": "pass",
                   "sampling": "pass", "verification": "pass", "payout": "pending"}
    assert report["ok"] is True
    v = report["verification"]
    assert v["status"] == "PASSED" and v["sampled"] is True
    assert len(v["verdicts"]) == PARAMS.committee_size and all(x["verdict"] for x in v["verdicts"])
    # every party opened the drawn chunks; the auditor sees their values
    assert len(v["openings"]) == 1 + PARAMS.committee_size
    assert all(len(o["chunks"]) == PARAMS.spot_chunks for o in v["openings"])
    assert report["record"]["tokens_out"] == served.record.tokens_out
    assert report["batch"]["batch_id"] == honest_batch.batch_id


def test_the_human_checklist_marks_each_check_and_ends_with_the_result(run_audit, honest_batch):
    res = run_audit(honest_batch.served[0].receipt)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"audit of request {honest_batch.served[0].receipt['request_id']}")
    assert any(line.startswith("✓ inclusion") for line in lines)
    assert any(line.startswith("✓ stage 1") for line in lines)
    assert any(line.startswith("… payout") for line in lines)
    assert lines[-1].startswith("result: PASS")


def test_a_receipt_without_a_proof_is_proven_from_the_batchs_logged_records(run_audit,
                                                                           honest_batch):
    receipt = copy.deepcopy(honest_batch.served[2].receipt)
    for k in ("proof", "leaf_index", "batch_id", "batch", "pipelines"):
        receipt.pop(k)
    res = run_audit(receipt, "--json")
    assert res.exit_code == 0, res.output
    inc = checks(res)["inclusion"]
    assert inc["status"] == "pass" and "rebuilt from the batch's 3 records (leaf 2)" in inc["summary"]
    # sampled (every request is) but nobody opened its task yet: pending, not failed
    assert checks(res)["verification"]["status"] == "pending"


def test_a_tampered_token_count_fails_settlement_and_inclusion(run_audit, honest_batch):
    receipt = copy.deepcopy(honest_batch.served[1].receipt)
    real = receipt["tokens"]["completion"]
    receipt["tokens"]["completion"] = real + 1
    res = run_audit(receipt, "--json")
    assert res.exit_code == 1
    c = checks(res)
    assert c["settled"]["status"] == "fail"
    assert f"tokens_out {real + 1} but the chain settled {real}" in c["settled"]["summary"]
    assert c["inclusion"]["status"] == "fail"
    assert "not in batch" in c["inclusion"]["summary"]


def test_a_tampered_proof_fails_inclusion(run_audit, honest_batch):
    receipt = copy.deepcopy(honest_batch.served[1].receipt)
    receipt["proof"][0] = "0x" + "cd" * 32
    res = run_audit(receipt, "--json")
    assert res.exit_code == 1
    c = checks(res)
    assert c["settled"]["status"] == "pass"
    assert c["inclusion"]["status"] == "fail"
    assert "the proof does not lead to the root" in c["inclusion"]["summary"]


def test_a_tampered_commitment_root_fails(run_audit, honest_batch):
    receipt = copy.deepcopy(honest_batch.served[1].receipt)
    receipt["commitments"][1]["root"] = "0x" + "ab" * 32
    res = run_audit(receipt, "--json")
    assert res.exit_code == 1
    c = checks(res)
    assert c["settled"]["status"] == "pass"  # the record itself is as settled
    assert c["commitments"]["status"] == "fail"
    assert "the settled record commits to" in c["commitments"]["summary"]
    # the signature no longer covers the changed root
    assert c["stage 1"]["status"] == "fail" and "attestation is signed by" in c["stage 1"]["summary"]
    assert c["stage 0"]["status"] == "pass"


def test_a_stage_commitment_signed_by_another_key_fails_naming_the_operator(run_audit, world,
                                                                           honest_batch):
    served = honest_batch.served[1]
    receipt = copy.deepcopy(served.receipt)
    c0 = receipt["commitments"][0]
    sc = StageCommit(bytes.fromhex(c0["root"][2:]), c0["positions"], c0["hidden_size"],
                     c0["n_tokens"])
    intruder = world.operators[3]  # a registered operator, just not this stage's
    sig = sign_digest(PrivateKey(bytes(intruder.account.key)),
                      attestation_digest(world.chain.chain_id, served.rid, 0, sc))
    c0["signature"] = "0x" + sig.hex()
    res = run_audit(receipt, "--json")
    assert res.exit_code == 1
    s0 = checks(res)["stage 0"]
    assert s0["status"] == "fail"
    assert intruder.address in s0["summary"] and world.operators[0].address in s0["summary"]


def test_a_receipt_naming_the_wrong_operator_fails_the_pipeline_and_the_stage(run_audit, world,
                                                                             honest_batch):
    receipt = copy.deepcopy(honest_batch.served[1].receipt)
    receipt["commitments"][1]["operator"] = world.operators[2].address
    receipt["pipeline"][1]["operator"] = world.operators[2].address
    res = run_audit(receipt, "--json")
    assert res.exit_code == 1
    c = checks(res)
    assert c["pipeline"]["status"] == "fail" and "is not the settled one" in c["pipeline"]["summary"]
    assert c["stage 1"]["status"] == "fail"
    assert f"the receipt names operator {world.operators[2].address}" in c["stage 1"]["summary"]


def test_a_receipt_naming_another_model_fails_the_pipeline_check(run_audit, honest_batch):
    receipt = copy.deepcopy(honest_batch.served[1].receipt)
    real = receipt["model"]["id"]
    receipt["model"]["id"] = real + 5
    res = run_audit(receipt, "--json")
    assert res.exit_code == 1
    assert f"the receipt names model {real + 5}, the batch settled the request for model {real}" \
        in checks(res)["pipeline"]["summary"]


def test_a_garbage_signature_fails_with_its_reason(run_audit, honest_batch):
    receipt = copy.deepcopy(honest_batch.served[1].receipt)
    receipt["commitments"][0]["signature"] = "0x" + "00" * 65
    res = run_audit(receipt, "--json")
    assert res.exit_code == 1
    assert "signature is invalid" in checks(res)["stage 0"]["summary"]


def test_a_request_convicted_of_fraud_fails_with_slash_and_refund(run_audit, forged_batch):
    res = run_audit(forged_batch.served[0].receipt, "--json")
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    c = {x["name"]: x for x in report["checks"]}
    # the receipt is authentic: the stages really signed what they served
    assert c["inclusion"]["status"] == "pass" and c["stage 0"]["status"] == "pass"
    assert c["verification"]["status"] == "fail"
    assert "FRAUD proven" in c["verification"]["summary"]
    assert f"slashed {PARAMS.stage_slash_wei} wei and the client refunded" in \
        c["verification"]["summary"]
    assert report["verification"]["status"] == "FRAUD"  # the new game refunds at finalize
    assert c["payout"]["status"] == "pass" and "refunded" in c["payout"]["summary"]


def test_the_explorers_downloaded_receipt_is_audited_without_stage_signatures(
        run_audit, honest_batch, world, devnet, tmp_path):
    from fastapi.testclient import TestClient

    from contracts.manifest import Manifest
    from contracts.rpc import Rpc
    from devnet.explorer.app import create_app
    from devnet.explorer.decode import Decoder
    from devnet.explorer.indexer import Indexer, IndexerStatus
    from devnet.explorer.models import make_engine

    rpc = Rpc(devnet.url)
    engine = make_engine(f"sqlite:///{tmp_path / 'explorer.sqlite'}")
    status = IndexerStatus(rpc_url=devnet.url)
    Indexer(rpc, engine, Decoder.load(Manifest.load(world.manifest)), status).sync_once()
    rid = honest_batch.served[0].receipt["request_id"]
    client = TestClient(create_app(engine, status, rpc))
    download = client.get(f"/request/{rid}/receipt.json")
    assert download.status_code == 200
    command = client.get(f"/api/request/{rid}").json()["data"]["audit_command"]
    assert command == f"veriplex audit request-{rid}.json"
    res = run_audit(download.text, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["receipt"] == "explorer"
    c = {x["name"]: x for x in report["checks"]}
    assert c["settled"]["status"] == "pass" and c["inclusion"]["status"] == "pass"
    assert c["pipeline"]["status"] == "pass" and c["verification"]["status"] == "pass"
    assert c["commitments"]["status"] == "skip"
    assert "no stage commitments" in c["commitments"]["summary"]


def test_a_bare_request_id_is_audited_from_the_chain_alone(devnet, honest_batch, world, tmp_path):
    from click.testing import CliRunner

    from veriplex.cli import cli

    res = CliRunner().invoke(cli, ["--manifest", str(world.manifest), "audit",
                                   honest_batch.served[0].receipt["request_id"], "--rpc-url",
                                   devnet.url, "--json"],
                             env={"VERIPLEX_HOME": str(tmp_path)})
    assert res.exit_code == 0, res.output
    assert checks(res)["inclusion"]["status"] == "pass"


def test_a_receipt_for_another_chain_fails_the_deployment_check(run_audit, honest_batch):
    receipt = dict(honest_batch.served[0].receipt, chain_id=1)
    res = run_audit(receipt, "--json")
    assert res.exit_code == 1
    dep = checks(res)["deployment"]
    assert dep["status"] == "fail" and "the receipt is for chain 1" in dep["summary"]


def test_a_request_never_settled_fails(run_audit, honest_batch):
    receipt = dict(honest_batch.served[0].receipt, request_id="0x" + "77" * 32)
    for k in ("seq", "gateway", "batch_id", "batch", "proof"):
        receipt.pop(k)
    res = run_audit(receipt, "--json")
    assert res.exit_code == 1
    assert "no settled record of this request" in checks(res)["settled"]["summary"]

