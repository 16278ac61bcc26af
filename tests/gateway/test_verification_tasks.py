"""Stage commitments reach the chain: a served request settles with its stages' commitment root,
and once the batch's sampling randomness exists the gateway opens a verification task for every
sampled record exactly once (persisted, so a restart or a second opener does not open it again);
a request whose stages do not answer COMMIT is still served and charged, with a zero root and the
reason in its receipt, and is never sent to verification."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import time
from collections.abc import Iterator

import httpx
import pytest

from contracts.client import Chain, dev_key
from contracts.node_registry import Hardware
from contracts.rpc import Signer
from contracts.verification import sample_draw
from gateway.store import Store
from gateway.tasks import TaskOpener
from node.dataplane.query import SignedStageCommit
from protocol.settings import DEV_MNEMONIC
from tests.support.gateway import ETH, ServedGateway, free_port, make_gateway, rpc

pytestmark = pytest.mark.anvil


@pytest.fixture
def admin(anvil_url, deployment) -> Chain:
    return Chain.connect(anvil_url, deployment, signer=Signer.from_key(dev_key(0, DEV_MNEMONIC)))


@contextlib.contextmanager
def sampling(admin: Chain, bps: int) -> Iterator[None]:
    """Verification samples `bps` / 10,000 of requests (restored afterwards: the chain is shared)."""
    before = admin.verification.params()
    admin.verification.set_params(dataclasses.replace(before, sample_bps=bps))
    try:
        yield
    finally:
        admin.verification.set_params(before)


@pytest.fixture
def sample_everything(admin: Chain) -> Iterator[None]:
    with sampling(admin, 10_000):
        yield


@pytest.fixture
def eligible_verifier(anvil_url, deployment) -> str:
    """A registered, staked operator outside the pipeline, so a committee can be drawn."""
    owner = Signer.from_key("0x" + secrets.token_hex(32))
    rpc(anvil_url, "anvil_setBalance", owner.address, hex(10 * ETH))
    operator = Signer.from_key("0x" + secrets.token_hex(32)).address
    Chain.connect(anvil_url, deployment, signer=owner).node_registry.register(
        operator, "tcp://127.0.0.1:9", Hardware("cpu", 1024, 1000, 10, 1000, "local"), 2 * ETH)
    return operator


def ask(served: ServedGateway, token: str, model: str) -> dict:
    r = served.openai(token).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "verify me"}], max_tokens=5,
        temperature=0)
    return r.model_extra["veriplex"]


def wait_for(what, timeout_s: float = 30.0, nudge=None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        if nudge is not None:
            nudge()
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s")


def test_a_sampled_request_gets_one_verification_task_on_its_committed_stage(
        gateway, new_client, model_info, admin, sample_everything, eligible_verifier):
    receipt = ask(gateway, new_client().token, model_info.name)
    commits = [SignedStageCommit.from_json(c) for c in receipt["commitments"]]
    gateway.wait_settled()
    store = gateway.gw.store
    rid_hex = receipt["request_id"]
    admin.rpc.mine(3)  # the blockhash randomness needs blocks after the settle block
    row = wait_for(lambda: (r := store.request(rid_hex)) is not None and r.task_state and r,
                   nudge=gateway.gw.settler.nudge)
    assert row.task_state == "opened", row.task_error
    ver = admin.verification
    rid = bytes.fromhex(rid_hex[2:])
    assert ver.task_of(rid) == row.task_id
    task = ver.task(row.task_id)
    assert task is not None and task.request_id == rid
    assert task.stage_commit == commits[task.stage].commit
    assert task.stage_operator == commits[task.stage].operator
    events = [e for e in ver.events("TaskOpened") if bytes(e.args["request_id"]) == rid]
    assert len(events) == 1 and events[0].args["opener"] == gateway.gw.address
    status = httpx.get(f"{gateway.url}/v1/receipts/{rid_hex}").json()
    assert status["task"] == {"state": "opened", "task_id": row.task_id, "error": None}

    # Exactly once: a second opener on the same store finds nothing to do; one that lost its
    # decisions (say, a crash before they were written) meets "task already open" and records it.
    again = TaskOpener(gateway.gw.chain, Store(str(store.engine.url)))
    assert again.run_once() == 0
    store.set_task(row.seq, None)
    store.set_batch(row.batch, tasks_done=None)
    assert again.run_once() == 0
    assert store.request(rid_hex).task_state == "opened"
    assert store.request(rid_hex).task_id == row.task_id
    assert len([e for e in ver.events("TaskOpened") if bytes(e.args["request_id"]) == rid]) == 1


def test_a_request_whose_stages_give_no_commitment_is_served_not_charged_and_never_verified(
        anvil_url, deployment, gateway_signer, chat_model, model_info, dataplane, new_client,
        admin, tmp_path):
    gw = make_gateway(anvil_url, deployment, gateway_signer, chat_model, model_info,
                      dataplane.stages(), f"sqlite:///{tmp_path / 'gw.sqlite'}",
                      commit_timeout_s=1e-6, commit_attempts=2)  # no stage can answer in time
    served = ServedGateway(gw, free_port()).start()
    try:
        client = new_client()
        receipt = ask(served, client.token, model_info.name)
        assert receipt["commitments"] == [] and receipt["commitment_root"] == "0x" + "00" * 32
        assert "no commitment after 2 attempts" in receipt["commitments_error"]
        served.wait_settled()
        admin.rpc.mine(2)
        row = wait_for(lambda: (r := gw.store.request(receipt["request_id"])).task_state and r,
                       nudge=gw.settler.nudge)
        # (was: charged and paid though nobody could check it — issue 14 #3: a record without
        # verifiable commitments is not billed; settlement skips its zero charge)
        assert row.task_state in ("skipped", "no_commitments")
        assert receipt["charge_wei"] == "0"
        assert admin.payments.key_state(client.signed.key_hash).spent_wei == 0
        status = httpx.get(f"{served.url}/v1/receipts/{receipt['request_id']}").json()
        assert status["commitments_error"] == receipt["commitments_error"]
    finally:
        served.stop()


def test_an_old_gateway_database_gains_the_new_columns_in_place(tmp_path):
    import sqlite3

    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE meta (key VARCHAR(64) PRIMARY KEY, value VARCHAR(256));"
        "CREATE TABLE requests (seq BIGINT PRIMARY KEY, request_id VARCHAR(66) UNIQUE, key_hash BLOB,"
        " model_id INTEGER, pipeline VARCHAR(4000), tokens_in INTEGER, tokens_out INTEGER,"
        " charge VARCHAR(80), commitment_root BLOB, created_at FLOAT, batch INTEGER);"
        "CREATE TABLE batches (id INTEGER PRIMARY KEY, status VARCHAR(16), created_at FLOAT,"
        " tx_hash VARCHAR(66), raw_tx BLOB, chain_batch_id INTEGER, total_charge VARCHAR(80),"
        " error VARCHAR(1000), attempts INTEGER);"
        "INSERT INTO meta VALUES ('seq_base', '4096');"
        "INSERT INTO requests VALUES (4096, '0x01', x'00', 1, '[]', 3, 2, '10', x'00', 0.0, NULL);")
    con.commit()
    con.close()
    store = Store(f"sqlite:///{db}")
    row = store.request("0x01")
    assert row is not None and row.commitments is None and row.task_state is None
    assert store.next_seq() == 4097
    store.set_task(4096, "no_commitments")
    assert store.request("0x01").task_state == "no_commitments"


@pytest.fixture
def sample_nothing(admin: Chain) -> Iterator[None]:
    with sampling(admin, 0):
        yield


def test_an_unsampled_batch_is_released_after_its_window_and_its_operators_are_paid(
        gateway, new_client, model_info, admin, sample_nothing):
    receipt = ask(gateway, new_client().token, model_info.name)
    gateway.wait_settled()
    store = gateway.gw.store
    row = store.request(receipt["request_id"])
    batch = store.batch(row.batch)
    owners = {admin.node_registry.owner_of_operator(s["operator"]) for s in receipt["pipeline"]}
    before = {o: admin.payments.balance_of(o) for o in owners}
    info = admin.payments.batch(batch.chain_batch_id)
    assert info is not None and not info.released
    admin.rpc.mine(max(1, info.release_block - admin.block_number() + 1))
    wait_for(lambda: store.batch(row.batch).released, nudge=gateway.gw.settler.nudge)
    assert store.request(receipt["request_id"]).task_state == "not_sampled"
    assert admin.payments.batch(batch.chain_batch_id).released
    paid = {o: admin.payments.balance_of(o) - before[o] for o in owners}
    assert all(v > 0 for v in paid.values()), paid
    assert sum(paid.values()) < int(receipt["charge_wei"])  # the fee and verifier pool take theirs
    released = [e for e in admin.payments.events("BatchReleased")
                if int(e.args["batch_id"]) == batch.chain_batch_id]
    assert len(released) == 1


def test_the_batch_seed_and_draw_decide_every_record_as_the_contract_does(
        gateway, new_client, model_info, admin, eligible_verifier):
    token = new_client().token
    with sampling(admin, 5_000):
        receipts = [ask(gateway, token, model_info.name) for _ in range(6)]
        gateway.wait_settled()
        admin.rpc.mine(3)
        store = gateway.gw.store
        rows = [wait_for(lambda rid=r["request_id"]: (x := store.request(rid)).task_state and x,
                         nudge=gateway.gw.settler.nudge) for r in receipts]
    ver = admin.verification
    for row in rows:
        batch = store.batch(row.batch)
        info = admin.payments.batch(batch.chain_batch_id)
        window = int(admin.payments.params()["verification_window"])
        anchor = info.release_block - window + ver.params().randomness_delay
        rid = bytes.fromhex(row.request_id[2:])
        local = sample_draw(ver.batch_seed(batch.chain_batch_id, anchor), rid) < 5_000
        # The contract is asked under the same rate the opener decided with.
        with sampling(admin, 5_000):
            assert local == ver.is_sampled(batch.chain_batch_id, rid)
        assert row.task_state == ("opened" if local else "not_sampled"), row.task_error
