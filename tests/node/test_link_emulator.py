"""The link emulator the serving bench puts between stages (tests/support/link.py): it adds the
round-trip time and caps the bandwidth it is given, in this process or in one of its own."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support.link import LinkProcess, LinkProxy


@pytest.fixture
def echo_port():
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                while data := c.recv(65536):
                    c.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


def _round_trip(port: int, payload: bytes) -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            s.sendall(payload)
            got = 0
            while got < len(payload):
                got += len(s.recv(65536))
            best = min(best, time.perf_counter() - t)
        return best


def test_a_link_adds_its_round_trip_time_and_caps_its_bandwidth(echo_port: int) -> None:
    with LinkProxy("127.0.0.1", echo_port, rtt_ms=40) as link:
        rtt = _round_trip(link.port, b"x")
    assert 0.040 <= rtt < 0.2
    with LinkProxy("127.0.0.1", echo_port, mbit_s=8) as link:  # 1 MB/s each way
        t = _round_trip(link.port, bytes(100_000))  # 0.1 s out, then back
    assert 0.1 <= t < 1.0


def test_links_in_a_process_of_their_own(echo_port: int) -> None:
    links = LinkProcess("127.0.0.1", [echo_port, echo_port], rtt_ms=30)
    try:
        assert len(set(links.ports)) == 2
        for port in links.ports:
            assert 0.030 <= _round_trip(port, b"y") < 0.2
    finally:
        links.stop()
    assert links.proc.returncode == 0
