"""Lines of the kernel tracepoint `sock:inet_sock_set_state` as ftrace's `trace_pipe` prints them.

Rules: pure, no I/O. `narcissus.system.linux.ftrace` runs the tracing instance that prints these
lines; `narcissus.diagnose.watch` turns the self-connects among them into events.

Theory (shared FACTS, re-measured on Linux 6.18): a socket that connects to itself goes through
TCP simultaneous open, SYN_SENT -> SYN_RECV, a transition an ordinary connect() never makes (it
goes SYN_SENT -> ESTABLISHED). `SELF_CONNECT_FILTER` keeps only that transition in the kernel,
so a quiet host produces no lines at all. Keyed on SYN_RECV, not SYN_SENT: an unbound connect()
has source port 0 at SYN_SENT. A genuine simultaneous open between two *different* sockets
makes the same transition (measured across a veth pair), and ftrace filters can only compare a
field with a constant, so the line's own ports and addresses decide (`is_self_connect`).

Line shape with the instance option `record-tgid` (thread id, then the process id):

    <comm>-<tid> (<tgid>) [<cpu>] <flags> <seconds>: inet_sock_set_state: family=AF_INET ...

- `comm` may contain spaces and dashes; it reads `<...>` when ftrace has not saved the thread's
  name yet (measured: up to a quarter of the lines of a fresh process), and `<tgid>` reads
  `-------` when unknown; without `record-tgid` the `(<tgid>)` column is absent.
- The task is the one the kernel ran in when the transition happened. For a self-connect that is
  the connecting process (its own SYN reaches it, processed on its way out or when connect()
  releases the socket), in process or softirq context alike; only when the kernel deferred the
  packet to `ksoftirqd/N` (or the idle task) does the line name no process.
- IPv6 lines carry garbage in the IPv4 fields, and IPv4 lines the v4-mapped form in the IPv6
  fields: read the fields of the line's family.
- Events the ring buffer had to drop show up as their own line, `CPU:<n> [LOST <count> EVENTS]`.
"""

from __future__ import annotations

import re

from narcissus.core.sockets import TcpState
from narcissus.core.values import Value

EVENT = "sock/inet_sock_set_state"
IPPROTO_TCP = 6
SELF_CONNECT_FILTER = (
    f"protocol == {IPPROTO_TCP} && oldstate == {int(TcpState.SYN_SENT)} "
    f"&& newstate == {int(TcpState.SYN_RECV)}"
)

_LINE = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<tid>\d+)\s+"
    r"(?:\(\s*(?P<tgid>\d+|-+)\)\s+)?"
    r"\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>[^\s:]+)\s+)?"
    r"(?P<seconds>\d+\.\d+):\s+"
    r"inet_sock_set_state:\s+(?P<fields>.*?)\s*$"
)
_LOST = re.compile(r"^\s*CPU:(?P<cpu>\d+)\s+\[LOST\s+(?P<count>\d+)\s+EVENTS\]\s*$")
_FAMILIES = {"AF_INET": "ipv4", "AF_INET6": "ipv6"}
_UNKNOWN_COMM = "<...>"
# Tasks that run packets for others: a line naming one of them names no socket owner.
_KERNEL_TASKS = ("ksoftirqd/", "<idle>", "swapper/")


class TraceFormatError(ValueError):
    """A line that looks like an inet_sock_set_state event but cannot be read."""


class StateChange(Value):
    """One TCP state transition as the tracepoint reported it.

    `comm` is None when ftrace did not know the thread's name; `tgid` (the process id) is None
    without `record-tgid` or when ftrace did not know it. `seconds` is on the instance's trace
    clock. Addresses are printable strings of the line's family.
    """

    __slots__ = (
        "comm",
        "cpu",
        "daddr",
        "dport",
        "family",
        "newstate",
        "oldstate",
        "saddr",
        "seconds",
        "sport",
        "tgid",
        "tid",
    )

    def __init__(
        self,
        comm: str | None,
        tid: int,
        tgid: int | None,
        cpu: int,
        seconds: float,
        family: str,
        sport: int,
        dport: int,
        saddr: str,
        daddr: str,
        oldstate: TcpState,
        newstate: TcpState,
    ) -> None:
        self.comm = comm
        self.tid = tid
        self.tgid = tgid
        self.cpu = cpu
        self.seconds = seconds
        self.family = family
        self.sport = sport
        self.dport = dport
        self.saddr = saddr
        self.daddr = daddr
        self.oldstate = oldstate
        self.newstate = newstate

    @property
    def is_self_connect(self) -> bool:
        """Both ends are the same address and port: the socket reached itself."""
        return self.sport == self.dport and self.sport != 0 and self.saddr == self.daddr

    @property
    def in_kernel_task(self) -> bool:
        """The kernel ran this in a task of its own (ksoftirqd, idle), not in the process that
        made the socket, so the line does not say who that was."""
        if self.tid == 0:
            return True
        return self.comm is not None and self.comm.startswith(_KERNEL_TASKS)


class LostEvents(Value):
    """The kernel dropped `count` events on one CPU: its ring buffer was full."""

    __slots__ = ("count", "cpu")

    def __init__(self, cpu: int, count: int) -> None:
        self.cpu = cpu
        self.count = count


def _fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if sep:
            fields[key] = value
    return fields


def _state(name: str) -> TcpState:
    try:
        return TcpState[name.removeprefix("TCP_")]
    except KeyError:
        raise TraceFormatError(f"unknown TCP state {name!r}") from None


def parse_line(line: str) -> StateChange | LostEvents | None:
    """Read one trace_pipe line; None for lines that are neither this event nor a loss report.

    Raises TraceFormatError for an inet_sock_set_state line without the fields it must carry.
    """
    match = _LINE.match(line)
    if match is None:
        lost = _LOST.match(line)
        if lost is None:
            return None
        return LostEvents(int(lost["cpu"]), int(lost["count"]))
    fields = _fields(match["fields"])
    family = _FAMILIES.get(fields.get("family", ""))
    if family is None:
        raise TraceFormatError(f"not an IPv4 or IPv6 socket: {line.strip()!r}")
    suffix = "v6" if family == "ipv6" else ""
    try:
        sport, dport = int(fields["sport"]), int(fields["dport"])
        saddr, daddr = fields["saddr" + suffix], fields["daddr" + suffix]
        oldstate, newstate = _state(fields["oldstate"]), _state(fields["newstate"])
    except (KeyError, ValueError) as exc:
        raise TraceFormatError(f"cannot read {exc} in {line.strip()!r}") from None
    comm = match["comm"].strip()
    tgid = match["tgid"]
    return StateChange(
        comm=None if comm == _UNKNOWN_COMM else comm,
        tid=int(match["tid"]),
        tgid=int(tgid) if tgid and tgid.isdigit() else None,
        cpu=int(match["cpu"]),
        seconds=float(match["seconds"]),
        family=family,
        sport=sport,
        dport=dport,
        saddr=saddr,
        daddr=daddr,
        oldstate=oldstate,
        newstate=newstate,
    )
