"""Fixtures of the JSON-RPC conformance suite: one node per kind, raw JSON-RPC, isolation.

Every test in this directory runs once against anvil (the reference node, started from the npm
binary on a free loopback port) and once against our embedded py-evm devnet (started through
`devnet.process.running_devnet`), with the same expectations. A node is shared by the whole session
(starting one costs seconds); each test that changes state runs between `evm_snapshot` and
`evm_revert`, so tests stay independent. Protocol-level checks go through `Rpc` (httpx, raw JSON),
chain-level conveniences (signing with eth_account, waiting for receipts) through `Chain`.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import vyper
from eth_abi import decode as abi_decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from vyper.compiler.settings import Settings as VyperSettings
from web3 import Web3

from devnet.process import running_anvil, running_devnet
from protocol.settings import DEV_MNEMONIC

REPO_ROOT = Path(__file__).resolve().parents[2]
ANVIL_CHAIN_ID = 31337
PROBE_SOURCE = Path(__file__).with_name("probe.vy")
RECEIPT_TIMEOUT_S = 15.0
# Number of dev accounts the tests sign for; anvil and the devnet both fund at least this many.
DEV_ACCOUNT_COUNT = 4
# Block interval of `interval_node`: long enough to act between two blocks on a loaded machine.
INTERVAL_BLOCK_TIME_S = 2

Account.enable_unaudited_hdwallet_features()


# ---------------------------------------------------------------------------------------------
# Raw JSON-RPC
# ---------------------------------------------------------------------------------------------


class RpcError(Exception):
    """A JSON-RPC error object returned where a result was expected."""

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        self.method = method
        self.code: int = error.get("code")  # type: ignore[assignment]
        self.message: str = error.get("message", "")
        self.data: Any = error.get("data")
        super().__init__(f"{method} -> error {self.code}: {self.message} (data={self.data!r})")


class Rpc:
    """Minimal JSON-RPC 2.0 client over httpx that exposes the wire format to tests."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(timeout=30.0)
        self._next_id = 0

    def close(self) -> None:
        self.http.close()

    @staticmethod
    def quantity(value: str) -> int:
        return quantity(value)

    def post_json(self, payload: Any) -> httpx.Response:
        return self.http.post(self.url, json=payload)

    def post_text(self, body: str | bytes) -> httpx.Response:
        return self.http.post(self.url, content=body, headers={"content-type": "application/json"})

    def envelope(self, method: str, *params: Any) -> dict[str, Any]:
        self._next_id += 1
        return {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": list(params)}

    def request(self, method: str, *params: Any) -> dict[str, Any]:
        """Send one request and return the whole response object (result or error)."""
        payload = self.envelope(method, *params)
        response = self.post_json(payload)
        assert response.status_code == 200, f"{method}: HTTP {response.status_code} {response.text}"
        body = response.json()
        assert body.get("jsonrpc") == "2.0", body
        assert body.get("id") == payload["id"], body
        return body

    def call(self, method: str, *params: Any) -> Any:
        body = self.request(method, *params)
        if "error" in body:
            raise RpcError(method, body["error"])
        assert "result" in body, body
        return body["result"]

    def error(self, method: str, *params: Any) -> RpcError:
        """Send a request that must fail and return its error (the test fails on a result)."""
        body = self.request(method, *params)
        assert "error" in body, (
            f"{method}{params!r} should fail but returned {body.get('result')!r}"
        )
        assert "result" not in body, body
        err = RpcError(method, body["error"])
        assert isinstance(err.code, int), body
        assert isinstance(err.message, str) and err.message.strip(), (
            f"error without message: {body}"
        )
        return err


def quantity(value: str) -> int:
    """Decode a JSON-RPC QUANTITY, insisting on the canonical form (0x prefix, no leading zeros)."""
    assert isinstance(value, str) and value.startswith("0x"), f"not a hex quantity: {value!r}"
    assert value == "0x0" or not value.startswith("0x0"), f"quantity with leading zeros: {value!r}"
    return int(value, 16)


# ---------------------------------------------------------------------------------------------
# Chain conveniences
# ---------------------------------------------------------------------------------------------


@dataclass
class Chain:
    """Typed helpers over `Rpc` for a node whose dev accounts come from DEV_MNEMONIC."""

    rpc: Rpc
    chain_id: int
    accounts: list[LocalAccount]

    def block_number(self) -> int:
        return quantity(self.rpc.call("eth_blockNumber"))

    def balance(self, address: str, block: str | int = "latest") -> int:
        tag = hex(block) if isinstance(block, int) else block
        return quantity(self.rpc.call("eth_getBalance", address, tag))

    def nonce(self, address: str, block: str = "latest") -> int:
        return quantity(self.rpc.call("eth_getTransactionCount", address, block))

    def block(self, number: int | str = "latest", full: bool = False) -> dict[str, Any]:
        tag = hex(number) if isinstance(number, int) else number
        result = self.rpc.call("eth_getBlockByNumber", tag, full)
        assert result is not None, f"block {tag} not found"
        return result

    def base_fee(self) -> int:
        return quantity(self.block()["baseFeePerGas"])

    def fill(self, sender: LocalAccount, tx: dict[str, Any]) -> dict[str, Any]:
        """Complete an EIP-1559 transaction with nonce, chain id, gas and fees from the node."""
        filled = {"chainId": self.chain_id, "value": 0, **tx}
        filled.setdefault("nonce", self.nonce(sender.address, "pending"))
        if "gasPrice" not in filled:
            tip = quantity(self.rpc.call("eth_maxPriorityFeePerGas"))
            filled.setdefault("maxPriorityFeePerGas", tip)
            filled.setdefault("maxFeePerGas", 2 * self.base_fee() + tip)
        if "gas" not in filled:
            estimate_args = {"from": sender.address, "value": hex(filled["value"])}
            if filled.get("to"):
                estimate_args["to"] = filled["to"]
            if filled.get("data"):
                estimate_args["data"] = filled["data"]
            filled["gas"] = quantity(self.rpc.call("eth_estimateGas", estimate_args))
        return filled

    def sign(self, sender: LocalAccount, tx: dict[str, Any]) -> str:
        """Return the 0x-prefixed raw signed transaction."""
        return "0x" + sender.sign_transaction(self.fill(sender, tx)).raw_transaction.hex()

    def send(self, sender: LocalAccount, tx: dict[str, Any]) -> str:
        """Sign and send; return the transaction hash the node reported."""
        return self.rpc.call("eth_sendRawTransaction", self.sign(sender, tx))

    def wait(self, tx_hash: str) -> dict[str, Any]:
        deadline = time.monotonic() + RECEIPT_TIMEOUT_S
        while True:
            receipt = self.rpc.call("eth_getTransactionReceipt", tx_hash)
            if receipt is not None:
                return receipt
            if time.monotonic() > deadline:
                raise AssertionError(f"no receipt for {tx_hash} within {RECEIPT_TIMEOUT_S} s")
            time.sleep(0.02)

    def transact(self, sender: LocalAccount, tx: dict[str, Any]) -> dict[str, Any]:
        """Sign, send, wait; return the receipt."""
        return self.wait(self.send(sender, tx))

    def mine(self) -> dict[str, Any]:
        before = self.block_number()
        self.rpc.call("evm_mine")
        block = self.block()
        assert quantity(block["number"]) == before + 1, "evm_mine did not add exactly one block"
        return block


# ---------------------------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """A running JSON-RPC node under test."""

    kind: str
    url: str
    chain_id: int
    pid: int
    block_time: int = 0  # seconds between blocks; 0 = a block per transaction


def _assert_pid_gone(pid: int, kind: str, wait_s: float = 5.0) -> None:
    """Wait up to `wait_s` for `pid` to vanish (zombies included); kill it and fail if it won't."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if state != "Z":
        os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"{kind} process {pid} is still present after shutdown (state {state})")


@contextmanager
def _anvil(workdir: Path, block_time: int = 0) -> Iterator[Node]:
    """anvil on a free loopback port; terminated, reaped and checked gone on exit."""
    with running_anvil(workdir, block_time=block_time, chain_id=ANVIL_CHAIN_ID) as anvil:
        yield Node("anvil", anvil.url, ANVIL_CHAIN_ID, anvil.pid, block_time)


@contextmanager
def _devnet(workdir: Path, block_time: int = 0) -> Iterator[Node]:
    """`veriplex devnet up` (no contract deployment) through the devnet's own test helper."""
    with running_devnet(workdir, block_time=float(block_time), deploy=False) as handle:
        yield Node("devnet", handle.url, handle.chain_id, handle.pid, block_time)
    _assert_pid_gone(handle.pid, "devnet")


NODE_KINDS = {"anvil": _anvil, "devnet": _devnet}


@pytest.fixture(
    scope="session",
    params=[pytest.param("anvil", marks=pytest.mark.anvil), "devnet"],
)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    """The node under test; every test here runs once per kind, one node process at a time."""
    with NODE_KINDS[request.param](tmp_path_factory.mktemp(request.param)) as running:
        yield running


@pytest.fixture(
    scope="module",
    params=[pytest.param("anvil", marks=pytest.mark.anvil), "devnet"],
)
def interval_node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    """A second node of each kind that mines every INTERVAL_BLOCK_TIME_S seconds (not per tx)."""
    workdir = tmp_path_factory.mktemp(f"{request.param}-interval")
    with NODE_KINDS[request.param](workdir, block_time=INTERVAL_BLOCK_TIME_S) as running:
        yield running


@pytest.fixture(scope="session")
def rpc(node: Node) -> Iterator[Rpc]:
    client = Rpc(node.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def dev_accounts() -> list[LocalAccount]:
    return [
        Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}")
        for i in range(DEV_ACCOUNT_COUNT)
    ]


@pytest.fixture(scope="session")
def shared_chain(rpc: Rpc, node: Node, dev_accounts: list[LocalAccount]) -> Chain:
    return Chain(rpc, node.chain_id, dev_accounts)


@pytest.fixture
def chain(shared_chain: Chain) -> Iterator[Chain]:
    """The node's chain, with every change the test makes undone afterwards (evm_snapshot/revert)."""
    snapshot = shared_chain.rpc.call("evm_snapshot")
    yield shared_chain
    assert shared_chain.rpc.call("evm_revert", snapshot) is True, "evm_revert failed in teardown"
    # A transaction left in the pool would be mined into a later test: catch it here instead.
    for account in shared_chain.accounts:
        latest = shared_chain.nonce(account.address, "latest")
        pending = shared_chain.nonce(account.address, "pending")
        assert pending == latest, f"{account.address} has pending transactions after the test"


# ---------------------------------------------------------------------------------------------
# Probe contract
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """The probe contract deployed once per node (before any snapshot, so it outlives reverts)."""

    address: str
    abi: list[dict[str, Any]]
    runtime: str
    slots: dict[str, int]
    owner: str
    initial_total: int
    deploy_receipt: dict[str, Any]
    contract: Any = field(repr=False)  # web3 Contract bound to no provider: encoding/decoding only

    def data(self, fn: str, *args: Any) -> str:
        return self.contract.encode_abi(fn, list(args))

    def decode(self, fn: str, output: str) -> Any:
        """Decode the return data of `fn` (one value unwrapped, several as a tuple)."""
        (entry,) = [e for e in self.abi if e.get("type") == "function" and e["name"] == fn]
        decoded = abi_decode([o["type"] for o in entry["outputs"]], bytes.fromhex(output[2:]))
        return decoded[0] if len(decoded) == 1 else decoded


@pytest.fixture(scope="session")
def probe_build() -> dict[str, Any]:
    return vyper.compile_code(
        PROBE_SOURCE.read_text(),
        output_formats=["abi", "bytecode", "bytecode_runtime", "layout"],
        settings=VyperSettings(evm_version="cancun"),
    )


def _deploy_probe(chain: Chain, build: dict[str, Any]) -> Probe:
    owner = chain.accounts[0]
    initial_total = 7
    offline = Web3().eth.contract(abi=build["abi"], bytecode=build["bytecode"])
    deploy_data = offline.constructor(initial_total).data_in_transaction
    receipt = chain.transact(owner, {"data": deploy_data})
    assert quantity(receipt["status"]) == 1, receipt
    address = Web3.to_checksum_address(receipt["contractAddress"])
    slots = {name: info["slot"] for name, info in build["layout"]["storage_layout"].items()}
    return Probe(
        address=address,
        abi=build["abi"],
        runtime=build["bytecode_runtime"],
        slots=slots,
        owner=owner.address,
        initial_total=initial_total,
        deploy_receipt=receipt,
        contract=Web3().eth.contract(address=address, abi=build["abi"]),
    )


@pytest.fixture(scope="session")
def probe(shared_chain: Chain, probe_build: dict[str, Any]) -> Probe:
    return _deploy_probe(shared_chain, probe_build)


@pytest.fixture(scope="module")
def interval_chain(interval_node: Node, dev_accounts: list[LocalAccount]) -> Iterator[Chain]:
    """`Chain` over `interval_node` (no snapshot isolation: the module owns that node)."""
    client = Rpc(interval_node.url)
    yield Chain(client, interval_node.chain_id, dev_accounts)
    client.close()


@pytest.fixture(scope="module")
def interval_probe(interval_chain: Chain, probe_build: dict[str, Any]) -> Probe:
    return _deploy_probe(interval_chain, probe_build)
