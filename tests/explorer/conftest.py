"""Fixtures for the explorer tests: a real devnet subprocess with real on-chain activity (a node
registered and allocated in an epoch, a model, a client's deposit and API key, a batch settled by
the gateway and released after the verification window), an index database in tmp, and the
explorer served by a real uvicorn in a thread for browser tests. Never a mocked chain."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from devnet.explorer.app import create_app
from devnet.process import running_devnet
from tests.support.explorer import (
    Activity,
    Explorer,
    free_port,
    make_activity,
    make_explorer,
)
from tests.support.verified import Verified, make_verified


@pytest.fixture(scope="package")
def activity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Activity]:
    with running_devnet(tmp_path_factory.mktemp("devnet")) as dn:
        yield make_activity(dn)


@pytest.fixture(scope="package")
def verified(activity: Activity, tmp_path_factory: pytest.TempPathFactory) -> Verified:
    """A second deployment on the same devnet, and a request that went through verification."""
    return make_verified(activity.devnet.url, tmp_path_factory.mktemp("verification"))


@pytest.fixture(scope="package")
def indexed(activity: Activity, verified: Verified,
            tmp_path_factory: pytest.TempPathFactory) -> Explorer:
    """An index of the activity devnet (both deployments), fully synced."""
    db = tmp_path_factory.mktemp("index") / "explorer.sqlite"
    ex = make_explorer(activity.devnet.url, f"sqlite:///{db}",
                       [activity.manifest, verified.manifest])
    assert ex.indexer.sync_once() > 0
    return ex


@pytest.fixture(scope="package")
def served(indexed: Explorer) -> Iterator[str]:
    """The explorer web UI over the synced index, on a real uvicorn; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(indexed.engine, indexed.status, indexed.rpc),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("explorer web UI did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
