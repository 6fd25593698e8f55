"""Try some binds in this (child) process, report how each went, and exit.

Usage: binder.py SPEC... ; prints one JSON line {"pid", "binds": [...]} after the last one.
SPECs: tcp4:PORT tcp6:PORT udp4:PORT udp6:PORT (bind 127.0.0.1 or ::1, IPv6 sockets v6-only),
any4:PORT (bind 0.0.0.0), and thread:SPEC (the same bind made by a second thread named
"binder-thread"). Each entry says the port, the errno (0: bound) and the thread id that bound.
Every socket stays open until the last bind is done, so a successful bind holds its port.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
import threading

ADDRESSES = {"4": (socket.AF_INET, "127.0.0.1"), "6": (socket.AF_INET6, "::1")}
held: list[socket.socket] = []


def attempt(spec: str) -> dict[str, object]:
    kind, _, port = spec.partition(":")
    if kind == "any4":
        family, address, transport = socket.AF_INET, "0.0.0.0", socket.SOCK_STREAM
    else:
        family, address = ADDRESSES[kind[-1]]
        transport = socket.SOCK_DGRAM if kind.startswith("udp") else socket.SOCK_STREAM
    sock = socket.socket(family, transport)
    held.append(sock)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    error = 0
    try:
        sock.bind((address, int(port)))
    except OSError as exc:
        error = exc.errno or -1
    return {"spec": spec, "port": int(port), "error": error, "thread": threading.get_native_id()}


def in_thread(spec: str) -> dict[str, object]:
    done: list[dict[str, object]] = []

    def work() -> None:
        ctypes.CDLL(None).prctl(15, b"binder-thread", 0, 0, 0)  # PR_SET_NAME: this thread only
        done.append(attempt(spec))

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return done[0]


results = [
    in_thread(spec.removeprefix("thread:")) if spec.startswith("thread:") else attempt(spec)
    for spec in sys.argv[1:]
]
print(json.dumps({"pid": os.getpid(), "binds": results}), flush=True)
