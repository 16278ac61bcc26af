"""A link emulator: a TCP proxy that adds a round-trip time and a bandwidth cap between processes.

This machine's kernel has no `netem` qdisc, so tests and benches put a `LinkProxy` in front of a
listening stage and give its port to whoever should reach the stage "over the WAN". Each direction
of each proxied connection is one FIFO link: a chunk read at `t` leaves the sender's side once the
link has serialised everything before it (`bytes × 8 / bits_per_s`), and arrives `rtt_s / 2` later
— latency and bandwidth add up as on a real path, and order is kept. The proxy runs its own event
loop in a daemon thread, so synchronous benches and asyncio tests use it alike:

    with LinkProxy("127.0.0.1", stage_port, rtt_ms=40, mbit_s=100) as link:
        ... connect to ("127.0.0.1", link.port) ...

A bench whose own process is busy (a client parsing streamed answers) runs the links in a process
of their own instead (`LinkProcess`, or `python -m tests.support.link PORT... --rtt-ms --mbit-s`):
in the same process the delivery thread waits for the GIL (5 ms switch interval) behind the
client, and every hop comes late.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import deque


class LinkProxy:
    """Forwards every connection made to `port` to (host, upstream_port) through an emulated link."""

    def __init__(self, host: str, upstream_port: int, *, rtt_ms: float = 0.0,
                 mbit_s: float | None = None, listen_host: str = "127.0.0.1"):
        if rtt_ms < 0 or (mbit_s is not None and mbit_s <= 0):
            raise ValueError(f"rtt_ms ({rtt_ms}) must be >= 0 and mbit_s ({mbit_s}) > 0")
        self.host, self.upstream_port = host, upstream_port
        self.delay_s = rtt_ms / 2000.0
        self.bytes_per_s = None if mbit_s is None else mbit_s * 1e6 / 8
        self.listen_host = listen_host
        self.port = 0
        self.bytes_forwarded = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"link-{upstream_port}")
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # ── lifecycle ─────────────────────────────────────────────────────────────────────────────
    def start(self) -> LinkProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen_host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def _close() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> LinkProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ── forwarding ────────────────────────────────────────────────────────────────────────────
    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            w.close()
            return
        for writer in (w, uw):
            self._writers.add(writer)
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w), return_exceptions=True)
        for writer in (w, uw):
            self._writers.discard(writer)
            writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """One direction: read chunks, stamp their arrival time, deliver them in order when due."""
        due: deque[tuple[float, bytes]] = deque()
        ready = asyncio.Event()
        closed = False
        line_free = 0.0  # when the link has finished serialising what it was given

        async def deliver() -> None:
            while True:
                while not due:
                    if closed:
                        return
                    ready.clear()
                    await ready.wait()
                at, chunk = due.popleft()
                wait = at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(chunk)
                self.bytes_forwarded += len(chunk)
                await dst.drain()

        sender = asyncio.get_running_loop().create_task(deliver())
        try:
            while True:
                chunk = await src.read(65536)
                if not chunk:
                    break
                now = time.monotonic()
                tx = 0.0 if self.bytes_per_s is None else len(chunk) / self.bytes_per_s
                line_free = max(now, line_free) + tx
                due.append((line_free + self.delay_s, chunk))
                ready.set()
        except (ConnectionError, OSError):
            pass
        finally:
            closed = True
            ready.set()
            with contextlib.suppress(Exception):
                await sender
            with contextlib.suppress(Exception):
                dst.close()


class LinkProcess:
    """`LinkProxy`s for several upstream ports in a child process; `ports[i]` fronts `upstreams[i]`."""

    def __init__(self, host: str, upstreams: list[int], *, rtt_ms: float = 0.0,
                 mbit_s: float | None = None):
        import subprocess
        import sys

        argv = [sys.executable, "-m", "tests.support.link", "--host", host, "--rtt-ms", str(rtt_ms),
                *(["--mbit-s", str(mbit_s)] if mbit_s else []), *map(str, upstreams)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "PORTS":
            self.stop()
            raise RuntimeError(f"link process did not start: {line}")
        self.ports = [int(p) for p in line[1:]]

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # it stops when its stdin closes
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait()


def _main() -> None:
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="emulated links to local ports, until stdin closes")
    ap.add_argument("upstreams", type=int, nargs="+")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--rtt-ms", type=float, default=0.0)
    ap.add_argument("--mbit-s", type=float, default=None)
    a = ap.parse_args()
    links = [LinkProxy(a.host, p, rtt_ms=a.rtt_ms, mbit_s=a.mbit_s).start() for p in a.upstreams]
    print("PORTS", *(link.port for link in links), flush=True)
    sys.stdin.read()
    for link in links:
        link.stop()


if __name__ == "__main__":
    _main()
