"""The `Keystore` library: the Web3 Secret Storage test vectors (the files geth and foundry are
checked against), concurrent writers, and the unlock API the node runtime uses."""

from __future__ import annotations

import json
import threading

import pytest
from eth_account import Account

from node.wallet import AccountExists, CorruptKeystore, Keystore, WrongPassword
from tests.support.wallet import FAST_SCRYPT_N, write_secret

# Test vectors of the Web3 Secret Storage Definition (ethereum.org); both hold this key under
# the password "testpassword".
SPEC_KEY = "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d"
SPEC_SCRYPT = {
    "crypto": {
        "cipher": "aes-128-ctr",
        "cipherparams": {"iv": "83dbcc02d8ccb40e466191a123791e0e"},
        "ciphertext": "d172bf743a674da9cdad04534d56926ef8358534d458fffccd4e6ad2fbde479c",
        "kdf": "scrypt",
        "kdfparams": {"dklen": 32, "n": 262144, "p": 8, "r": 1,
                      "salt": "ab0c7876052600dd703518d6fc3fe8984592145b591fc8fb5c6d43190334ba19"},
        "mac": "2103ac29920d71da29f15d75b4a16dbe95cfd7ff8faea1056c33131d846e3097",
    },
    "id": "3198bc9c-6672-5ab3-d995-4942343ae5b6",
    "version": 3,
}
SPEC_PBKDF2 = {
    "crypto": {
        "cipher": "aes-128-ctr",
        "cipherparams": {"iv": "6087dab2f9fdbbfaddc31a909735c1e6"},
        "ciphertext": "5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46",
        "kdf": "pbkdf2",
        "kdfparams": {"c": 262144, "dklen": 32, "prf": "hmac-sha256",
                      "salt": "ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd"},
        "mac": "517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2",
    },
    "id": "3198bc9c-6672-5ab3-d995-4942343ae5b6",
    "version": 3,
}


@pytest.mark.parametrize("vector", [SPEC_SCRYPT, SPEC_PBKDF2], ids=["scrypt", "pbkdf2"])
def test_the_web3_secret_storage_test_vectors_import_through_the_cli_and_sign(vpx, tmp_path,
                                                                            vector):
    spec_file = tmp_path / "vector.json"
    spec_file.write_text(json.dumps(vector))
    pw = write_secret(tmp_path / "pw.txt", "testpassword")
    out = vpx.json("wallet", "import", "spec", "--keystore", str(spec_file),
                   "--password-file", str(pw))
    expected = Account.from_key(bytes.fromhex(SPEC_KEY))
    assert out["address"] == expected.address
    stored = json.loads((vpx.keystore_dir / "spec.json").read_text())
    assert stored["crypto"] == vector["crypto"]  # kept byte for byte: still a geth file
    sig = vpx.json("wallet", "sign", "spec", "hi", "--password-file", str(pw))["signature"]
    assert vpx.json("wallet", "verify", sig, "hi")["signer"] == expected.address


def test_only_one_of_two_concurrent_creators_of_a_name_wins(tmp_path):
    ks = Keystore(tmp_path / "ks", scrypt_n=FAST_SCRYPT_N)
    results: list[str] = []
    barrier = threading.Barrier(2)

    def create(password: str) -> None:
        barrier.wait()
        try:
            ks.create("same", password)
            results.append(password)
        except AccountExists:
            results.append("refused")

    threads = [threading.Thread(target=create, args=(p,)) for p in ("pw-a", "pw-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r != "refused"]
    assert len(winners) == 1 and results.count("refused") == 1
    assert ks.unlock("same", winners[0]).address == ks.address("same")
    assert [p.name for p in ks.directory.iterdir()] == ["same.json"]


def test_unlock_returns_the_account_and_checks_the_stored_address(tmp_path):
    ks = Keystore(tmp_path / "ks", scrypt_n=FAST_SCRYPT_N)
    entry = ks.create("node-op", "pw")
    account = ks.unlock("node-op", "pw")
    assert account.address == entry.address == ks.address("node-op")
    with pytest.raises(WrongPassword):
        ks.unlock("node-op", "PW")
    data = json.loads(entry.path.read_text())
    data["address"] = "00" * 20  # a file whose address field lies about its key
    entry.path.write_text(json.dumps(data))
    with pytest.raises(CorruptKeystore, match="says address"):
        ks.unlock("node-op", "pw")


@pytest.mark.parametrize("params, why", [
    ({"n": 2**30, "r": 8, "p": 1, "dklen": 32, "salt": "00"}, "beyond what this wallet"),
    ({"n": 1000, "r": 8, "p": 1, "dklen": 32, "salt": "00"}, "invalid scrypt parameters"),
    ({"r": 8, "p": 1}, "malformed scrypt parameters"),
])
def test_a_keystore_demanding_absurd_scrypt_work_is_refused_before_deriving(tmp_path, params,
                                                                           why):
    hostile = json.loads(json.dumps(SPEC_SCRYPT))
    hostile["crypto"]["kdfparams"] = params
    ks = Keystore(tmp_path / "ks", scrypt_n=FAST_SCRYPT_N)
    with pytest.raises(CorruptKeystore, match=why):
        ks.import_keystore("h", json.dumps(hostile), "testpassword", "hostile.json")
    assert not ks.directory.exists() or not any(ks.directory.iterdir())
