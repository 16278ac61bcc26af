"""Settlement survives crashes and chain outages: a gateway killed right after broadcasting a batch
(before its receipt) neither loses nor double-charges it when restarted, also when the transaction
was still unmined at the crash; while the RPC endpoint hangs, requests are still served and the
batch is settled once the endpoint answers again."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.settlement import EXIT_AFTER_BROADCAST_CODE
from gateway.store import Store
from tests.support.gateway import BlackholeProxy, ServedGateway, free_port, make_gateway, rpc

pytestmark = pytest.mark.anvil


def start_gateway_process(anvil_url: str, deployment: Path, chat_model: Path, model_id: int,
                          dataplane, db_url: str, home: Path, crash: bool) -> tuple:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
    env.update({"VERIPLEX_HOME": str(home), "VERIPLEX_GATEWAY__BATCH_MAX_AGE_S": "0.2",
                "VERIPLEX_GATEWAY__SETTLE_TICK_S": "0.1",
                "VERIPLEX_GATEWAY__EXIT_AFTER_BROADCAST": "true" if crash else "false"})
    port = free_port()
    argv = [sys.executable, "-c", "from veriplex.cli import main; main()", "--rpc-url", anvil_url,
            "--manifest", str(deployment), "gateway", "run", "--dev-account", "3", "--checkpoint",
            str(chat_model), "--model-id", str(model_id), "--port", str(port), "--db-url", db_url,
            *dataplane.stage_args()]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seen: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            seen.append(line)
            if "gateway ready at" in line:
                return proc, f"http://127.0.0.1:{port}"
            if not line:
                break
    proc.kill()
    proc.wait()
    raise AssertionError("gateway did not start:\n" + "".join(seen))


def ask(url: str, token: str, model: str) -> dict:
    import openai

    api = openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0)
    r = api.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                    max_tokens=4, temperature=0)
    return r.model_extra["veriplex"]


@pytest.mark.parametrize("mined_before_crash", [True, False])
def test_gateway_killed_after_broadcast_settles_the_batch_exactly_once_after_restart(
        anvil_url, deployment, chat_model, model_info, dataplane, new_client, tmp_path,
        mined_before_crash):
    client = new_client()
    db_url = f"sqlite:///{tmp_path / 'gw.sqlite'}"
    proc, url = start_gateway_process(anvil_url, deployment, chat_model, model_info.model_id,
                                      dataplane, db_url, tmp_path, crash=True)
    if not mined_before_crash:
        rpc(anvil_url, "evm_setAutomine", False)
    try:
        first = ask(url, client.token, model_info.name)
        assert proc.wait(timeout=60) == EXIT_AFTER_BROADCAST_CODE  # died before the receipt
        proc.stdout.close()
        batch = Store(db_url).open_batches()
        assert [b.status for b in batch] == ["broadcast"] and batch[0].tx_hash

        proc, url = start_gateway_process(anvil_url, deployment, chat_model, model_info.model_id,
                                          dataplane, db_url, tmp_path, crash=False)
        if not mined_before_crash:
            time.sleep(1.0)  # the restarted gateway sees its tx in the mempool and waits
            assert Store(db_url).batch(batch[0].id).attempts == 1
            rpc(anvil_url, "evm_mine")
            rpc(anvil_url, "evm_setAutomine", True)
        second = ask(url, client.token, model_info.name)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            store = httpx.get(url + "/status").json()["store"]
            if store.get("batches_settled") == 2 and not store["requests_unbatched"]:
                break
            time.sleep(0.2)
        assert store.get("batches_settled") == 2, store
    finally:
        rpc(anvil_url, "evm_setAutomine", True)
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()
    settled = Store(db_url).batch(batch[0].id)
    assert settled.status == "settled" and settled.attempts == 1  # never sent a second time
    from contracts.client import Chain

    pay = Chain.connect(anvil_url, deployment).payments
    total = int(first["charge_wei"]) + int(second["charge_wei"])
    assert pay.key_state(client.signed.key_hash).spent_wei == total
    assert pay.deposit_of(client.address) == client.deposit_wei - total


def test_requests_are_served_while_the_rpc_hangs_and_settled_when_it_answers(
        anvil_url, deployment, gateway_signer, chat_model, model_info, dataplane, new_client,
        tmp_path):
    client = new_client()
    proxy = BlackholeProxy(anvil_url)
    gw = make_gateway(proxy.url, deployment, gateway_signer, chat_model, model_info,
                      dataplane.stages(), f"sqlite:///{tmp_path / 'gw.sqlite'}", timeout_s=1.0,
                      chain_cache_s=0.0)
    served = ServedGateway(gw, free_port()).start()
    try:
        charges = [int(ask(served.url, client.token, model_info.name)["charge_wei"])]
        served.wait_settled()
        proxy.blackhole = True
        for _ in range(2):
            charges.append(int(ask(served.url, client.token, model_info.name)["charge_wei"]))
        time.sleep(2.5)
        assert gw.settler.last_error is not None and proxy.swallowed > 0
        assert gw.store.counts().get("batches_settled") == 1
        proxy.blackhole = False
        served.wait_settled(timeout_s=60)
    finally:
        served.stop()
        proxy.close()
    from contracts.client import Chain

    pay = Chain.connect(anvil_url, deployment).payments
    assert pay.key_state(client.signed.key_hash).spent_wei == sum(charges)
    assert pay.deposit_of(client.address) == client.deposit_wei - sum(charges)
