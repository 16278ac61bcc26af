"""`veriplex audit` on bad input: missing, unreadable or malformed receipts, an unreachable RPC and
an unknown deployment exit 2 with one `error:` line and no traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from verifier.errors import ReceiptError
from verifier.receipt import parse_receipt

GOOD = {"request_id": "0x" + "11" * 32, "chain_id": 31337}


def _run(args: list[str], home) -> object:  # type: ignore[no-untyped-def]
    from veriplex.cli import cli

    return CliRunner().invoke(cli, ["audit", *args], env={"VERIPLEX_HOME": str(home)})


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not JSON"),
    ("[1, 2]", "a receipt is a JSON object"),
    ('{"hello": 1}', "no request_id"),
    ('{"request_id": "0x1234"}', "request_id must be 0x + 64 hex digits"),
    ('{"kind": "veriplex.explorer.request"}', "lacks its 'request' object"),
])
def test_a_malformed_receipt_file_exits_2_with_one_line(tmp_path, text, message):
    path = tmp_path / "r.json"
    path.write_text(text)
    res = _run([str(path), "--rpc-url", "http://127.0.0.1:9"], tmp_path)
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_a_missing_receipt_file_exits_2(tmp_path):
    res = _run([str(tmp_path / "nope.json")], tmp_path)
    assert res.exit_code == 2 and "no receipt file" in res.stderr


def test_an_unreachable_rpc_exits_2_with_a_clear_message(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"request_id": "0x' + "11" * 32 + '"}')
    res = _run([str(path), "--rpc-url", "http://127.0.0.1:9"], tmp_path)
    assert res.exit_code == 2
    assert "cannot reach the JSON-RPC node at http://127.0.0.1:9" in res.stderr


def test_recompute_without_a_model_exits_2(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("{}")
    res = _run([str(path), "--recompute"], tmp_path)
    assert res.exit_code == 2 and "--recompute needs --model" in res.stderr


@pytest.mark.parametrize("field, value, message", [
    ("commitments", [{"stage": 0, "root": "0x" + "00" * 32}], "lacks 'positions'"),
    ("commitments", [{"root": "0x" + "00" * 32, "positions": 1, "hidden_size": 2,
                      "signature": "0xabcd"}], "signature must be 0x + 130 hex digits"),
    ("pipeline", [{"operator": "0x12", "layers": [0, 1]}], "must be an address"),
    ("pipeline", [{"operator": "0x" + "12" * 20, "layers": [3, 1]}], "start < end"),
    ("proof", ["0xzz"], "proof[0] must be 0x + 64 hex digits"),
    ("charge_wei", -5, "charge_wei must be an integer"),
    ("chain_id", True, "chain_id must be an integer"),
])
def test_malformed_receipt_fields_are_named_in_the_error(field, value, message):
    with pytest.raises(ReceiptError, match=None) as e:
        parse_receipt({**GOOD, field: value})
    assert message in str(e.value)


def test_a_whole_completion_response_is_read_through_its_veriplex_field():
    r = parse_receipt({"id": "chatcmpl-1", "choices": [], "veriplex": {
        **GOOD, "tokens": {"prompt": 3, "completion": 4}, "charge_wei": "100",
        "pipeline": [["0x" + "12" * 20, 0, 4]]}})
    assert (r.tokens_in, r.tokens_out, r.charge, r.chain_id) == (3, 4, 100, 31337)
    assert r.pipeline[0].layers == (0, 4)


def test_a_deployment_that_cannot_be_found_exits_2(devnet, tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"request_id": "0x' + "11" * 32 + '"}')
    res = _run([str(path), "--rpc-url", devnet.url], tmp_path)
    assert res.exit_code == 2
    assert "names no Payments address: pass --manifest" in res.stderr
