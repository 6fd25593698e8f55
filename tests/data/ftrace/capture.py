"""Record the trace_pipe lines the parser tests read (root; run on the machine to record):

    sudo .venv/bin/python tests/data/ftrace/capture.py tests/data/ftrace

Every self-connect happens inside private network namespaces this script creates and deletes,
through the same tracing instance `narcissus watch` uses (narcissus.system.linux.ftrace). The
tracepoint sees the whole host, so only lines with the ports the children print are kept.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from narcissus.core.sock_trace import EVENT, SELF_CONNECT_FILTER
from narcissus.system.linux.ftrace import TraceInstance

SELF_CONNECTS = r"""
import socket, struct, threading

def bound(family, address):
    sock = socket.socket(family)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((address, 0))
    sock.connect((address, sock.getsockname()[1]))
    print(sock.getsockname()[1])
    sock.close()

def unbound(family, address, port):
    # IP_LOCAL_PORT_RANGE (Linux >= 6.3) = (port, port): the kernel picks `port` itself
    sock = socket.socket(family)
    sock.setsockopt(socket.IPPROTO_IP, 51, struct.pack("I", port | port << 16))
    sock.connect((address, port))
    print(port)
    sock.close()

bound(socket.AF_INET, "127.0.0.1")
bound(socket.AF_INET6, "::1")
bound(socket.AF_INET6, "::ffff:127.0.0.1")
worker = threading.Thread(target=bound, args=(socket.AF_INET, "127.0.0.1"))
worker.start()
worker.join()
unbound(socket.AF_INET, "127.0.0.1", 45000)
unbound(socket.AF_INET6, "::1", 45002)
"""

RENAMED = r"""
import ctypes, socket
ctypes.CDLL(None).prctl(15, b"my worker-2 x", 0, 0, 0)  # PR_SET_NAME: spaces and dashes
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.connect(sock.getsockname())
print(sock.getsockname()[1])
"""

FLOOD = r"""
import socket, sys
for _ in range(int(sys.argv[1])):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        sock.connect(sock.getsockname())
    except BlockingIOError:
        pass
    print(sock.getsockname()[1])
    sock.close()
"""

# Two different sockets dialling each other while the link between them is down: when it comes
# back, each SYN meets a socket in SYN_SENT (a genuine simultaneous open, not a self-connect).
SIMULTANEOUS_OPEN = r"""
set -e
ip netns add capture-so1; ip netns add capture-so2
trap 'ip netns del capture-so1; ip netns del capture-so2' EXIT
ip link add capv1 netns capture-so1 type veth peer name capv2 netns capture-so2
ip -n capture-so1 addr add 10.99.0.1/24 dev capv1
ip -n capture-so2 addr add 10.99.0.2/24 dev capv2
ip -n capture-so1 link set capv1 up; ip -n capture-so2 link set capv2 up
ip -n capture-so2 link set capv2 down
dial='import socket, sys, time
s = socket.socket(); s.bind((sys.argv[1], int(sys.argv[2]))); s.setblocking(False)
try: s.connect((sys.argv[3], int(sys.argv[4])))
except BlockingIOError: pass
time.sleep(3)'
ip netns exec capture-so1 python3 -c "$dial" 10.99.0.1 7001 10.99.0.2 7002 &
sleep 0.3
ip -n capture-so2 link set capv2 up
ip netns exec capture-so2 python3 -c "$dial" 10.99.0.2 7002 10.99.0.1 7001
wait
"""


def in_netns(code: str, *args: str) -> set[str]:
    """Run `code` in a fresh namespace; the `sport=` fields of the ports it printed."""
    name = "capture-ns"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        done = subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, "-c", code, *args],
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    return {f"sport={port} " for port in done.stdout.split()}


def drain(instance: TraceInstance, *marks: str) -> list[str]:
    """What the instance caught, keeping loss reports and lines carrying one of `marks`."""
    time.sleep(0.2)
    lines: list[str] = []
    while batch := instance.read_lines(0.1):
        lines += [line for line in batch if "LOST" in line or any(mark in line for mark in marks)]
    return lines


def record(options: dict[str, str], buffer_kb: int | None = None) -> TraceInstance:
    instance = TraceInstance(EVENT, SELF_CONNECT_FILTER, options=options).open()
    if buffer_kb is not None:
        Path(instance.path, "buffer_size_kb").write_text(str(buffer_kb))
    return instance


def main(out: Path) -> None:
    def write(name: str, lines: list[str]) -> None:
        (out / name).write_text("\n".join(lines) + "\n")

    with record({"record-tgid": "1"}) as instance:
        ports = in_netns(SELF_CONNECTS) | in_netns(RENAMED)
        write("self_connects.txt", drain(instance, *ports))
    with record({"record-tgid": "0"}) as instance:
        write("without_tgid.txt", drain(instance, *in_netns(SELF_CONNECTS)))
    with record({"record-tgid": "1"}) as instance:
        subprocess.run(["bash", "-c", SIMULTANEOUS_OPEN], check=True)
        write("simultaneous_open.txt", drain(instance, "saddr=10.99.0."))
    with record({"record-tgid": "1"}, buffer_kb=4) as instance:
        # more than a 4 KiB per-CPU buffer holds: the kernel drops some
        lines = drain(instance, *in_netns(FLOOD, "600"))
        lost = next(i for i, line in enumerate(lines) if "LOST" in line)
        write("lost_events.txt", lines[max(0, lost - 2) : lost + 3])


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
