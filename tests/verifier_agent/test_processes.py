"""Real `veriplex node serve` processes with their verifier agents on a real devnet: two workers
serve a perturbed model (`--perturb-weights`), two honest workers are drawn to check the sampled
request; the agents inside the serve processes re-execute, vote, open, and as keepers finalize and
refund — the cheat is slashed and the client refunded with no test code acting on the task."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from coincurve import PrivateKey

from contracts.verification import TaskStatus
from devnet.process import running_devnet

from .world import ETH, HW, Miner, Node, NodeSpec, World, params

pytestmark = pytest.mark.slow


class Worker:
    """`python -m node.cli.serve` with the chain directory (and so the verifier agent) on."""

    def __init__(self, model: Path, spec: NodeSpec, url: str, manifest: Path, workdir: Path):
        self.spec, self.key = spec, PrivateKey(secrets.token_bytes(32))
        workdir.mkdir(parents=True)
        key_file = workdir / "operator.key"
        key_file.touch(mode=0o600)
        key_file.write_text(self.key.secret.hex())
        args = [sys.executable, "-m", "node.cli.serve", "--model", str(model), "--layers",
                f"{spec.layers[0]}:{spec.layers[1]}", "--port", "0", "--operator-key-file", str(key_file),
                "--store-dir", str(workdir / "store"), "--threads", "1"]
        if spec.perturb:
            args += ["--perturb-weights", str(spec.perturb)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
        env.update(VERIPLEX_HOME=str(workdir / "home"), VERIPLEX_CHAIN__RPC_URL=url,
                   VERIPLEX_CHAIN__MANIFEST=str(manifest), VERIPLEX_VERIFICATION__AGENT_POLL_S="0.2",
                   VERIPLEX_DATAPLANE__DIRECTORY_TTL_S="0", OMP_WAIT_POLICY="PASSIVE",
                   PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env)
        self.lines: list[str] = []
        self.port = 0
        self.ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            m = re.search(r" on 127\.0\.0\.1:(\d+) as ", line)
            if m:
                self.port = int(m.group(1))
                self.ready.set()

    def wait_ready(self, timeout_s: float = 90) -> None:
        if not self.ready.wait(timeout_s):
            raise RuntimeError("worker did not start:\n" + "\n".join(self.lines[-30:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def test_serve_processes_catch_slash_and_refund_a_perturbed_worker(tiny_model, tmp_path):
    specs = [NodeSpec((0, 4), perturb=0.02), NodeSpec((4, 8), perturb=0.02), NodeSpec((0, 4)),
             NodeSpec((4, 8))]
    with running_devnet(tmp_path / "devnet") as dn, Miner(dn.url):
        world = World.deploy(dn.url, tiny_model, tmp_path, params(committee_size=3))
        workers = [Worker(tiny_model, s, dn.url, world.manifest, tmp_path / f"worker-{i}")
                   for i, s in enumerate(specs)]
        try:
            for w in workers:
                w.wait_ready()
            for w in workers:
                node = Node(w.spec, world.fresh(), w.key)
                world.chain.transfer(node.operator, ETH)  # gas for its agent's transactions
                world.chain.node_registry.register(node.operator, f"http://127.0.0.1:{w.port}", HW, ETH,
                                                   sender=node.owner)
                node.server = SimpleNamespace(address=node.operator, host="127.0.0.1", port=w.port,
                                              layers=w.spec.layers)
                world.nodes.append(node)
            opened = asyncio.run(world.request_and_open(world.nodes[:2], [5, 17, 99, 3, 250, 41], 4))
            ver = world.chain.verification
            deadline = time.monotonic() + 150
            while ver.task(opened.task_id).status is not TaskStatus.FRAUD:  # refunded at finalize
                if time.monotonic() > deadline:
                    out = "\n".join(line for w in workers for line in w.lines[-15:])
                    raise AssertionError(f"task {ver.task(opened.task_id)} not convicted; workers:\n{out}")
                time.sleep(0.5)
            b = opened.open_block
            t = ver.task(opened.task_id)
            assert sum(e.args["amount"] for e in world.events("StageSlashed", b)) == ETH // 2
            assert world.chain.payments.deposit_of(opened.client.address) == (
                opened.deposit_before_refund + opened.charge)
            # every eligible node sits (the pipeline's other stage too when stage 0 is checked:
            # its agent re-executes stage 0 on a clean shard) and every member revealed
            (sel,) = world.events("CommitteeSelected", b)
            seated = set(sel.args["members"])
            assert {n.operator for n in world.nodes[2:]} <= seated
            assert {e.args["member"] for e in world.events("VerdictRevealed", b)} == seated
            assert not world.events("MemberSlashed", b)
            # The honest workers' own output says what their agents did.
            honest_out = "\n".join(line for w in workers[2:] for line in w.lines)
            assert f"task {t.task_id} round 0: verdict FRAUD" in honest_out
            assert "WARNING: added N(0, 0.02^2) noise" in "\n".join(workers[0].lines)
        finally:
            for w in workers:
                w.stop()
