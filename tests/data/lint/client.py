"""Café client; the docstring's 40100 is no port."""

import os
import socket
import time

import redis

PORT = 50100
TIMEOUT = 40101
r = redis.Redis(host="localhost", port=50101, socket_timeout=40102)
s = socket.create_connection(("127.0.0.1", 50102), timeout=40103)


def serve(name="é", port=50103, backlog=40104): ...


cfg = {"port": 50104, "retries": 40105}
url = "redis://cache:50105/0"
env = os.environ.get("REDIS_PORT", "50106")
time.sleep(40106)
sizes = ("big", 40107)
