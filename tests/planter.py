"""Plant sockets for a test in this (child) process and hold them until stdin closes.

Usage: planter.py SPEC... ; prints one JSON line {"pid", "sockets": [...]} once they exist.
SPECs: self4 self6 selfmapped (bind-then-connect self-connects), remnant4 (a self-connect closed
normally: TIME_WAIT), listen4:PORT listen6:PORT, pair4 (an ordinary loopback connection),
crossaddr (127.0.0.1:P connected to 127.0.0.2:P: same port, different address),
natural4:PORT (an unbound connect to 127.0.0.1:PORT that the kernel self-connected: run it in a
namespace whose ip_local_port_range is PORT PORT), thread4 (a self4 made by a second thread
named "worker"; its entry carries the thread id), threads4:N (N threads in turn, each makes a
self4, closes it abortively and exits; an entry each, with its thread id).
self4, self6, selfmapped, remnant4 and remnant6 take an optional :PORT (default: any port);
self4:PORT@ADDRESS self-connects on another loopback address (127.0.0.2).
For `narcissus who`: client4:PORT / client6:PORT (bind PORT, then connect to a listener this
planter opens on another port), bound4:PORT (bind only), udp4:PORT / udp6:PORT (a bound UDP
socket), udpclient4:PORT (bound to PORT, connected to another UDP port), udpself4:PORT (a UDP
socket connected to itself).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import sys

held: list[socket.socket] = []
planted: list[dict[str, object]] = []

SELF = {
    "self4": (socket.AF_INET, "127.0.0.1", "ipv4"),
    "self6": (socket.AF_INET6, "::1", "ipv6"),
    "selfmapped": (socket.AF_INET6, "::ffff:127.0.0.1", "ipv6"),
}


def self_connect(family: int, address: str, port: int = 0) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((address, port))
    sock.connect((address, sock.getsockname()[1]))
    assert sock.getsockname()[:2] == sock.getpeername()[:2]
    return sock


def self_connect_in_thread(name: bytes) -> tuple[socket.socket, int]:
    """An IPv4 self-connect made by a new thread called `name`; the socket and the thread id."""
    import ctypes
    import threading

    made: list[tuple[socket.socket, int]] = []

    def work() -> None:
        ctypes.CDLL(None).prctl(15, name, 0, 0, 0)  # PR_SET_NAME: names this thread only
        made.append((self_connect(socket.AF_INET, "127.0.0.1"), threading.get_native_id()))

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return made[0]


LOOPBACK = {"4": (socket.AF_INET, "127.0.0.1", "ipv4"), "6": (socket.AF_INET6, "::1", "ipv6")}


def entry(kind: str, version: str, port: int) -> dict[str, object]:
    _family, address, name = LOOPBACK[version]
    return {"kind": kind, "family": name, "address": address, "port": port}


def bound(version: str, kind: int, port: int) -> socket.socket:
    family, address, _name = LOOPBACK[version]
    sock = socket.socket(family, kind)
    sock.bind((address, port))
    return sock


def same_port_pair() -> tuple[socket.socket, socket.socket, int]:
    """A listener on 127.0.0.2:P and a socket bound to 127.0.0.1:P. The port bind() picks for
    127.0.0.2 may be taken on 127.0.0.1 (by a socket planted before), so pick again (bounded)."""
    for _attempt in range(100):
        server = socket.create_server(("127.0.0.2", 0))
        port = server.getsockname()[1]
        client = socket.socket()
        try:
            client.bind(("127.0.0.1", port))
        except OSError as exc:
            client.close()
            server.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        return server, client, port
    raise SystemExit("planter: no port free on both 127.0.0.1 and 127.0.0.2 in 100 tries")


for spec in sys.argv[1:]:
    kind, _, arg = spec.partition(":")
    if kind in SELF:
        family, address, name = SELF[kind]
        port_text, _, other_address = arg.partition("@")
        address = other_address or address
        sock = self_connect(family, address, int(port_text or 0))
        held.append(sock)
        planted.append(
            {"kind": kind, "family": name, "address": address, "port": sock.getsockname()[1]}
        )
    elif kind in ("remnant4", "remnant6"):
        family, address, name = LOOPBACK[kind[-1]]
        sock = self_connect(family, address, int(arg or 0))
        port = sock.getsockname()[1]
        sock.close()
        planted.append({"kind": kind, "family": name, "address": address, "port": port})
    elif kind in ("client4", "client6"):
        server = bound(kind[-1], socket.SOCK_STREAM, 0)
        server.listen()
        client = bound(kind[-1], socket.SOCK_STREAM, int(arg))
        client.connect(server.getsockname()[:2])
        accepted, _ = server.accept()
        held += [server, client, accepted]
        item = entry(kind, kind[-1], client.getsockname()[1])
        planted.append({**item, "server_port": server.getsockname()[1]})
    elif kind == "bound4":
        held.append(bound("4", socket.SOCK_STREAM, int(arg)))
        planted.append(entry(kind, "4", int(arg)))
    elif kind in ("udp4", "udp6"):
        sock = bound(kind[-1], socket.SOCK_DGRAM, int(arg or 0))
        held.append(sock)
        planted.append(entry(kind, kind[-1], sock.getsockname()[1]))
    elif kind in ("udpclient4", "udpself4"):
        sock = bound("4", socket.SOCK_DGRAM, int(arg))
        peer = bound("4", socket.SOCK_DGRAM, 0) if kind == "udpclient4" else sock
        sock.connect(peer.getsockname())
        held += [sock, peer]
        planted.append({**entry(kind, "4", int(arg)), "peer_port": peer.getsockname()[1]})
    elif kind in ("listen4", "listen6"):
        family = socket.AF_INET if kind == "listen4" else socket.AF_INET6
        address = "127.0.0.1" if kind == "listen4" else "::1"
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((address, int(arg or 0)))
        sock.listen()
        held.append(sock)
        planted.append(
            {"kind": kind, "family": kind[-1], "address": address, "port": sock.getsockname()[1]}
        )
    elif kind == "pair4":
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        held += [server, client, accepted]
        planted.append(
            {
                "kind": kind,
                "family": "ipv4",
                "address": "127.0.0.1",
                "port": server.getsockname()[1],
            }
        )
        planted.append(
            {
                "kind": kind,
                "family": "ipv4",
                "address": "127.0.0.1",
                "port": client.getsockname()[1],
            }
        )
    elif kind == "crossaddr":
        server, client, port = same_port_pair()
        client.connect(("127.0.0.2", port))
        accepted, _ = server.accept()
        held += [server, client, accepted]
        planted.append({"kind": kind, "family": "ipv4", "address": "127.0.0.1", "port": port})
    elif kind == "thread4":
        sock, thread = self_connect_in_thread(b"worker")
        held.append(sock)
        planted.append(
            {
                "kind": kind,
                "family": "ipv4",
                "address": "127.0.0.1",
                "port": sock.getsockname()[1],
                "thread": thread,
            }
        )
    elif kind == "threads4":
        for _ in range(int(arg)):
            sock, thread = self_connect_in_thread(b"worker")
            port = sock.getsockname()[1]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # abortively: nothing left
            planted.append(
                {
                    "kind": kind,
                    "family": "ipv4",
                    "address": "127.0.0.1",
                    "port": port,
                    "thread": thread,
                }
            )
    elif kind == "natural4":
        port = int(arg)
        sock = socket.socket()
        sock.connect(("127.0.0.1", port))  # no bind: the kernel hands out the source port
        assert sock.getsockname() == sock.getpeername(), "not self-connected: is the range set?"
        held.append(sock)
        planted.append({"kind": kind, "family": "ipv4", "address": "127.0.0.1", "port": port})
    else:
        sys.exit(f"planter: unknown spec {spec!r}")

print(json.dumps({"pid": os.getpid(), "sockets": planted}), flush=True)
sys.stdin.read()
