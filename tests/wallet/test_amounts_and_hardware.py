"""Pure helpers of the chain-facing CLI: ETH amounts, durations, and the hardware profile."""

from __future__ import annotations

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.cli.chain import format_eth, parse_duration, parse_eth
from node.runtime.hardware import Profile, check, detect, link_speed_mbps, resolve
from tests.support.chain import ETH


def test_amounts_are_whole_eth_with_decimals_converted_exactly_to_wei():
    assert parse_eth("1") == ETH
    assert parse_eth("2.5") == 5 * ETH // 2
    assert parse_eth("0.000000000000000001") == 1
    assert parse_eth(" 1e-3 ") == ETH // 1000


@pytest.mark.parametrize("bad", ["0", "-1", "0.0", "-0.5", "abc", "", "nan", "inf", "1e-19",
                                 "0.0000000000000000001", "1,5"])
def test_zero_negative_non_numeric_and_sub_wei_amounts_are_rejected(bad):
    with pytest.raises(click.BadParameter):
        parse_eth(bad)


@given(st.integers(min_value=1, max_value=10**30))
def test_formatting_then_parsing_an_amount_gives_back_the_same_wei(wei):
    assert parse_eth(format_eth(wei).removesuffix(" ETH")) == wei


def test_format_eth_drops_trailing_zeros():
    assert format_eth(ETH) == "1 ETH" and format_eth(15 * ETH // 10) == "1.5 ETH"
    assert format_eth(0) == "0 ETH" and format_eth(1) == "0.000000000000000001 ETH"


def test_durations_accept_units_and_combinations():
    assert parse_duration("3600") == 3600
    assert parse_duration("90m") == 5400
    assert parse_duration("1d12h") == 129_600
    assert parse_duration("2w") == 14 * 86_400


@pytest.mark.parametrize("bad", ["0", "0d", "", "-5m", "1x", "d", "1d 2h", "1.5h", "12hh"])
def test_malformed_or_zero_durations_are_rejected(bad):
    with pytest.raises(click.BadParameter):
        parse_duration(bad)


def test_detected_profile_has_positive_measured_figures():
    p = detect()
    check(p)
    assert p.tflops > 0 and p.mem_bw_gbps > 0 and p.vram_mib > 0 and p.gpu


def test_flags_override_every_detected_field_and_skip_measuring_when_all_are_given():
    p = resolve({"gpu": "NVIDIA L40S", "vram_mib": 46_068, "tflops": 362.05,
                 "mem_bw_gbps": 864.0, "net_bw_mbps": 25_000, "region": "us-east"})
    assert p == Profile("NVIDIA L40S", 46_068, 362.05, 864.0, 25_000, "us-east")
    assert p.to_chain().tflops_milli == 362_050


def test_a_slow_but_measured_rate_never_registers_as_zero():
    busy = Profile("cpu", 1024, 0.0004, 0.4, 100, "eu")  # a loaded CPU box's measurement
    hw = busy.to_chain()
    assert (hw.tflops_milli, hw.mem_bw_gbps) == (1, 1)


def test_profiles_the_registry_cannot_store_are_rejected_with_the_value_quoted():
    good = Profile("GPU", 1, 1.0, 1.0, 0, "eu")
    for field, value in (("gpu", "x" * 65), ("gpu", ""), ("region", "r" * 33),
                         ("vram_mib", 0), ("tflops", 0.0), ("net_bw_mbps", -1)):
        with pytest.raises(ValueError, match=str(value)[:10] if value != "" else "gpu name"):
            check(Profile(**{**good.as_json(), field: value}))


def test_link_speed_is_the_fastest_reported_non_loopback_interface(tmp_path):
    for name, speed in (("lo", "100000"), ("eth0", "10000"), ("eth1", "25000"), ("wg0", "")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "speed").write_text(speed)
    (tmp_path / "ifb0").mkdir()  # no speed file at all
    assert link_speed_mbps(tmp_path) == 25_000
    assert link_speed_mbps(tmp_path / "missing") == 0
