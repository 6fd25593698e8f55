"""Benchmark helper: hold COUNT loopback connections to a listener on PORT until stdin closes.

Prints "ready" once they are all established. Both ends live in this process (2 descriptors per
connection), so the caller spreads connections over several holders when the fd limit is low.
"""

from __future__ import annotations

import socket
import sys

port, count = int(sys.argv[1]), int(sys.argv[2])
listener = socket.create_server(("127.0.0.1", port), backlog=4096)
held: list[socket.socket] = [listener]
for _ in range(count):
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _address = listener.accept()
    held += [client, accepted]
print("ready", flush=True)
sys.stdin.read()
