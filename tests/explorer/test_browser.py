"""Browser tests: Playwright drives Debian's headless chromium through the explorer served over
an index of real devnet activity. From the home page an auditor clicks through to the settled
request's proof view, checks what it shows, follows the pipeline to the node, and uses the search
box; no console errors; screenshots go to test-artifacts/explorer/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devnet.explorer.app import fmt_eth
from tests.support.explorer import ARTIFACTS, Activity
from tests.support.verified import Verified

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[str]]]:
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh user-data dir
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = ctx.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            yield page, errors
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_an_auditor_goes_from_the_home_page_to_the_requests_proof_view(
        browser_page: tuple[Any, list[str]], served: str, activity: Activity) -> None:
    page, errors = browser_page
    page.goto(served + "/")
    assert page.title() == "Veriplex explorer"
    _shot(page, "home")
    page.click(f"#latest-requests a[href='/request/{activity.request_id}']")
    page.wait_for_url(f"**/request/{activity.request_id}")
    _shot(page, "request")
    assert page.inner_text("#request-id") == activity.request_id
    assert page.inner_text("#commitment-root") == activity.commitment_root
    assert page.inner_text("#charge") == fmt_eth(activity.charge)
    assert page.inner_text("#tokens") == f"{activity.tokens_in} / {activity.tokens_out}"
    assert page.inner_text("#audit-command") == f"veriplex audit request-{activity.request_id}.json"
    assert "Batch released" in page.inner_text("#released")
    assert "No verification task was opened" in page.inner_text("#verification")
    drawn = httpx.get(f"{served}/api/request/{activity.request_id}").json()["data"]["sampling"]
    assert page.inner_text("#sampled") == ("yes" if drawn["sampled"] else "no")
    assert page.inner_text("#sampling-note") == drawn["note"]  # the draw, in words
    assert "gateway's receipt" in page.inner_text("#commitments-note")
    assert page.inner_text("#gateway-receipt") == f"GET /v1/receipts/{activity.request_id}"
    commands = page.locator("#audit .audit-command").all_inner_texts()
    assert commands[0] == f"veriplex audit request-{activity.request_id}.json --rpc-url " \
        f"{activity.devnet.url}"
    assert f"veriplex audit receipt-{activity.request_id}.json" in commands[1]
    assert f"GATEWAY_URL: the gateway that served it, address {activity.gateway}" in \
        page.inner_text("#audit")
    with page.expect_download() as dl:
        page.click("#receipt-link")
    assert dl.value.suggested_filename == f"request-{activity.request_id}.json"

    page.click(f"#pipeline a[href='/node/{activity.operator}']")
    page.wait_for_url(f"**/node/{activity.operator}")
    _shot(page, "node")
    assert page.inner_text("#requests-served") == "1"
    assert page.inner_text("#stake") == fmt_eth(2 * 10**18)
    assert errors == []


def test_an_auditor_goes_from_a_receipts_request_id_to_its_verdict_and_slash(
        browser_page: tuple[Any, list[str]], served: str, verified: Verified) -> None:
    page, errors = browser_page
    page.goto(served + "/")
    page.fill("#search", verified.request_id)  # the request id, as a receipt states it
    page.press("#search", "Enter")
    page.wait_for_url(f"**/request/{verified.request_id}")
    _shot(page, "request-verified")
    assert "fraud (client refunded)" in page.inner_text("#verdict")
    assert page.inner_text("#sampled") == "yes"
    roots = page.locator("#stage-commitments td.mono").all_inner_texts()
    assert roots == list(verified.stage_roots)
    assert page.inner_text("#commitments-match") == "yes"
    section = page.inner_text("#verification")
    for event in ("TaskOpened", "CommitteeSelected", "VerdictCommitted", "VerdictRevealed",
                  "ChunksOpened", "TaskFinalized", "StageSlashed", "ClientRefunded"):
        assert event in section
    page.click(f"#pipeline a[href='/node/{verified.stage_operator}']")  # the stage that cheated
    page.wait_for_url(f"**/node/{verified.stage_operator}")
    assert "StageSlashed" in page.inner_text("body")
    _shot(page, "node-slashed")
    assert errors == []


def test_the_search_box_finds_a_transaction_and_explains_a_bad_query(
        browser_page: tuple[Any, list[str]], served: str, activity: Activity) -> None:
    page, errors = browser_page
    page.goto(served + "/")
    page.fill("#search", activity.settle_tx)
    page.press("#search", "Enter")
    page.wait_for_url(f"**/tx/{activity.settle_tx}")
    assert "settle_batch" in page.inner_text("#decoded-call")
    _shot(page, "transaction")
    page.fill("#search", "not a hash")
    page.press("#search", "Enter")
    page.wait_for_selector("#error-message")
    _shot(page, "bad-search")
    assert "is not a transaction hash" in page.inner_text("#error-message")
    # The 400 page itself is the answer; chromium logs the failed status as a console error.
    assert all("400" in e for e in errors), errors


def test_a_visitor_sees_statuses_reputations_and_the_network_over_time(
        browser_page: tuple[Any, list[str]], served: str, activity: Activity,
        verified: Verified) -> None:
    page, errors = browser_page
    errors.clear()
    page.goto(served + "/")
    badge = page.locator(f"#latest-requests tr[data-request='{verified.request_id}'] .status")
    assert badge.inner_text() == "refunded"
    assert "status-refunded" in (badge.get_attribute("class") or "")
    page.click("#nav-network")
    page.wait_for_url("**/network")
    for chart in ("chart-requests", "chart-tokens", "chart-verifications", "chart-stake",
                  "chart-active"):
        box = page.locator(f"svg#{chart}").bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 80, chart
    assert page.locator("#chart-requests rect.bar").count() >= 1
    assert page.locator("#chart-verifications rect.bar[data-series='refunded']").count() == 1
    assert page.locator("#chart-stake polyline.line").count() == 2
    assert page.inner_text("#total-refunded") == "1"
    _shot(page, "network")
    page.click("#nav-nodes")
    page.wait_for_url("**/nodes")
    row = page.locator(f"#nodes tr[data-owner='{verified.stage_owner}']")
    assert row.count() == 1
    _shot(page, "nodes")
    row.locator("a").first.click()
    page.wait_for_url(f"**/node/{verified.stage_owner}")
    assert "1 failed" in page.inner_text("#rep-checks")
    assert page.inner_text("#served .status") == "refunded"
    _shot(page, "node-reputation")
    page.goto(f"{served}/node/{activity.owner}")
    assert "epochs since it registered" in page.inner_text("#rep-uptime")
    assert errors == []
