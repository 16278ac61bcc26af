"""Dev accounts, the SQLite key-value adapter, and the database lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from devnet.accounts import dev_accounts
from devnet.errors import DevnetLocked
from devnet.kvstore import SqliteKV
from devnet.store import ChainStore
from protocol.settings import DEV_MNEMONIC

# anvil's and hardhat's first accounts for the "test ... junk" mnemonic (their public docs)
ANVIL_FIRST = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
ANVIL_SECOND = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def test_dev_accounts_are_the_same_as_anvils_for_the_dev_mnemonic() -> None:
    accounts = dev_accounts(DEV_MNEMONIC, 3)
    assert [a.address for a in accounts[:2]] == [ANVIL_FIRST, ANVIL_SECOND]
    assert len({a.private_key for a in accounts}) == 3


def test_dev_account_repr_never_shows_the_private_key() -> None:
    account = dev_accounts(DEV_MNEMONIC, 1)[0]
    assert account.private_key[2:] not in repr(account)


def test_kv_writes_are_buffered_until_flushed_then_persist(tmp_path: Path) -> None:
    store = ChainStore(tmp_path / "kv.sqlite")
    kv = SqliteKV(store)
    kv[b"a"] = b"1"
    assert kv[b"a"] == b"1"
    assert store.kv_get(b"a") is None  # still only in the buffer
    store.begin()
    kv.flush()
    store.commit()
    assert store.kv_get(b"a") == b"1"
    del kv[b"a"]
    kv[b"b"] = b"2"
    kv.discard()  # an abandoned block's writes vanish
    assert kv[b"a"] == b"1" and b"b" not in kv
    store.close()
    reopened = ChainStore(tmp_path / "kv.sqlite")
    assert SqliteKV(reopened)[b"a"] == b"1"
    reopened.close()


def test_kv_cache_evicts_but_still_answers_from_sqlite(tmp_path: Path) -> None:
    store = ChainStore(tmp_path / "kv.sqlite")
    kv = SqliteKV(store, cache_entries=8)
    store.begin()
    for i in range(40):
        kv[i.to_bytes(2, "big")] = bytes([i])
    kv.flush()
    store.commit()
    assert all(kv[i.to_bytes(2, "big")] == bytes([i]) for i in range(40))
    store.close()


def test_a_second_store_on_the_same_file_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    first = ChainStore(tmp_path / "chain.sqlite")
    with pytest.raises(DevnetLocked, match=r"already in use by another devnet \(pid \d+\)"):
        ChainStore(tmp_path / "chain.sqlite")
    first.close()
    ChainStore(tmp_path / "chain.sqlite").close()  # free again once the holder closed
