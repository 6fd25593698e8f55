"""Pinned mode: our own socket with IP_LOCAL_PORT_RANGE set to (P, P), so the kernel has exactly
one port to hand it and the first attempt self-connects (Linux >= 6.3; ~75 us).

The option narrows the namespace's range and cannot widen it: a port outside the range or
reserved is ignored by the kernel, which is why the preflight refuses those.
"""

from __future__ import annotations

import errno
import socket
import struct
import time

from narcissus.errors import UnsupportedError
from narcissus.repro import client
from narcissus.repro.model import Reached, ReproRequest, ReproResult
from narcissus.repro.target import Target


def run_pinned(
    request: ReproRequest, target: Target, reached: Reached | None = None
) -> ReproResult:
    def pin(sock: socket.socket) -> None:
        try:
            value = struct.pack("=I", target.port | (target.port << 16))
            sock.setsockopt(socket.IPPROTO_IP, client.IP_LOCAL_PORT_RANGE, value)
        except OSError as exc:
            if exc.errno in (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
                raise UnsupportedError(
                    "--mode pinned needs Linux >= 6.3 (IP_LOCAL_PORT_RANGE); use --mode steer "
                    "or --mode isolate"
                ) from exc
            raise

    return client.connect_once(request, target, time.monotonic(), prepare=pin, reached=reached)
