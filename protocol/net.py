"""Listening sockets for Veriplex's HTTP services (coordinator, gateway, explorer).

A service binds and listens *before* it prints its `ready at URL` line, so a client that reads the
line can connect at once (connections wait in the backlog until uvicorn accepts them). Port 0 picks
a free port; the bound port is returned. Bottom layer: imports nothing of ours.
"""

from __future__ import annotations

import socket


class ListenError(OSError):
    """The address cannot be bound (in use, not local, no permission)."""


def listen(host: str, port: int, backlog: int = 256) -> tuple[socket.socket, int]:
    """A listening TCP socket on (host, port) and the port it is bound to."""
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only for sockets
    # whose proto says TCP. Without it a response written as headers then body waits out the
    # client's delayed ACK (Nagle): 40 ms per HTTP request on Linux.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock, int(sock.getsockname()[1])
