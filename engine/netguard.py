"""Refuse network access inside a block, to prove (and enforce) that the engine works offline.

The annotator never downloads anything: weights come from installed packages or files the user
names. `network_blocked()` makes any attempt fail loudly instead of hanging on a firewall or
quietly fetching, and records it even when the caller swallows the error. Local IPC (Unix
sockets) stays allowed. It patches the `socket` module process-wide, so use it around whole jobs
or tests, not in a thread alongside other work.
"""
from __future__ import annotations

import socket
from contextlib import contextmanager


class NetworkAccessAttempted(OSError):
    """Raised for any connection or name lookup made while the network is blocked."""


@contextmanager
def network_blocked(attempts: list[str] | None = None):
    """Within the block, connecting (except to Unix sockets) and resolving names raise
    NetworkAccessAttempted; each attempt is appended to `attempts` when given."""
    attempts = [] if attempts is None else attempts

    def refuse(what: str):
        attempts.append(what)
        raise NetworkAccessAttempted(f"network access attempted while blocked: {what}")

    def guarded_connect(original):
        def connect(sock, address, *args, **kwargs):
            if getattr(socket, "AF_UNIX", None) is not None and sock.family == socket.AF_UNIX:
                return original(sock, address, *args, **kwargs)
            return refuse(f"connect to {address!r}")

        return connect

    patched = {
        (socket.socket, "connect"): guarded_connect(socket.socket.connect),
        (socket.socket, "connect_ex"): guarded_connect(socket.socket.connect_ex),
        (socket, "getaddrinfo"): lambda host, *a, **k: refuse(f"name lookup of {host!r}"),
        (socket, "gethostbyname"): lambda host, *a, **k: refuse(f"name lookup of {host!r}"),
        (socket, "gethostbyname_ex"): lambda host, *a, **k: refuse(f"name lookup of {host!r}"),
        (socket, "create_connection"): lambda address, *a, **k: refuse(f"connection to {address!r}"),
    }
    originals = {key: getattr(*key) for key in patched}
    for (owner, name), replacement in patched.items():
        setattr(owner, name, replacement)
    try:
        yield attempts
    finally:
        for (owner, name), original in originals.items():
            setattr(owner, name, original)
