"""What people who look rather than read see: each request list says how its verification went,
each node has a reputation (checks passed and failed, slashes, uptime, earnings), the nodes page
compares them, and the network page draws the network over time as inline SVG. Over an index of
real devnet activity (a paid request, and a request whose stage was convicted and refunded)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from contracts.verification import TaskStatus
from devnet.explorer import charts
from devnet.explorer.app import create_app
from devnet.explorer.status import status_name
from tests.support.explorer import Activity, Explorer
from tests.support.verified import Verified


@pytest.fixture(scope="module")
def client(indexed: Explorer) -> TestClient:
    return TestClient(create_app(indexed.engine, indexed.status, indexed.rpc))


def test_the_home_list_gives_each_request_its_verification_status(
        client: TestClient, activity: Activity, verified: Verified) -> None:
    rows = {r["request_id"]: r["verification"]
            for r in client.get("/api/home").json()["data"]["requests"]}
    assert rows[verified.request_id]["status"] == "refunded"
    drawn = client.get(f"/api/request/{activity.request_id}").json()["data"]["sampling"]
    # no task was opened for it: not sampled when the draw says so, else still pending
    assert rows[activity.request_id]["status"] == ("pending" if drawn["sampled"] else "not sampled")
    html = client.get("/").text
    assert re.search(rf'data-request="{verified.request_id}">.*?status-refunded', html, re.S)


def test_the_request_page_and_the_model_list_show_the_same_status(
        client: TestClient, verified: Verified) -> None:
    d = client.get(f"/api/request/{verified.request_id}").json()["data"]
    assert d["status"]["status"] == "refunded"
    assert 'id="request-status"' in client.get(f"/request/{verified.request_id}").text
    model_id = d["request"]["model_id"]
    recent = client.get(f"/api/model/{model_id}").json()["data"]["recent_requests"]
    assert [r["verification"]["status"] for r in recent
            if r["request_id"] == verified.request_id] == ["refunded"]


def test_a_convicted_nodes_reputation_shows_the_failed_check_and_its_slash(
        client: TestClient, verified: Verified) -> None:
    page = client.get(f"/api/node/{verified.stage_operator}").json()["data"]
    rep = page["reputation"]
    assert rep["owner"] == verified.stage_owner
    assert rep["checks_failed"] == 1 and rep["checks_passed"] == 0
    registry_slashes = [e for e in page["slashes"] if e["event"] == "NodeSlashed"]
    assert rep["slashes"] == len(registry_slashes) >= 1
    assert int(rep["slashed_wei"]) == sum(int(e["args"]["amount"]) for e in registry_slashes)
    served = page["served"]
    assert served[0]["verification"]["status"] == "refunded"
    member = client.get(f"/api/node/{verified.members[0]}").json()["data"]["reputation"]
    assert member["votes"] == 1 and member["member_slashes"] == 0
    ver = client.get(f"/api/request/{verified.request_id}").json()["data"]["verification"]
    assert int(member["verifier_rewards_wei"]) == sum(
        int(e["args"]["amount"]) for e in ver["VerifierRewarded"]
        if e["args"]["owner"] == member["owner"])


def test_an_honest_nodes_reputation_has_uptime_and_earnings(client: TestClient,
                                                           activity: Activity) -> None:
    rep = client.get(f"/api/node/{activity.owner}").json()["data"]["reputation"]
    assert rep["epochs_allocated"] == 1 and rep["epochs_since_registered"] >= 1
    assert rep["uptime"] == pytest.approx(1 / rep["epochs_since_registered"])
    assert int(rep["earnings_wei"]) > 0 and rep["slashes"] == 0 and rep["checks_failed"] == 0
    assert rep["state"] == "staked" and rep["requests_served"] == 1
    html = client.get(f"/node/{activity.owner}").text
    assert 'id="rep-uptime"' in html and 'id="rep-checks"' in html


def test_the_nodes_page_lists_every_node_with_its_record(client: TestClient, activity: Activity,
                                                         verified: Verified) -> None:
    nodes = {n["owner"]: n for n in client.get("/api/nodes").json()["data"]["nodes"]}
    assert activity.owner in nodes and verified.stage_owner in nodes
    assert nodes[verified.stage_owner]["slashes"] >= 1
    assert nodes[activity.owner]["requests_served"] == 1
    html = client.get("/nodes").text
    assert f'data-owner="{verified.stage_owner}"' in html


def test_the_network_page_draws_requests_verifications_stake_and_epochs(
        client: TestClient, indexed: Explorer) -> None:
    d = client.get("/api/network").json()["data"]
    t = d["totals"]
    assert t["requests"] == sum(d["series"]["requests"]) >= 2
    assert t["verifications"]["refunded"] == 1
    assert t["slashes"] >= 1 and int(t["slashed_wei"]) > 0
    assert t["epochs"] >= 1 and t["active_nodes"] == 1
    assert t["tokens_in"] == sum(d["series"]["tokens_in"])
    staked = [int(x) for x in d["series"]["staked_wei"]]
    assert staked[-1] == int(t["staked_wei"]) > 0
    assert len(d["labels"]) == len(d["series"]["requests"])
    html = client.get("/network").text
    for chart in ("chart-requests", "chart-tokens", "chart-verifications", "chart-stake",
                  "chart-active"):
        assert f'<svg id="{chart}"' in html
    assert 'data-series="refunded"' in html  # the convicted request's bar


def test_bars_stack_their_series_and_scale_to_a_round_top() -> None:
    svg = charts.bars("c", "t <x>", ["a", "b"], {"passed": [1, 0], "fraud": [2, 3]}, "tasks")
    assert "t &lt;x&gt;" in svg and "<x>" not in svg
    values = [float(v) for v in re.findall(r'data-value="([\d.]+)"', svg)]
    assert values == [1, 2, 3]  # the zero is not drawn
    assert charts.nice_max(3) == 5 and charts.nice_max(0) == 1 and charts.nice_max(120) == 200
    assert "nothing yet" in charts.lines("e", "empty", [], {"x": []})


def test_unknown_status_codes_are_named_not_dropped() -> None:
    assert status_name(TaskStatus.PASSED) == "passed"
    assert status_name(TaskStatus.VOTING) == "pending"
    assert status_name(42) == "status 42" and status_name(None) == "status None"


def test_the_network_page_is_cached_per_indexed_tip_and_follows_a_new_block(
        client: TestClient, indexed: Explorer) -> None:
    indexed.indexer.sync_once()  # blocks other tests of this package mined on the shared devnet
    first = client.get("/api/network").json()["data"]
    assert client.get("/api/network").json()["data"] == first  # same tip: the same answer
    indexed.rpc.mine(1)
    assert indexed.indexer.sync_once() == 1
    after = client.get("/api/network").json()["data"]
    assert after["head"] == first["head"] + 1  # a new tip: recomputed
