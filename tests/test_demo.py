"""`make demo`'s scenario runs to the end on a fresh devnet and observes what it should."""

import pytest

from veriplex.demo_chain import run_scenario

ETH = 10**18


@pytest.mark.slow
def test_demo_scenario_registers_stakes_pays_withdraws_and_survives_a_restart(tmp_path):
    seen = run_scenario(tmp_path / "demo")
    assert seen["registered"] is True
    assert seen["deposit_wei"] == ETH
    assert seen["withdrawn_status"]["stake_wei"] == 0
    assert seen["withdrawn_status"]["unbonding"] == 0
    assert seen["block_after_restart"] == seen["block_before_restart"] > 0
    assert seen["deposit_after_restart"] == ETH
