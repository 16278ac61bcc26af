"""Receipts of an actual gateway request: the OpenAI-compatible gateway (gateway) serves a
chat completion through the 2-stage data plane, collects the stages' signed commitments, settles
the record on the devnet; both its response receipt and its `GET /v1/receipts/{id}` lookup pass
`veriplex audit` — the audit reads the gateway's format as it is."""

from __future__ import annotations

import json
import time

import httpx

from contracts.apikeys import create_api_key
from tests.support.gateway import ServedGateway, free_port, make_gateway

from .game import ETH, fresh


def test_a_real_gateway_requests_receipts_pass_the_audit(world, plane, devnet, run_audit,
                                                         tmp_path):
    chain = world.chain
    gw_signer = plane.service_gateway
    client = fresh(chain)
    chain.payments.deposit(ETH // 10, sender=client)
    signed = create_api_key(bytes(client.account.key), gw_signer.address, ETH // 20,
                            int(time.time()) + 3600, 7, chain.chain_id, chain.payments.address)
    chain.payments.register_key(signed, sender=client)
    gw = make_gateway(devnet.url, world.manifest, gw_signer, plane.model, plane.info,
                      plane.dp.stages(), f"sqlite:///{tmp_path / 'gateway.sqlite'}")
    served = ServedGateway(gw, free_port()).start()
    try:
        r = served.openai(signed.token()).chat.completions.create(
            model=plane.info.name, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            temperature=0)
        receipt = r.model_extra["veriplex"]
        served.wait_settled()
        looked_up = httpx.get(f"{served.url}/v1/receipts/{receipt['request_id']}").json()
    finally:
        served.stop()
    assert len(receipt["commitments"]) == 2, receipt.get("commitments_error")
    for doc, proof_from in ((receipt, "rebuilt from the batch's"), (looked_up, "the receipt's proof")):
        res = run_audit(doc, "--json")
        assert res.exit_code == 0, res.output
        report = json.loads(res.stdout)
        c = {x["name"]: x for x in report["checks"]}
        for name in ("settled", "inclusion", "pipeline", "commitments", "stage 0", "stage 1"):
            assert c[name]["status"] == "pass", c[name]
        assert proof_from in c["inclusion"]["summary"]
        assert report["record"]["tokens_out"] == receipt["tokens"]["completion"]
