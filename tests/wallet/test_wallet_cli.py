"""`veriplex wallet ...` end to end through the CLI: keystore files, interoperability with
eth-account (the library geth-format tooling in Python uses), signing, and every bad input
failing in one line with nothing changed."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from eth_account import Account
from eth_account.messages import encode_defunct

from tests.support.wallet import FAST_SCRYPT_N, PASSWORD, write_secret


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file (also hidden temporaries) in the keystore directory, with its bytes."""
    if not directory.exists():
        return {}
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_new_writes_a_0600_scrypt_v3_keystore_in_a_0700_directory(vpx, password_file):
    out = vpx.json("wallet", "new", "alice", "--password-file", str(password_file))
    path = vpx.keystore_dir / "alice.json"
    assert out["path"] == str(path) and out["kdf"] == "scrypt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(vpx.keystore_dir.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert data["version"] == 3 and data["crypto"]["kdfparams"]["n"] == FAST_SCRYPT_N
    key = Account.decrypt(data, PASSWORD)  # readable by the standard implementation
    assert Account.from_key(key).address == out["address"]
    assert [p.name for p in vpx.keystore_dir.iterdir()] == ["alice.json"]


def test_scrypt_n_follows_the_configuration(vpx, password_file):
    vpx("wallet", "new", "a", "--password-file", str(password_file))
    vpx.env["VERIPLEX_WALLET__SCRYPT_N"] = str(2 * FAST_SCRYPT_N)
    vpx("wallet", "new", "b", "--password-file", str(password_file))
    assert vpx.json("wallet", "show", "a")["kdf_params"]["n"] == FAST_SCRYPT_N
    assert vpx.json("wallet", "show", "b")["kdf_params"]["n"] == 2 * FAST_SCRYPT_N


def test_the_password_never_appears_in_output_or_in_the_keystore_file(vpx, password_file):
    outputs = [
        vpx("wallet", "new", "alice", "--password-file", str(password_file)).output,
        vpx("wallet", "show", "alice", "--json").output,
        vpx("wallet", "sign", "alice", "hi", "--password-file", str(password_file)).output,
        vpx("wallet", "list").output,
    ]
    assert all(PASSWORD not in o for o in outputs)
    assert PASSWORD not in (vpx.keystore_dir / "alice.json").read_text()


def test_duplicate_name_is_refused_and_the_existing_file_is_untouched(vpx, password_file, tmp_path):
    vpx("wallet", "new", "alice", "--password-file", str(password_file))
    before = snapshot(vpx.keystore_dir)
    other = write_secret(tmp_path / "other.txt", "another password")
    result = vpx("wallet", "new", "alice", "--password-file", str(other), ok=False)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: an account named 'alice' already exists in {vpx.keystore_dir}"]
    assert snapshot(vpx.keystore_dir) == before


def test_invalid_names_are_refused_before_anything_is_written(vpx, password_file):
    for name in ("../evil", "a/b", ".hidden", "x" * 65, "bob.json", "sp ace", "0xabc", ""):
        result = vpx("wallet", "new", name, "--password-file", str(password_file), ok=False)
        assert result.exit_code == 1 and "invalid account name" in result.output, name
    assert snapshot(vpx.keystore_dir) == {}


def test_new_refuses_an_empty_or_missing_password_file(vpx, tmp_path):
    empty = write_secret(tmp_path / "empty.txt", "")
    result = vpx("wallet", "new", "alice", "--password-file", str(empty), ok=False)
    assert result.exit_code == 1 and "is empty" in result.output
    result = vpx("wallet", "new", "alice", "--password-file", str(tmp_path / "nope"), ok=False)
    assert result.exit_code == 1 and "does not exist" in result.output
    assert snapshot(vpx.keystore_dir) == {}


def test_without_a_terminal_or_password_file_the_command_fails_instead_of_hanging(vpx):
    result = vpx("wallet", "new", "alice", ok=False)
    assert result.exit_code == 1 and "--password-file" in result.output
    assert snapshot(vpx.keystore_dir) == {}


def test_a_keystore_written_by_eth_account_imports_and_signs(vpx, tmp_path, password_file):
    for kdf, iterations in (("scrypt", FAST_SCRYPT_N), ("pbkdf2", 1000)):
        name = f"ext-{kdf}"
        acct = Account.create()
        external = tmp_path / f"{kdf}.json"
        external.write_text(json.dumps(Account.encrypt(acct.key, PASSWORD, kdf=kdf,
                                                       iterations=iterations)))
        out = vpx.json("wallet", "import", name, "--keystore", str(external),
                       "--password-file", str(password_file))
        assert out["address"] == acct.address and out["kdf"] == kdf
        sig = vpx("wallet", "sign", name, "hello veriplex",
                  "--password-file", str(password_file)).stdout.strip()
        expected = acct.sign_message(encode_defunct(text="hello veriplex")).signature
        assert sig == "0x" + bytes(expected).hex()
        assert stat.S_IMODE((vpx.keystore_dir / f"{name}.json").stat().st_mode) == 0o600


def test_geth_style_keystore_with_capitalised_crypto_and_foundry_style_without_address_import(
        vpx, tmp_path, password_file):
    acct = Account.create()
    data = Account.encrypt(acct.key, PASSWORD, kdf="scrypt", iterations=FAST_SCRYPT_N)
    geth = dict(data)
    geth["Crypto"] = geth.pop("crypto")  # geth 1.x files spell it "Crypto"
    (tmp_path / "geth.json").write_text(json.dumps(geth))
    foundry = {k: v for k, v in data.items() if k != "address"}
    (tmp_path / "foundry").write_text(json.dumps(foundry))
    out = vpx.json("wallet", "import", "geth", "--keystore", str(tmp_path / "geth.json"),
                   "--password-file", str(password_file))
    assert out["address"] == acct.address
    vpx("wallet", "remove", "geth", "--yes")
    out = vpx.json("wallet", "import", "foundry", "--keystore", str(tmp_path / "foundry"),
                   "--password-file", str(password_file))
    assert out["address"] == acct.address  # recorded at import, readable without a password


def test_import_with_the_wrong_password_stores_nothing(vpx, tmp_path):
    acct = Account.create()
    external = tmp_path / "k.json"
    external.write_text(json.dumps(Account.encrypt(acct.key, PASSWORD, kdf="scrypt",
                                                   iterations=FAST_SCRYPT_N)))
    wrong = write_secret(tmp_path / "wrong.txt", "not it")
    result = vpx("wallet", "import", "k", "--keystore", str(external),
                 "--password-file", str(wrong), ok=False)
    assert result.exit_code == 1 and "wrong password" in result.output
    assert snapshot(vpx.keystore_dir) == {}


def test_a_raw_key_imports_from_a_file_and_is_never_printed(vpx, tmp_path, password_file):
    acct = Account.create()
    key_hex = bytes(acct.key).hex()
    key_file = write_secret(tmp_path / "key.txt", "0x" + key_hex)
    result = vpx("wallet", "import", "raw", "--private-key-file", str(key_file),
                 "--password-file", str(password_file), "--json")
    assert json.loads(result.stdout)["address"] == acct.address
    assert key_hex not in result.output
    stored = json.loads((vpx.keystore_dir / "raw.json").read_text())
    assert key_hex not in json.dumps(stored)
    assert Account.decrypt(stored, PASSWORD) == acct.key  # what geth/foundry would decrypt


def test_importing_the_same_key_under_a_second_name_is_refused(vpx, tmp_path, password_file):
    key_file = write_secret(tmp_path / "key.txt", bytes(Account.create().key).hex())
    vpx("wallet", "import", "one", "--private-key-file", str(key_file),
        "--password-file", str(password_file))
    before = snapshot(vpx.keystore_dir)
    result = vpx("wallet", "import", "two", "--private-key-file", str(key_file),
                 "--password-file", str(password_file), ok=False)
    assert result.exit_code == 1 and "already stored as account 'one'" in result.output
    assert snapshot(vpx.keystore_dir) == before


def test_malformed_private_keys_are_refused_without_echoing_them(vpx, tmp_path, password_file):
    for bad in ("12ab", "zz" * 32, "00" * 32, "ff" * 32):
        key_file = write_secret(tmp_path / "bad.txt", bad)
        result = vpx("wallet", "import", "bad", "--private-key-file", str(key_file),
                     "--password-file", str(password_file), ok=False)
        assert result.exit_code == 1 and "private key" in result.output, bad
        assert bad not in result.output
    assert snapshot(vpx.keystore_dir) == {}


def test_sign_and_verify_round_trip_for_text_hex_and_file_messages(vpx, tmp_path, password_file):
    pw = str(password_file)
    address = vpx.json("wallet", "new", "alice", "--password-file", pw)["address"]
    msg_file = tmp_path / "msg.bin"
    msg_file.write_bytes(b"\x00\x01binary\xff")
    for how in (["hello"], ["--hex", "0x" + b"\x00\x01binary\xff".hex()],
                ["--message-file", str(msg_file)]):
        signed = vpx.json("wallet", "sign", "alice", *how, "--password-file", pw)
        assert signed["address"] == address
        checked = vpx.json("wallet", "verify", signed["signature"], *how, "--signer", "alice")
        assert checked == {"signer": address, "expected": address, "valid": True}


def test_verify_fails_for_another_message_or_signer_and_malformed_signatures(vpx, password_file):
    pw = str(password_file)
    vpx("wallet", "new", "alice", "--password-file", pw)
    bob = vpx.json("wallet", "new", "bob", "--password-file", pw)["address"]
    sig = vpx("wallet", "sign", "alice", "pay 1", "--password-file", pw).stdout.strip()
    tampered = vpx("wallet", "verify", sig, "pay 9", "--signer", "alice", ok=False)
    assert tampered.exit_code == 1 and "not by" in tampered.output
    wrong_signer = vpx("wallet", "verify", sig, "pay 1", "--signer", bob, ok=False)
    assert wrong_signer.exit_code == 1 and f"not by {bob}" in wrong_signer.output
    for bad in ("0x1234", sig[:-2] + "zz", "0x" + "00" * 65):
        result = vpx("wallet", "verify", bad, "pay 1", ok=False)
        assert result.exit_code == 1 and "signature" in result.output, bad


def test_wrong_password_fails_in_one_line_and_changes_nothing(vpx, tmp_path, password_file):
    vpx("wallet", "new", "alice", "--password-file", str(password_file))
    before = snapshot(vpx.keystore_dir)
    wrong = write_secret(tmp_path / "wrong.txt", "nope")
    for args in (["sign", "alice", "x"], ["change-password", "alice",
                                          "--new-password-file", str(password_file)]):
        result = vpx("wallet", *args, "--password-file", str(wrong), ok=False)
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == ["Error: wrong password for account 'alice'"]
    assert snapshot(vpx.keystore_dir) == before


def test_unknown_account_error_names_the_accounts_that_exist(vpx, password_file):
    vpx("wallet", "new", "alice", "--password-file", str(password_file))
    for args in (["show", "bob"], ["sign", "bob", "x", "--password-file", str(password_file)],
                 ["remove", "bob", "--yes"]):
        result = vpx("wallet", *args, ok=False)
        assert result.exit_code == 1 and "no account named 'bob'" in result.output


def test_a_corrupt_keystore_is_reported_by_list_and_refused_by_show_and_sign(vpx, password_file):
    vpx("wallet", "new", "good", "--password-file", str(password_file))
    (vpx.keystore_dir / "broken.json").write_text("{not json")
    (vpx.keystore_dir / "v4.json").write_text(json.dumps({"version": 4}))
    listing = vpx.json("wallet", "list")
    assert [a["name"] for a in listing["accounts"]] == ["good"]
    assert {u["name"] for u in listing["unreadable"]} == {"broken", "v4"}
    before = snapshot(vpx.keystore_dir)
    for name, why in (("broken", "is not JSON"), ("v4", "not a Web3 Secret Storage v3")):
        for args in (["show", name], ["sign", name, "x", "--password-file", str(password_file)]):
            result = vpx("wallet", *args, ok=False)
            assert result.exit_code == 1 and why in result.output
            assert "Traceback" not in result.output
    assert snapshot(vpx.keystore_dir) == before


def test_change_password_re_encrypts_atomically_and_keeps_the_address(vpx, tmp_path,
                                                                      password_file):
    address = vpx.json("wallet", "new", "alice", "--password-file", str(password_file))["address"]
    new_pw = write_secret(tmp_path / "new.txt", "new secret")
    vpx("wallet", "change-password", "alice", "--password-file", str(password_file),
        "--new-password-file", str(new_pw))
    assert list(snapshot(vpx.keystore_dir)) == ["alice.json"]  # no temporary left behind
    path = vpx.keystore_dir / "alice.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert Account.from_key(Account.decrypt(data, "new secret")).address == address
    old = vpx("wallet", "sign", "alice", "x", "--password-file", str(password_file), ok=False)
    assert "wrong password" in old.output
    vpx("wallet", "sign", "alice", "x", "--password-file", str(new_pw))


def test_remove_needs_confirmation_without_a_terminal_and_deletes_with_yes(vpx, password_file):
    vpx("wallet", "new", "alice", "--password-file", str(password_file))
    refused = vpx("wallet", "remove", "alice", ok=False)
    assert refused.exit_code == 1 and "--yes" in refused.output
    assert (vpx.keystore_dir / "alice.json").exists()
    vpx("wallet", "remove", "alice", "--yes")
    assert snapshot(vpx.keystore_dir) == {}
    assert vpx.json("wallet", "list")["accounts"] == []


def test_list_shows_names_and_addresses_sorted(vpx, password_file):
    made = {n: vpx.json("wallet", "new", n, "--password-file", str(password_file))["address"]
            for n in ("zed", "amy", "mid")}
    listing = vpx.json("wallet", "list")
    assert [(a["name"], a["address"]) for a in listing["accounts"]] == sorted(made.items())
    human = vpx("wallet", "list").stdout.splitlines()
    assert [line.split()[0] for line in human] == ["amy", "mid", "zed"]


def test_the_global_keystore_dir_option_picks_the_directory(vpx, tmp_path, password_file):
    other = tmp_path / "elsewhere"
    vpx("--keystore-dir", str(other), "wallet", "new", "alice",
        "--password-file", str(password_file))
    assert (other / "alice.json").is_file() and not vpx.keystore_dir.exists()


def test_a_password_file_contributes_its_first_line_without_the_line_ending(vpx, tmp_path):
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b" spaced pw \r\nsecond line ignored\n")
    crlf.chmod(0o600)
    vpx("wallet", "new", "alice", "--password-file", str(crlf))
    data = json.loads((vpx.keystore_dir / "alice.json").read_text())
    assert Account.decrypt(data, " spaced pw ")  # inner and outer spaces are part of it


def test_each_missing_secret_names_the_option_that_provides_it(vpx, password_file, tmp_path):
    missing_key = vpx("wallet", "import", "k", "--password-file", str(password_file), ok=False)
    assert "use --private-key-file FILE" in missing_key.output
    vpx("wallet", "new", "alice", "--password-file", str(password_file))
    no_new = vpx("wallet", "change-password", "alice", "--password-file", str(password_file),
                 ok=False)
    assert "use --new-password-file FILE" in no_new.output
    assert "use --password-file FILE" in vpx("wallet", "sign", "alice", "x", ok=False).output
