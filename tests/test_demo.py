"""`make demo`'s scenarios run to the end on fresh state and observe what they should.

The main job (`veriplex demo`) runs here on the tiny model — `make demo` runs it on SmolLM2 — as a
user runs it, in its own process: it must exit 0, which it does only when a request was verified
PASSED and the perturbed worker was slashed, and print each request's explorer URL. The chain-only
scenario (`veriplex demo chain`) is checked through what it returns."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.support.chain import ETH
from veriplex.demo_chain import run_scenario


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_on_the_tiny_model_slashes_evicts_and_replaces_the_cheater_and_serves_on(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
    env.update(VERIPLEX_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "veriplex.cli", "demo", "--model", "tiny",
                           "--data-dir", str(tmp_path / "demo"), "--timeout-s", "240", "--json"],
                          env=env, capture_output=True, text=True, timeout=580)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    # The network healed: the cheater convicted, slashed, evicted in a new epoch where a standby
    # took its layers, and requests served after that verified PASSED; no keeper tx reverted.
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["slashed"] and summary["evicted"] == summary["slashed"]
    assert summary["new_epoch"] > summary["epoch_before"] and summary["promoted"]
    assert not set(summary["evicted"]) & {r[0] for r in summary["new_epoch_rows"]}
    # healed in place: every surviving worker kept its range; the standby took the cheater's
    before = {tuple(r) for r in summary["epoch_rows_before"]}
    after = {tuple(r) for r in summary["new_epoch_rows"]}
    assert {r for r in before if r[0] not in summary["evicted"]} <= after
    assert {r[1:] for r in after - before} == {r[1:] for r in before
                                                 if r[0] in summary["evicted"]}
    assert set(summary["passed_after_eviction"]) <= set(summary["served_after_eviction"])
    assert summary["passed_after_eviction"]
    assert summary["reverted_keeper_tx"] == 0, summary["reverted_keeper_txs"]
    assert "requests verified, the cheater slashed" in out
    passed = re.findall(r"^   (0x[0-9a-f]{64})  \[(?:chat|stream)\] PASSED", out, re.M)
    assert passed, out[-4000:]
    explorer = re.search(r"^  explorer\s+(http://\S+)", out, re.M)[1]
    for rid in passed:  # the printed URL works: the explorer's page shows the same verdict
        assert f"explorer: {explorer}/request/{rid}  [passed]" in out
    assert re.search(r"\(the PERTURBED worker\) slashed [0-9.]+ ETH", out)
    # The escrow of a batch is released after its window and the honest pipeline owner is paid.
    assert re.search(r"batches released from escrow: \d", out), out[-3000:]
    assert re.search(r"\(honest\): its owner's credit [1-9][0-9.]* gwei", out), out[-3000:]
    assert "stopping" in out and "Traceback" not in out


@pytest.mark.slow
def test_demo_chain_scenario_registers_stakes_pays_withdraws_and_survives_a_restart(tmp_path):
    seen = run_scenario(tmp_path / "demo")
    assert seen["registered"] is True
    assert seen["deposit_wei"] == ETH
    assert seen["withdrawn_status"]["stake_wei"] == 0
    assert seen["withdrawn_status"]["unbonding"] == 0
    assert seen["block_after_restart"] == seen["block_before_restart"] > 0
    assert seen["deposit_after_restart"] == ETH
