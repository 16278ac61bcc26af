"""A pipeline that refuses a request before its first token is routed again, not failed.

Right after a new epoch a worker may still serve its old layers and refuse the range a route
named (NOT_ASSIGNED). Nothing was delivered or charged yet, so the gateway asks its router for a
pipeline without the refusing operator and runs the request there: the client gets one answer,
the receipt names the pipeline that served it, and the key is charged once, for it. Without any
other pipeline the client gets a clear OpenAI-shaped 503 and is charged nothing.

Stages are in-process stage servers of the tiny model (tests/support/gateway.DataPlane): `first`
serves [0, 4), `switching` still serves [0, 4) though the route names it for [4, 8), and `spare`
serves [4, 8). The chain is the gateway tests' anvil (tests/gateway/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from contracts.client import Chain
from contracts.rpc import Signer
from protocol.messages import StageAssignment
from tests.support.gateway import (
    DataPlane,
    ServedGateway,
    free_port,
    make_gateway,
    register_operator,
)

pytestmark = pytest.mark.anvil


@pytest.fixture(scope="module")
def switching_plane(chat_model: Path, gateway_signer: Signer, anvil_url: str, deployment: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    dp = DataPlane(chat_model, tmp_path_factory.mktemp("reroute-stores"), [gateway_signer.address],
                   ranges=[(0, 4), (0, 4), (4, 8)], key_base=41).start()
    for s in dp.stages():
        register_operator(anvil_url, deployment, s.operator, f"tcp://{s.host}:{s.port}")
    yield dp
    dp.stop()


def serve(anvil_url: str, deployment: Path, signer: Signer, model: Path, info,  # type: ignore[no-untyped-def]
          dp: DataPlane, db: Path, with_spare: bool) -> ServedGateway:
    from gateway.engine import StaticRouter

    first, switching, spare = dp.stages()
    named = StageAssignment(operator=switching.operator, host=switching.host,
                            port=switching.port, start=4, end=8)  # the epoch's new range
    gw = make_gateway(anvil_url, deployment, signer, model, info, [first, named], f"sqlite:///{db}")
    gw.runner.router = StaticRouter([first, named], [spare] if with_spare else [])
    return ServedGateway(gw, free_port()).start()


@pytest.mark.timeout(180)
def test_a_not_assigned_refusal_before_the_first_token_is_rerouted_and_charged_once(
        anvil_url, deployment, gateway_signer, chat_model, model_info, switching_plane,
        new_client, tmp_path):
    first, switching, spare = switching_plane.stages()
    client = new_client()
    served = serve(anvil_url, deployment, gateway_signer, chat_model, model_info,
                   switching_plane, tmp_path / "gw.sqlite", with_spare=True)
    try:
        api = served.openai(client.token, timeout=120)
        text, receipt = [], None
        stream = api.chat.completions.create(model=model_info.name, max_tokens=12, temperature=0,
                                             stream=True,
                                             messages=[{"role": "user", "content": "go"}])
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
            if (chunk.model_extra or {}).get("veriplex"):
                receipt = chunk.model_extra["veriplex"]
        assert receipt is not None and "".join(text)
        assert [s["operator"] for s in receipt["pipeline"]] == [first.operator, spare.operator]
        tin, tout = receipt["tokens"]["prompt"], receipt["tokens"]["completion"]
        assert int(receipt["charge_wei"]) == model_info.charge(tin, tout) > 0
        assert receipt["commitments_error"] is None
        assert [c["operator"] for c in receipt["commitments"]] == [first.operator, spare.operator]
        metrics = httpx.get(f"{served.url}/metrics", timeout=5).text
        assert "veriplex_gateway_reroutes_total 1" in metrics
        served.wait_settled(timeout_s=60)
        rows = served.gw.store.counts()
    finally:
        served.stop()
    assert rows["requests_unbatched"] == 0
    pay = Chain.connect(anvil_url, deployment).payments
    assert pay.key_state(client.signed.key_hash).spent_wei == int(receipt["charge_wei"])
    assert pay.deposit_of(client.address) == client.deposit_wei - int(receipt["charge_wei"])


@pytest.mark.timeout(180)
def test_with_no_other_pipeline_the_refusal_is_a_clear_503_and_nothing_is_charged(
        anvil_url, deployment, gateway_signer, chat_model, model_info, switching_plane,
        new_client, tmp_path):
    import openai

    client = new_client()
    served = serve(anvil_url, deployment, gateway_signer, chat_model, model_info,
                   switching_plane, tmp_path / "gw.sqlite", with_spare=False)
    try:
        api = served.openai(client.token, timeout=120)
        with pytest.raises(openai.APIStatusError) as err:
            api.chat.completions.create(model=model_info.name, max_tokens=8, temperature=0,
                                        messages=[{"role": "user", "content": "go"}])
        assert err.value.status_code == 503
        assert "no spare serves layers [4, 8)" in str(err.value)
        assert "not_assigned" in str(err.value).lower() or "(code 9)" in str(err.value)
        counts = served.gw.store.counts()
    finally:
        served.stop()
    assert counts["requests_unbatched"] == 0
    pay = Chain.connect(anvil_url, deployment).payments
    assert pay.key_state(client.signed.key_hash).spent_wei == 0
