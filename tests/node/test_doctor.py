"""`veriplex node doctor`: every check passes on a box that is ready (a real devnet, a node
registered with a reachable endpoint, the registered model's checkpoint, private keystore files,
a synced clock), and each check fails, with its fix, when its one thing is wrong."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from eth_account import Account

from contracts.client import Chain, dev_key
from contracts.node_registry import Hardware
from contracts.rpc import Signer
from devnet.process import DevnetHandle, running_devnet
from node.cli import doctor as doc
from node.runtime.models.hashing import model_hashes
from node.runtime.models.tiny import build_tiny_model
from node.wallet.keystore import Keystore
from protocol.settings import DEV_MNEMONIC, load_settings
from veriplex.cli import cli

ETH = 10**18
PASSWORD = "doctor-test"


@dataclass
class Box:
    devnet: DevnetHandle
    home: Path
    keystore: Keystore
    model: Path
    other_model: Path
    model_id: int
    listener: socket.socket

    def chain(self, signer: Signer | None = None) -> Chain:
        return Chain.connect(self.devnet.url, self.devnet.manifest_path, signer=signer)

    def register(self, index: int, *, vram_mib: int = 1024, endpoint: str | None = None,
                 stake: int = 2 * ETH) -> str:
        """Dev account `index` as owner `owner<index>` with a new operator `op<index>`."""
        owner = Signer.from_key(dev_key(index, DEV_MNEMONIC))
        op_key = secrets.token_bytes(32)
        self.keystore.import_key(f"owner{index}", bytes(owner.account.key), PASSWORD)
        self.keystore.import_key(f"op{index}", op_key, PASSWORD)
        port = self.listener.getsockname()[1]
        self.chain(owner).node_registry.register(
            Account.from_key(op_key).address, endpoint or f"http://127.0.0.1:{port}",
            Hardware("CPU test", vram_mib, 1000, 10, 1000, "local"), stake)
        return f"owner{index}"

    def run(self, name: str, *extra: str) -> tuple[int, dict]:
        args = ["--rpc-url", self.devnet.url, "--manifest", str(self.devnet.manifest_path),
                "--keystore-dir", str(self.keystore.directory),
                "node", "doctor", name, "--model", str(self.model), "--json", *extra]
        out = CliRunner().invoke(cli, args, env={"VERIPLEX_HOME": str(self.home)})
        return out.exit_code, json.loads(out.output)

    def check(self, name: str, which: str, *extra: str) -> dict:
        _, report = self.run(name, *extra)
        return next(c for c in report["checks"] if c["name"] == which)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    work = tmp_path_factory.mktemp("doctor")
    with running_devnet(work / "devnet") as dn, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the node's data-plane port: connections are accepted by the kernel
        model = build_tiny_model(work / "tiny", arch="llama", seed=0)
        other = build_tiny_model(work / "tiny-other", arch="llama", seed=1)
        h = model_hashes(model)
        admin = Signer.from_key(dev_key(0, DEV_MNEMONIC))
        chain = Chain.connect(dn.url, dn.manifest_path, signer=admin)
        model_id = chain.model_registry.register_model(
            f"tiny-{secrets.token_hex(3)}", 8, 256, h.weights_root, h.tokenizer_hash, 1, 1)
        ks = Keystore(work / "keystores", scrypt_n=2**10)
        b = Box(dn, work / "home", ks, model, other, model_id, listener)
        b.register(1)
        yield b


def test_a_ready_box_passes_every_check_with_one_line_each(box: Box) -> None:
    code, report = box.run("owner1")
    assert [c["name"] for c in report["checks"]] == [
        "device", "model", "endpoint", "keystore", "stake", "clock"]
    assert code == 0 and report["ok"], report
    assert all(c["fix"] is None for c in report["checks"])
    args = ["--rpc-url", box.devnet.url, "--manifest", str(box.devnet.manifest_path),
            "--keystore-dir", str(box.keystore.directory), "node", "doctor", "owner1",
            "--model", str(box.model)]
    text = CliRunner().invoke(cli, args, env={"VERIPLEX_HOME": str(box.home)}).output
    lines = text.strip().splitlines()
    assert len(lines) == 7 and all(line.startswith("ok ") for line in lines[:6])
    assert lines[-1] == "6 of 6 checks passed: ready to join"


def test_device_fails_when_the_node_registered_more_memory_than_it_has(box: Box) -> None:
    name = box.register(2, vram_mib=2**40 // 2**20)  # 1 TiB
    c = box.check(name, "device")
    assert not c["ok"] and "registered 1048576 MiB" in c["detail"]
    assert c["fix"].startswith(f"veriplex node update {name} --vram-mib ")


def test_model_fails_for_a_checkpoint_that_is_not_the_registered_one(box: Box) -> None:
    c = box.check("owner1", "model", "--model", str(box.other_model))
    assert not c["ok"] and "hashes to weights root" in c["detail"]
    assert f"model {box.model_id}'s exact checkpoint" in c["fix"]
    missing = box.check("owner1", "model", "--model", str(box.home / "nowhere"))
    assert not missing["ok"] and "no checkpoint at" in missing["detail"]


def test_endpoint_fails_when_nothing_listens_there(box: Box) -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    name = box.register(3, endpoint=f"http://127.0.0.1:{dead}")
    c = box.check(name, "endpoint")
    assert not c["ok"] and f"127.0.0.1:{dead} is not reachable" in c["detail"]
    assert "veriplex node serve" in c["fix"] and f"port {dead}" in c["fix"]


def test_keystore_fails_when_the_operator_key_file_is_readable_by_others(box: Box) -> None:
    name = box.register(4)
    path = box.keystore.path("op4")
    path.chmod(0o644)
    c = box.check(name, "keystore", "--operator", "op4")
    assert not c["ok"] and "readable by others (mode 644)" in c["detail"]
    assert c["fix"] == f"chmod 600 {path}"
    path.chmod(0o600)
    assert box.check(name, "keystore", "--operator", "op4")["ok"]


def test_stake_fails_for_an_unregistered_owner_and_for_a_node_that_is_unbonding(box: Box) -> None:
    owner = Signer.from_key(dev_key(6, DEV_MNEMONIC))
    box.keystore.import_key("owner6", bytes(owner.account.key), PASSWORD)
    c = box.check("owner6", "stake")
    assert not c["ok"] and "has no registered node" in c["detail"]
    assert c["fix"].startswith("veriplex node register --owner owner6")
    name = box.register(5)
    signer = Signer.from_key(dev_key(5, DEV_MNEMONIC))
    box.chain(signer).node_registry.request_unbond(ETH)
    c = box.check(name, "stake")
    assert not c["ok"] and "unbonding 1 ETH" in c["detail"]
    assert f"veriplex node withdraw {name}" in c["fix"]


def _context(box: Box) -> doc.Context:
    settings = load_settings(None, chain={"rpc_url": box.devnet.url,
                                          "manifest": box.devnet.manifest_path},
                             wallet={"keystore_dir": box.keystore.directory})
    c = doc.Context(settings, box.keystore.address("owner1"), "owner1", None, box.model, None,
                    30.0)
    c.chain = doc.connect(settings)
    return c


def test_clock_fails_when_this_clock_is_behind_the_chain(box: Box) -> None:
    c = doc.check_clock(_context(box), now=lambda: time.time() - 3600)
    assert not c.ok and "ahead of this clock" in c.detail and "ntp" in (c.fix or "")


def test_clock_fails_when_this_clock_is_ahead_of_the_rpc_server(box: Box) -> None:
    c = doc.check_clock(_context(box), now=lambda: time.time() + 3600)
    # the head looks an hour old: the RPC server's Date tells a fast clock from an idle chain
    assert not c.ok and "off the RPC server's" in c.detail and "ntp" in (c.fix or "")
    assert doc.check_clock(_context(box)).ok
