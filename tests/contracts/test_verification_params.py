"""`veriplex params check` and its pure core `verifier.params`: the equilibrium margin
p_stage · detection · slash − gain, its sign at the break-even sample rate, bad inputs refused,
and the command reading the deployed parameters from a real chain."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace

import pytest
from click.testing import CliRunner

from contracts.client import Chain, dev_key
from contracts.deploy import DeployParams, deploy_all
from contracts.verification import VerificationParams
from protocol.settings import DEV_MNEMONIC
from tests.support.contracts import dev_signer
from verifier.params import MarginInputs, ParamsError, equilibrium_margin
from veriplex.cli import cli

BASE = MarginInputs(
    sample_bps=1_000,
    stage_slash_wei=10**18,
    protocol_fee_bps=500,
    verifier_share_bps=1_000,
    stages=2,
    charge_wei=10**15,
    detection=0.99,
    compute_cost_fraction=0.5,
)


def test_margin_is_expected_penalty_minus_the_stage_compute_saving():
    m = equilibrium_margin(BASE)
    p_stage = BASE.sample_bps / 10_000 / BASE.stages
    assert m.expected_penalty_wei == pytest.approx(p_stage * BASE.detection * BASE.stage_slash_wei)
    operators = 1 - (BASE.protocol_fee_bps + BASE.verifier_share_bps) / 10_000
    gain = BASE.charge_wei * operators / BASE.stages * BASE.compute_cost_fraction
    assert m.gain_wei == pytest.approx(gain)
    assert m.margin_wei == pytest.approx(m.expected_penalty_wei - gain) and m.positive


def test_margin_changes_sign_at_the_break_even_sample_rate():
    costly = replace(BASE, charge_wei=10**18)  # a charge as large as the slash
    be = equilibrium_margin(costly).break_even_sample_bps
    assert 0 < be < 10_000
    assert not equilibrium_margin(replace(costly, sample_bps=int(be) - 1)).positive
    assert equilibrium_margin(replace(costly, sample_bps=int(be) + 1)).positive
    assert not equilibrium_margin(replace(BASE, sample_bps=0)).positive


@pytest.mark.parametrize(
    "change, words",
    [
        ({"sample_bps": 10_001}, "sample_bps (10001)"),
        ({"stages": 0}, "stages (0)"),
        ({"detection": 1.5}, "detection (1.5)"),
        ({"compute_cost_fraction": -0.1}, "compute_cost_fraction (-0.1)"),
        ({"protocol_fee_bps": 9_500}, "must not exceed"),
    ],
)
def test_margin_refuses_inputs_that_make_no_sense(change, words):
    with pytest.raises(ParamsError, match=re.escape(words)):
        equilibrium_margin(replace(BASE, **change))


@pytest.mark.anvil
def test_params_check_reads_the_deployed_parameters(anvil_url, tmp_path):
    manifest = tmp_path / "m.json"
    vp = VerificationParams(sample_bps=500, stage_slash_wei=3 * 10**18)
    deploy_all(anvil_url, dev_key(0, DEV_MNEMONIC), manifest, DeployParams(verification=vp))
    chain = Chain.connect(anvil_url, manifest, signer=dev_signer(0))
    chain.model_registry.register_model(
        f"p-{time.time_ns()}", 4, 64, b"\x01" * 32, b"\x02" * 32, 10**9, 2 * 10**9
    )
    base = ["--rpc-url", anvil_url, "--manifest", str(manifest), "params", "check"]
    res = CliRunner().invoke(cli, [*base, "--json", "--tokens-in", "100", "--tokens-out", "10"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    (model,) = data["models"]
    expect = equilibrium_margin(
        MarginInputs(500, 3 * 10**18, 500, 1_000, 2, 100 * 10**9 + 10 * 2 * 10**9)
    )
    assert model["inputs"]["sample_bps"] == 500 and model["inputs"]["stage_slash_wei"] == 3 * 10**18
    assert model["margin_wei"] == pytest.approx(expect.margin_wei) and data["positive"]

    text = CliRunner().invoke(cli, [*base, "--charge-wei", str(10**21)])
    assert text.exit_code == 1 and "NOT POSITIVE" in text.output

    bad = CliRunner().invoke(cli, [*base, "--detection", "2"])
    assert bad.exit_code == 2 and "detection" in bad.output


@pytest.mark.parametrize(
    "change, words",
    [
        ({"sample_bps": 10_001}, "sample_bps (10001) must be 0..10000"),
        ({"committee_size": 0}, "committee_size (0) must be 1..16"),
        ({"randomness_delay": 0}, "randomness_delay (0) must be >= 1"),
        ({"max_bad": 32}, "max_bad (32) must be 0..31"),
    ],
)
def test_deploy_params_refuse_verification_params_the_contract_would(change, words):
    from contracts.errors import ContractsError

    bad = DeployParams(verification=replace(VerificationParams(), **change))
    with pytest.raises(ContractsError, match=re.escape(words)):
        bad.validate()


def test_settings_defaults_are_the_deployed_defaults():
    from protocol.settings import Settings

    assert VerificationParams.from_settings(Settings().verification) == VerificationParams()
