"""The real `veriplex devnet up` process: web3 clients, deployment, restart, lock, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from web3 import Web3

from devnet.process import running_devnet
from tests.devnet.local import Probe


def rpc(url: str, method: str, *params: object) -> object:
    out = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).json()
    assert "error" not in out, out
    return out["result"]


def test_a_web3_client_deploys_and_transacts_and_a_restart_keeps_everything(
    tmp_path: Path, probe: Probe
) -> None:
    with running_devnet(tmp_path) as dn:
        manifest = json.loads(dn.manifest_path.read_text())
        assert manifest["chain_id"] == dn.chain_id == 31337
        w3 = Web3(Web3.HTTPProvider(dn.url))
        assert w3.is_connected() and w3.eth.chain_id == 31337
        for entry in manifest["contracts"].values():  # deployed at start, code is there
            assert len(w3.eth.get_code(entry["address"])) > 0
        owner = w3.eth.accounts[0]
        probe_contract = w3.eth.contract(abi=probe.abi, bytecode=probe.bytecode)
        receipt = w3.eth.wait_for_transaction_receipt(probe_contract.constructor().transact({"from": owner}))
        deployed = w3.eth.contract(address=receipt.contractAddress, abi=probe.abi)
        w3.eth.wait_for_transaction_receipt(deployed.functions.ping(5).transact({"from": owner}))
        assert deployed.functions.stored().call() == 5
        events = deployed.events.Pinged().get_logs(from_block=0)
        head = w3.eth.block_number
        balance = w3.eth.get_balance(owner)
    with running_devnet(tmp_path) as dn:  # same workdir: same database and manifest
        assert json.loads(dn.manifest_path.read_text()) == manifest  # not redeployed
        w3 = Web3(Web3.HTTPProvider(dn.url))
        assert w3.eth.block_number == head
        assert w3.eth.get_balance(owner) == balance
        deployed = w3.eth.contract(address=receipt.contractAddress, abi=probe.abi)
        assert deployed.functions.stored().call() == 5
        assert deployed.events.Pinged().get_logs(from_block=0) == events


def test_a_second_devnet_on_the_same_database_is_refused_and_bad_requests_do_no_harm(tmp_path: Path) -> None:
    with running_devnet(tmp_path, deploy=False) as dn:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
        env["VERIPLEX_HOME"] = str(tmp_path)
        second = subprocess.run(
            [sys.executable, "-m", "veriplex.cli", "devnet", "up", "--port", "0", "--db",
             str(dn.db_path), "--no-deploy"], env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert f"already in use by another devnet (pid {dn.pid})" in second.stderr
        # over HTTP: garbage, the wrong verb, and then business as usual
        bad = httpx.post(dn.url, content=b"\xff{{", headers={"content-type": "application/json"}).json()
        assert bad["error"]["code"] == -32700
        assert httpx.get(dn.url).status_code == 405
        assert rpc(dn.url, "eth_chainId") == hex(31337)


def test_sigint_stops_the_devnet_cleanly_and_interval_mining_advances_blocks(tmp_path: Path) -> None:
    with running_devnet(tmp_path, block_time=0.2, deploy=False) as dn:
        first = int(rpc(dn.url, "eth_blockNumber"), 16)  # type: ignore[arg-type]
        time.sleep(1.0)
        assert int(rpc(dn.url, "eth_blockNumber"), 16) > first  # type: ignore[arg-type]
        os.kill(dn.pid, signal.SIGINT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(dn.pid, 0)
            except ProcessLookupError:
                break
            try:  # reap it if it is our child (running_devnet will find it gone)
                if os.waitpid(dn.pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the devnet ignored SIGINT")


def test_a_busy_port_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
        env["VERIPLEX_HOME"] = str(tmp_path)
        out = subprocess.run(
            [sys.executable, "-m", "veriplex.cli", "devnet", "up", "--port", str(port), "--no-deploy"],
            env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


def test_websocket_clients_get_new_heads_and_matching_logs_as_they_are_mined(
    tmp_path: Path, probe: Probe
) -> None:
    from eth_utils import event_signature_to_log_topic
    from websockets.sync.client import connect

    def ws_call(ws, method: str, *params: object) -> object:  # type: ignore[no-untyped-def]
        ws.send(json.dumps({"jsonrpc": "2.0", "id": method, "method": method, "params": list(params)}))
        out = json.loads(ws.recv(timeout=10))
        assert out.get("id") == method, out
        return out.get("result", out.get("error"))

    with running_devnet(tmp_path, deploy=False) as dn:
        w3 = Web3(Web3.HTTPProvider(dn.url))
        owner = w3.eth.accounts[0]
        receipt = w3.eth.wait_for_transaction_receipt(
            w3.eth.contract(abi=probe.abi, bytecode=probe.bytecode).constructor().transact({"from": owner}))
        contract = w3.eth.contract(address=receipt.contractAddress, abi=probe.abi)
        topic = "0x" + event_signature_to_log_topic("Pinged(address,uint256,string)").hex()
        with connect(dn.url.replace("http://", "ws://")) as ws:
            assert ws_call(ws, "eth_chainId") == hex(31337)  # plain methods work over WS too
            heads = ws_call(ws, "eth_subscribe", "newHeads")
            logs = ws_call(ws, "eth_subscribe", "logs", {"address": receipt.contractAddress, "topics": [topic]})
            tx = contract.functions.ping(9).transact({"from": owner})
            got = [json.loads(ws.recv(timeout=10)) for _ in range(2)]
            by_sub = {m["params"]["subscription"]: m["params"]["result"] for m in got}
            mined = w3.eth.get_transaction_receipt(tx)
            assert int(by_sub[heads]["number"], 16) == mined.blockNumber
            assert by_sub[logs]["transactionHash"] == "0x" + bytes(tx).hex()
            assert int(by_sub[logs]["topics"][2], 16) == 9
            assert ws_call(ws, "eth_unsubscribe", logs) is True
            assert ws_call(ws, "eth_unsubscribe", logs) is False
        # over plain HTTP a subscription is refused with a clear error
        out = httpx.post(dn.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                                       "params": ["newHeads"]}).json()
        assert out["error"]["code"] == -32601 and "WebSocket" in out["error"]["message"]


def test_sigterm_seals_the_pending_block_exits_0_and_a_restart_serves_that_transaction(
        tmp_path: Path) -> None:
    from devnet.process import READY

    db = tmp_path / "devnet.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
    env["VERIPLEX_HOME"] = str(tmp_path)
    # A long block time keeps the transaction pending until the signal arrives.
    proc = subprocess.Popen(
        [sys.executable, "-m", "veriplex.cli", "devnet", "up", "--port", "0", "--db", str(db),
         "--no-deploy", "--block-time", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        ready = READY.search(proc.stdout.readline().rstrip("\n"))
        assert ready, "no ready line"
        url = ready.group(1)
        sender, receiver = rpc(url, "eth_accounts")[:2]  # type: ignore[index]
        tx = rpc(url, "eth_sendTransaction", {"from": sender, "to": receiver, "value": "0x7"})
        assert rpc(url, "eth_getTransactionReceipt", tx) is None
        assert rpc(url, "eth_blockNumber") == "0x0"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "veriplex devnet: stopped at block 1" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with running_devnet(tmp_path, deploy=False) as dn:  # the lock was released, the block kept
        assert dn.db_path == db
        receipt = rpc(dn.url, "eth_getTransactionReceipt", tx)
        assert isinstance(receipt, dict) and receipt["blockNumber"] == "0x1"
        assert receipt["status"] == "0x1"
