"""One of the small tools from the original self-connect report.

Each tool connects to a local Redis on start, names itself with CLIENT SETNAME, subscribes to its
own channel, greets its peers over Pub/Sub, and while Redis is down reconnects every 200 ms. If
its port lies inside the ephemeral range, one of those reconnects can be handed the very port it
dials: the client talks to itself, reads back its own handshake, and crashes the way its users
saw (redis-py: AttributeError in on_connect). Run it under `narcissus run` and the guard turns
that into a ConnectionError, so the retry loop simply carries on until Redis is really there.

    python tool.py tool-1 --port 6380 --expect 1 &
    python tool.py tool-2 --port 6380 --peer tool-1
"""

from __future__ import annotations

import argparse
import sys
import time

import redis

RETRY_SECONDS = 0.2


def connect(name: str, port: int, deadline: float) -> redis.Redis:
    """Connect and name ourselves, retrying every 200 ms until `deadline` (as the report's tools
    did while Redis was restarting)."""
    attempts = 0
    while True:
        attempts += 1
        client = redis.Redis(host="127.0.0.1", port=port, client_name=name, socket_timeout=5)
        try:
            client.ping()
        except redis.ConnectionError as exc:
            client.close()
            if time.monotonic() > deadline:
                why = f"{name}: Redis never came up ({attempts} attempts): {exc}"
                raise SystemExit(why) from exc
            time.sleep(RETRY_SECONDS)
            continue
        print(f"{name}: connected after {attempts} attempt(s)", flush=True)
        return client


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--port", type=int, default=6380)
    parser.add_argument("--peer", action="append", default=[], help="a tool to greet")
    parser.add_argument("--expect", type=int, default=0, help="greetings to wait for")
    parser.add_argument("--seconds", type=float, default=30.0, help="give up after this long")
    options = parser.parse_args()
    deadline = time.monotonic() + options.seconds
    client = connect(options.name, options.port, deadline)
    named = client.client_getname()
    print(f"{options.name}: Redis knows me as {named!r}", flush=True)
    pubsub = client.pubsub()
    pubsub.subscribe(f"to:{options.name}")
    for peer in options.peer:
        # Greet until the peer is subscribed to hear it (PUBLISH counts the receivers).
        while not client.publish(f"to:{peer}", f"hello from {options.name}"):
            if time.monotonic() > deadline:
                raise SystemExit(f"{options.name}: {peer} never subscribed")
            time.sleep(RETRY_SECONDS)
        print(f"{options.name}: greeted {peer}", flush=True)
    received = 0
    while received < options.expect and time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            received += 1
            print(f"{options.name}: got {message['data'].decode()!r}", flush=True)
    pubsub.close()
    client.close()
    return 0 if received >= options.expect else 1


if __name__ == "__main__":
    sys.exit(main())
