"""The explorer's pages and their JSON mirrors over an index of real devnet activity: the request
(proof view), node, transaction, epoch, model, block and address pages show what happened on
chain; search finds each kind of thing; bad input gets 400 and unknown things a friendly 404."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from contracts.client import Chain
from contracts.verification import VerdictKind
from devnet.explorer.app import create_app, fmt_eth
from tests.support.explorer import Activity, Explorer, free_port, make_explorer
from tests.support.verified import PARAMS, Verified
from verifier.receipt import parse_receipt


@pytest.fixture(scope="module")
def client(indexed: Explorer) -> TestClient:
    return TestClient(create_app(indexed.engine, indexed.status, indexed.rpc))


def test_the_request_page_shows_payment_pipeline_commitment_and_payouts(
        client: TestClient, activity: Activity) -> None:
    d = client.get(f"/api/request/{activity.request_id}").json()["data"]
    r = d["request"]
    assert (r["tokens_in"], r["tokens_out"], int(r["charge_wei"])) == (
        activity.tokens_in, activity.tokens_out, activity.charge)
    assert r["commitment_root"] == activity.commitment_root and r["model_id"] == activity.model_id
    assert r["pipeline"]["stages"][0]["operator"] == activity.operator
    assert d["client"] == activity.client and d["batch"]["gateway"] == activity.gateway
    assert d["batch"]["tx_hash"] == activity.settle_tx
    released = d["payouts"]["released"]["args"]
    credited = sum(int(c["args"]["amount"]) for c in d["payouts"]["credits"])
    assert credited == released["operators_total"] > 0
    assert released["operators_total"] + released["verifier_pool"] + released["protocol_fee"] \
        == activity.charge
    assert d["verdict"] is None and d["verification"]["TaskOpened"] == []
    assert d["audit_command"] == f"veriplex audit request-{activity.request_id}.json"
    html = client.get(f"/request/{activity.request_id}").text
    for shown in (activity.commitment_root, fmt_eth(activity.charge), "No verification task was opened",
                  d["audit_command"], "Download receipt"):
        assert shown in html


def test_the_receipt_downloads_as_json_with_the_request_id(client: TestClient,
                                                          activity: Activity) -> None:
    resp = client.get(f"/request/{activity.request_id}/receipt.json")
    assert resp.status_code == 200 and "attachment" in resp.headers["content-disposition"]
    body = json.loads(resp.text)
    assert body["request"]["request_id"] == activity.request_id
    assert body["kind"] == "veriplex.explorer.request"
    assert body["chain_id"] == activity.devnet.chain_id
    assert "gateway's receipt" in body["note"]
    receipt = parse_receipt(body)  # what `veriplex audit` reads of it
    assert (receipt.kind, receipt.rid_hex()) == ("explorer", activity.request_id)
    assert "0x" + (receipt.commitment_root or b"").hex() == activity.commitment_root


def test_an_unsampled_request_says_its_stage_commitments_are_in_the_gateway_receipt(
        client: TestClient, activity: Activity) -> None:
    d = client.get(f"/api/request/{activity.request_id}").json()["data"]
    c = d["commitments"]
    assert c["record_root"] == activity.commitment_root and c["stages"] == []
    assert "gateway's receipt" in c["note"] and "signature" in c["note"]
    gw = d["gateway_receipt"]
    assert gw == {"gateway": activity.gateway, "url": None,
                  "path": f"/v1/receipts/{activity.request_id}"}
    chain_only, with_stages = (a["command"] for a in d["audit_commands"])
    assert chain_only == f"veriplex audit request-{activity.request_id}.json " \
        f"--rpc-url {activity.devnet.url}"
    assert with_stages == (f"curl -fsS GATEWAY_URL/v1/receipts/{activity.request_id} -o "
                           f"receipt-{activity.request_id}.json && veriplex audit "
                           f"receipt-{activity.request_id}.json --rpc-url {activity.devnet.url}")
    html = client.get(f"/request/{activity.request_id}").text
    assert chain_only in html and f"GET /v1/receipts/{activity.request_id}" in html


def test_with_a_gateway_url_the_request_page_links_its_receipt(
        indexed: Explorer, activity: Activity) -> None:
    c = TestClient(create_app(indexed.engine, indexed.status, indexed.rpc,
                              "http://gw.example:8000/"))
    d = c.get(f"/api/request/{activity.request_id}").json()["data"]
    url = f"http://gw.example:8000/v1/receipts/{activity.request_id}"
    assert d["gateway_receipt"]["url"] == url
    assert d["audit_commands"][1]["command"].startswith(f"curl -fsS {url} -o ")
    assert f'href="{url}"' in c.get(f"/request/{activity.request_id}").text


def test_a_verified_request_shows_every_stage_commitment_from_the_open_task_call(
        client: TestClient, verified: Verified) -> None:
    d = client.get(f"/api/request/{verified.request_id}").json()["data"]
    c = d["commitments"]
    assert [st["root"] for st in c["stages"]] == list(verified.stage_roots)
    assert [st["operator"] for st in c["stages"]] == [
        st["operator"] for st in d["request"]["pipeline"]["stages"]]
    assert c["matches_record_root"] is True and c["source"] == "open_task call data"
    opened = d["verification"]["TaskOpened"][0]
    assert c["source_tx"] == opened["tx_hash"]
    assert c["stages"][opened["args"]["stage"]]["root"] == opened["args"]["stage_commit"]["root"]
    html = client.get(f"/request/{verified.request_id}").text
    assert 'id="stage-commitments"' in html and all(r in html for r in verified.stage_roots)


def test_the_node_page_shows_stake_hardware_allocation_requests_and_earnings(
        client: TestClient, activity: Activity) -> None:
    by_owner = client.get(f"/api/node/{activity.owner}").json()["data"]
    by_operator = client.get(f"/api/node/{activity.operator}").json()["data"]
    assert by_owner == by_operator
    assert by_owner["operators"] == [activity.operator]
    assert int(by_owner["stake_wei"]) == 2 * 10**18
    assert by_owner["hardware"]["gpu"] == "NVIDIA A100-SXM4-80GB"
    assert [(a["epoch"], a["model_id"]) for a in by_owner["allocations"]] == [
        (activity.epoch, activity.model_id)]
    assert by_owner["requests_served"] == 1
    assert by_owner["served"][0]["request_id"] == activity.request_id
    assert 0 < int(by_owner["earnings_wei"]) < activity.charge
    assert by_owner["slashes"] == []


def test_the_transaction_page_decodes_the_settlement_call_and_its_events(
        client: TestClient, activity: Activity) -> None:
    d = client.get(f"/api/tx/{activity.settle_tx}").json()["data"]
    t = d["transaction"]
    assert (t["contract"], t["method"], t["status"]) == ("Payments", "settle_batch", True)
    assert t["args"]["records"][0]["charge"] == activity.charge
    assert [e["event"] for e in d["events"]] == ["RequestSettled", "BatchSettled"]
    assert d["requests"] == [activity.request_id]
    assert "settle_batch" in client.get(f"/tx/{activity.settle_tx}").text


def test_the_epoch_model_block_and_address_pages_show_their_records(
        client: TestClient, activity: Activity) -> None:
    ep = client.get(f"/api/epoch/{activity.epoch}").json()["data"]
    assert ep["allocations"][0]["operator"] == activity.operator
    assert ep["published"]["args"]["entry_count"] == 1
    model = client.get(f"/api/model/{activity.model_id}").json()["data"]
    # Model ids restart per ModelRegistry deployment; this chain has two, each with a model 1.
    assert model["model"]["layers"] == 4
    assert activity.request_id in [r["request_id"] for r in model["recent_requests"]]
    tx_block = client.get(f"/api/tx/{activity.settle_tx}").json()["data"]["transaction"]["block_number"]
    block = client.get(f"/api/block/{tx_block}").json()["data"]
    assert activity.settle_tx in [t["hash"] for t in block["transactions"]]
    addr = client.get(f"/api/address/{activity.client}").json()["data"]
    assert {t["method"] for t in addr["transactions"]} >= {"deposit", "register_key"}
    assert int(addr["balance_wei"]) > 0


def test_the_home_page_totals_count_what_was_indexed(client: TestClient, activity: Activity,
                                                     verified: Verified, indexed: Explorer) -> None:
    d = client.get("/api/home").json()["data"]
    assert d["totals"]["blocks"] == indexed.status.indexed + 1
    assert d["totals"]["requests"] == 2  # one per deployment
    assert int(d["totals"]["charged_wei"]) == activity.charge + verified.charge
    assert d["totals"]["nodes"] == 1 + 4
    assert [r["request_id"] for r in d["requests"]] == [verified.request_id, activity.request_id]


def test_the_request_page_shows_the_verification_game_and_its_outcome(
        client: TestClient, verified: Verified) -> None:
    d = client.get(f"/api/request/{verified.request_id}").json()["data"]
    v = d["verification"]
    assert [t["args"]["task_id"] for t in v["TaskOpened"]] == [verified.task_id]
    assert v["TaskOpened"][0]["args"]["seed"].startswith("0x")  # the sampling randomness
    assert sorted(v["CommitteeSelected"][0]["args"]["members"]) == sorted(verified.members)
    assert sorted(e["args"]["member"] for e in v["VerdictCommitted"]) == sorted(verified.members)
    assert [e["args"]["kind"] for e in v["VerdictRevealed"]] == [VerdictKind.FAIL] * 2
    assert len(v["ChunksOpened"]) == 1 + len(verified.members)  # the stage, then each member
    assert {e["args"]["owner"] for e in v["StageSlashed"]} == {verified.stage_owner}
    assert sum(int(e["args"]["amount"]) for e in v["StageSlashed"]) == PARAMS.stage_slash_wei
    assert d["verdict"]["status_name"] == "fraud (client refunded)"
    assert int(v["ClientRefunded"][0]["args"]["charge"]) == verified.charge
    html = client.get(f"/request/{verified.request_id}").text
    assert "fraud (client refunded)" in html and "No verification task was opened" not in html
    node = client.get(f"/api/node/{verified.stage_owner}").json()["data"]
    assert sorted(e["event"] for e in node["slashes"]) == sorted(
        ["NodeSlashed"] * len(v["StageSlashed"]) + ["StageSlashed"] * len(v["StageSlashed"]))


def test_the_node_page_counts_verifications_of_its_work_and_its_votes(
        client: TestClient, verified: Verified, activity: Activity) -> None:
    cheat = client.get(f"/api/node/{verified.stage_owner}").json()["data"]["verifications"]
    w = cheat["of_its_work"]
    assert (w["checked"], w["passed"], w["failed"], w["open"]) == (1, 0, 1, 0)
    assert [(t["task_id"], t["request_id"]) for t in w["tasks"]] == [
        (verified.task_id, verified.request_id)]
    for member in verified.members:  # each voted fail, which its opened chunks bore out
        v = client.get(f"/api/node/{member}").json()["data"]["verifications"]
        assert (v["revealed"], v["voted_pass"], v["voted_fail"], v["slashed"]) == (1, 0, 1, 0)
        assert v["of_its_work"]["checked"] == 0
    honest = client.get(f"/api/node/{activity.operator}").json()["data"]["verifications"]
    assert honest["of_its_work"] == {"checked": 0, "passed": 0, "failed": 0, "unresolved": 0,
                                     "open": 0, "tasks": []}
    html = client.get(f"/node/{verified.stage_owner}").text
    assert "1 check(s) of stages it served: 0 passed, 1 failed" in html


def test_search_leads_to_the_page_of_each_kind_of_query(client: TestClient,
                                                        activity: Activity) -> None:
    def where(q: str) -> str:
        resp = client.get("/search", params={"q": q}, follow_redirects=False)
        assert resp.status_code == 303, resp.text
        return str(resp.headers["location"])

    assert where(activity.settle_tx.upper().replace("0X", "0x")) == f"/tx/{activity.settle_tx}"
    assert where(f" {activity.request_id} ") == f"/request/{activity.request_id}"
    assert where("3") == "/block/3"
    assert where(activity.operator) == f"/node/{activity.operator}"
    assert where(activity.client) == f"/address/{activity.client}"


@pytest.mark.parametrize("path", ["/block/-1", "/block/abc", "/tx/0x1234", "/request/nothex",
                                  "/address/0xZZ", "/epoch/1.5", "/model/x", "/search?q=hello"])
def test_malformed_input_gets_a_400_page_and_json_error(client: TestClient, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 400 and "Bad request" in page.text
    api = client.get("/api" + path)
    assert api.status_code == 400 and api.json()["status"] == 400


@pytest.mark.parametrize("path", ["/block/999999", "/tx/0x" + "ab" * 32, "/request/0x" + "cd" * 32,
                                  "/epoch/999", "/model/999", "/node/0x" + "11" * 20,
                                  "/search?q=0x" + "ef" * 32, "/no/such/page"])
def test_unknown_things_get_a_friendly_404(client: TestClient, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 404 and "Not found" in page.text and "latest blocks" in page.text


def test_the_ui_stays_up_and_says_the_indexer_is_behind_when_the_rpc_is_down(
        activity: Activity, indexed: Explorer, tmp_path: object) -> None:
    dead = make_explorer(f"http://127.0.0.1:{free_port()}", str(indexed.engine.url),
                         activity.manifest)
    dead.indexer.sync_once()
    c = TestClient(create_app(indexed.engine, dead.status, dead.rpc))
    home = c.get("/")
    assert home.status_code == 200 and "indexer is behind" in home.text
    assert c.get("/api/status").json()["behind"] is True
    addr = c.get(f"/address/{activity.client}")
    assert addr.status_code == 200 and "RPC unreachable" in addr.text
    assert c.get(f"/request/{activity.request_id}").status_code == 200
    receipt = c.get(f"/request/{activity.request_id}/receipt.json").json()
    assert receipt["chain_id"] == activity.devnet.chain_id  # saved in the index


def test_the_sampling_draw_is_recomputed_from_the_index_as_the_contract_draws_it(
        client: TestClient, activity: Activity, verified: Verified) -> None:
    v = client.get(f"/api/request/{verified.request_id}").json()["data"]["sampling"]
    assert v["seed"] == v["task_seed"]  # the seed the contract used when it opened the task
    assert v["sampled"] is True and v["sample_bps"] == PARAMS.sample_bps
    assert v["verification"] == verified.manifest.address("Verification").lower()
    assert v["randomness_contract"] == "BlockhashRandomness"
    a = client.get(f"/api/request/{activity.request_id}").json()["data"]
    d = a["sampling"]
    chain = Chain.connect(activity.devnet.url, activity.manifest)
    assert d["sampled"] is chain.verification.is_sampled(
        activity.batch_id, bytes.fromhex(activity.request_id[2:]))
    assert d["anchor_hash"] == chain.w3.eth.get_block(d["anchor_block"])["hash"].to_0x_hex()
    assert (d["draw_bps"] < d["sample_bps"]) is d["sampled"]
    assert d["note"] in client.get(f"/request/{activity.request_id}").text


def test_the_receipt_download_of_a_malformed_or_unknown_request_id_is_refused(
        client: TestClient) -> None:
    assert client.get("/request/0x12/receipt.json").status_code == 400
    unknown = client.get("/request/0x" + "cd" * 32 + "/receipt.json")
    assert unknown.status_code == 404 and "Not found" in unknown.text
    empty = client.get("/api/search", params={"q": " "})
    assert empty.status_code == 400 and "request id" in empty.json()["error"]
