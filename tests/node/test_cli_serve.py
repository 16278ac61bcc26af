"""`veriplex node serve` argument checks: the operator key must come from exactly one safe place;
every bad model, layer range, port or deployment ends in a one-line error, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from veriplex.cli import cli


def serve(tmp_path: Path, model: Path, *extra: str):
    return CliRunner().invoke(cli, ["node", "serve", "--model", str(model), "--store-dir",
                                    str(tmp_path / "store"), *extra],
                              env={"VERIPLEX_HOME": str(tmp_path / "home")})


def test_serve_needs_exactly_one_operator_key_source(tmp_path, tiny_llama):
    r = serve(tmp_path, tiny_llama, "--layers", "0:4")
    assert r.exit_code != 0 and "exactly one of --operator (wallet) or --operator-key-file" in r.output


def test_serve_refuses_a_key_file_others_can_read(tmp_path, tiny_llama):
    key = tmp_path / "op.key"
    key.write_text("11" * 32)
    key.chmod(0o644)
    r = serve(tmp_path, tiny_llama, "--layers", "0:4", "--operator-key-file", str(key))
    assert r.exit_code != 0 and "readable by others (mode 644)" in r.output
    assert "11" * 32 not in r.output  # the key itself is never echoed


def test_serve_rejects_an_empty_layer_range(tmp_path, tiny_llama):
    r = serve(tmp_path, tiny_llama, "--layers", "4:4")
    assert r.exit_code != 0 and "layer range [4, 4) is empty" in r.output


def test_static_directory_needs_an_allow_list(tmp_path, tiny_llama):
    key = tmp_path / "op.key"
    key.touch(mode=0o600)
    key.write_text("11" * 32)
    r = serve(tmp_path, tiny_llama, "--layers", "0:4", "--operator-key-file", str(key),
              "--directory", "static")
    assert r.exit_code != 0 and "--directory static needs at least one --allow" in r.output


def _static(tmp_path: Path) -> list[str]:
    key = tmp_path / "op.key"
    key.touch(mode=0o600)
    key.write_text("11" * 32)
    return ["--operator-key-file", str(key), "--directory", "static",
            "--allow", "0x" + "01" * 20, "--gateway", "0x" + "02" * 20, "--port", "0"]


def _one_line_error(r) -> str:
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit), r.exception  # a click error, not a traceback
    assert "Traceback" not in r.output
    return r.output


def test_serve_refuses_layers_beyond_the_model_in_one_line(tmp_path, tiny_llama):
    out = _one_line_error(serve(tmp_path, tiny_llama, "--layers", "0:99", *_static(tmp_path)))
    assert "layer range [0, 99) is invalid for a model of 8 layers" in out


def test_serve_refuses_a_directory_that_is_not_a_checkpoint(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _one_line_error(serve(tmp_path, empty, "--layers", "0:2", *_static(tmp_path)))
    assert "no config.json" in out


@pytest.mark.timeout(60)
def test_serve_on_a_port_in_use_says_so(tmp_path, tiny_llama):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = [*_static(tmp_path)[:-2], "--port", str(port), "--host", "127.0.0.1"]
        out = _one_line_error(serve(tmp_path, tiny_llama, "--layers", "0:4", *args))
    assert f"cannot listen on 127.0.0.1:{port}" in out


def test_serve_against_the_chain_without_a_deployment_says_so(tmp_path, tiny_llama):
    key = _static(tmp_path)[:2]
    out = _one_line_error(serve(tmp_path, tiny_llama, "--layers", "0:4", *key, "--no-verify"))
    assert "no deployment manifest" in out


@pytest.mark.parametrize(("flag", "least"), [("--micro-batches", 0), ("--prefill-chunk", 1),
                                             ("--max-decode-rows", 1)])
def test_serve_refuses_a_batching_knob_below_its_least_in_one_line(tmp_path, tiny_llama, flag, least):
    r = serve(tmp_path, tiny_llama, "--layers", "0:4", *_static(tmp_path), flag, str(least - 1))
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"Invalid value for '{flag}': {least - 1} is not in the range x>={least}." in r.output


def test_a_batching_setting_below_one_is_refused_in_one_line(tmp_path, tiny_llama):
    r = CliRunner().invoke(cli, ["node", "serve", "--model", str(tiny_llama), "--layers", "0:4",
                                 *_static(tmp_path)],
                           env={"VERIPLEX_HOME": str(tmp_path / "home"),
                                "VERIPLEX_DATAPLANE__MICRO_BATCHES": "-1"})
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    assert "micro_batches" in r.output and "greater than or equal to 0" in r.output


def test_batching_options_reject_values_below_one():
    from node.build import NodeConfigError, NodeOptions

    with pytest.raises(NodeConfigError, match=r"prefill_chunk \(0\) must be an integer >= 1"):
        NodeOptions(Path("."), b"", (0, 4), prefill_chunk=0)


@pytest.mark.timeout(90)
def test_serve_batches_with_the_flags_given_and_settings_for_the_rest(tmp_path, tiny_llama):
    """The flags reach the stage server (it reports what it runs with); a knob without a flag comes
    from settings (here the environment)."""
    import os
    import subprocess
    import sys
    import time

    argv = [sys.executable, "-m", "veriplex.cli", "node", "serve", "--model", str(tiny_llama),
            "--layers", "0:4", *_static(tmp_path), "--store-dir", str(tmp_path / "store"),
            "--threads", "1", "--micro-batches", "3", "--prefill-chunk", "8"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERIPLEX_")}
    env.update(VERIPLEX_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1",
               VERIPLEX_DATAPLANE__MAX_DECODE_ROWS="16")
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while "batching:" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ("batching: up to 16 decode rows and 8 prefill rows per step, 3 micro-batches"
                in log.read_text()), log.read_text()
    finally:
        proc.terminate()
        proc.wait(15)
