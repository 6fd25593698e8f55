"""Could the OS hand a client this port as its own source port? The guard's first question.

Only a port inside the ephemeral range is ever picked for an unbound client, so only a connect
to such a port can self-connect by accident: for any other port (443, 5432, 6379 on a default
Linux) the guard skips every check, and the common connect costs one comparison.

The range is read from /proc/sys/net/ipv4/ip_local_port_range (~2 us) and trusted for TTL
seconds; a port outside the cached range asks the clock first, so a widened range is noticed
within TTL, while a port inside it is simply checked (a narrowed range costs at most a few
needless getsockname() calls until the next read). The file shows the network namespace of the
thread that reads it: a thread that moves to another namespace with setns() is followed within
TTL, or at once through narcissus's own netns.entered(), which calls `forget()`. On other OSes
reading the range costs a sysctl or netsh run, so every port counts as at risk there.

Standard library only and cheap: imported with the guard in every Python process `narcissus run`
starts. The preload library (narcissus_preload.c) applies the same rule with the same TTL.
"""

from __future__ import annotations

import os
import sys
from time import monotonic

TTL = 0.010  # seconds; a read every 10 ms is < 0.05% of even a connect-only loop
PATH = "/proc/sys/net/ipv4/ip_local_port_range"
_LINUX = sys.platform.startswith("linux")

# [low, high, expires]: empty and expired until the first port outside it asks for a read.
# The guard's hot path compares with state[0] and state[1] inline and calls at_risk() only
# for a port outside them; only refresh() and forget() replace the contents (in one step).
state: list[float] = [1, 0, 0.0]


def at_risk(port: int) -> bool:
    """Is `port` inside the ephemeral range (as last read, at most TTL ago for a "no")?"""
    current = state
    try:
        if current[0] <= port <= current[1]:
            return True
    except TypeError:  # not a number: let the check decide
        return True
    if monotonic() < current[2]:
        return False
    refresh()
    return state[0] <= port <= state[1]


def refresh() -> None:
    """Read the range now. A thread reading the bounds while another replaces them may pair an
    old bound with a new one for one connect: no worse than a range read a moment earlier."""
    low, high = 0, 65535
    if _LINUX:
        try:
            fd = os.open(PATH, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fields = os.read(fd, 64).split()
            finally:
                os.close(fd)
            low, high = int(fields[0]), int(fields[1])
        except (OSError, ValueError, IndexError):
            low, high = 0, 65535
    expires = monotonic() + TTL if _LINUX else float("inf")
    state[:] = [low, high, expires]


def forget() -> None:
    """This thread changed network namespace: read the range again before the next "no"."""
    state[:] = [1, 0, 0.0]
