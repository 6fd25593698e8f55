"""The pure half of `narcissus who`: the port filter the kernel runs, the records it decodes, the
kinds and the advice. The real kernel's answers are in tests/system/test_who.py."""

from __future__ import annotations

import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from narcissus.core import inet_diag as diag
from narcissus.core.ephemeral import EphemeralPorts
from narcissus.core.ports import PortRange, PortSet
from narcissus.core.sockets import Owner, Socket, TcpState
from narcissus.core.who import advise, classify, in_namespace
from tests.core.test_inet_diag import audit, run

# ---------------------------------------------------------------- the kernel's side


@given(st.lists(st.integers(1, 65535), min_size=1, max_size=40, unique=True), st.integers(0, 65535))
def test_the_port_filter_accepts_exactly_the_ports_asked(ports: list[int], sport: int) -> None:
    code = diag.local_ports_filter(ports)
    audit(code)
    assert run(code, sport, 1234) == (sport in ports)


def test_the_largest_port_filter_fits_one_attribute() -> None:
    code = diag.local_ports_filter(list(range(1, 1025)))
    audit(code)
    assert len(code) + 4 < 65535
    assert run(code, 1024, 0) and not run(code, 1025, 0)


def test_a_port_request_names_protocol_and_port() -> None:
    request = diag.build_dump_request(
        socket.AF_INET, 0xFFFFFFFF, protocol=socket.IPPROTO_UDP, local_port=6379, seq=3
    )
    family, protocol, _ext, _pad, states = diag.REQ_V2.unpack_from(request, 16)
    assert (family, protocol, states) == (socket.AF_INET, socket.IPPROTO_UDP, 0xFFFFFFFF)
    sport, dport, src, dst = diag.SOCKID.unpack_from(request, 16 + 8)
    assert (sport, dport, src, dst) == (6379, 0, bytes(16), bytes(16))
    assert len(request) == 16 + 56  # no bytecode asked: no attribute


def _record(state: int, expires: int, *, sport: int = 7000, dport: int = 7000) -> bytes:
    raw = socket.inet_pton(socket.AF_INET, "127.0.0.1").ljust(16, b"\0")
    body = struct.pack("=BBBB", socket.AF_INET, state, 3, 0)
    body += diag.SOCKID.pack(sport, dport, raw, raw) + diag.SOCKID_TAIL.pack(0, 1, 0)
    body += struct.pack("=IIIII", expires, 0, 0, 0, 0)
    return diag.NLMSG_HEADER.pack(16 + len(body), diag.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


def test_time_wait_records_carry_the_milliseconds_left() -> None:
    buf = _record(TcpState.TIME_WAIT, 41_250) + _record(TcpState.ESTABLISHED, 200, dport=80)
    buf += diag.NLMSG_HEADER.pack(20, diag.NLMSG_DONE, 2, 1, 0) + bytes(4)
    records, done = diag.walk_records(buf, seq=1)
    assert done and len(records) == 2
    remnant, live = (diag.decode_port_socket(buf, at, "tcp", "ns") for at in records)
    assert remnant.seconds_left == 41.25 and remnant.is_self_connected
    assert live.seconds_left is None and live.expires_ms is None  # a retransmit timer, not TW
    assert (remnant.transport, remnant.netns, live.remote) == ("tcp", "ns", "127.0.0.1:80")


# ---------------------------------------------------------------- kinds


def sock(
    transport: str = "tcp",
    state: TcpState = TcpState.ESTABLISHED,
    local: tuple[str, int] = ("127.0.0.1", 7000),
    remote: tuple[str, int] = ("0.0.0.0", 0),
    *,
    family: str = "ipv4",
    netns: str = "host",
    pids: tuple[int, ...] = (),
    expires_ms: int | None = None,
) -> Socket:
    owners = tuple(Owner(pid, f"proc{pid}") for pid in pids)
    return Socket(
        family,
        *local,
        *remote,
        state,
        netns=netns,
        owners=owners,
        expires_ms=expires_ms,
        transport=transport,
    )


LISTEN = sock(state=TcpState.LISTEN, local=("127.0.0.2", 7000), pids=(10,))
WILDCARD = sock(state=TcpState.LISTEN, local=("0.0.0.0", 7000), pids=(10,))
CLIENT = sock(remote=("10.0.0.9", 6379), pids=(11,))
SELF = sock(remote=("127.0.0.1", 7000), pids=(12,))
REMNANT = sock(state=TcpState.TIME_WAIT, remote=("127.0.0.1", 7000), expires_ms=12_300)
BOUND = sock(state=TcpState.CLOSE, pids=(13,))
UDP_BOUND = sock("udp", TcpState.CLOSE, pids=(14,))
UDP_CONNECTED = sock("udp", remote=("127.0.0.1", 53), pids=(15,))


def kinds_of(*sockets: Socket) -> list[str]:
    return [holder.kind for holder in classify(sockets)]


def test_each_kind_alone() -> None:
    assert kinds_of(LISTEN) == ["listener"]
    assert kinds_of(CLIENT) == ["client"]
    assert kinds_of(SELF) == ["self-connect"]
    assert kinds_of(REMNANT) == ["time-wait"]
    assert kinds_of(BOUND) == ["other"]
    assert kinds_of(UDP_BOUND) == ["listener"]
    assert kinds_of(UDP_CONNECTED) == ["client"]
    assert kinds_of(sock("udp", remote=("127.0.0.1", 7000))) == ["self-connect"]


def test_a_connection_a_listener_accounts_for_was_accepted() -> None:
    accepted = sock(remote=("127.0.0.1", 50123))
    assert kinds_of(WILDCARD, accepted) == ["listener", "other"]
    assert "accepted by the listener" in classify([WILDCARD, accepted])[1].detail
    same = sock(state=TcpState.LISTEN, local=("127.0.0.1", 7000))
    assert kinds_of(same, accepted) == ["listener", "other"]
    # ...but not a listener on another address, in another namespace, or of another family.
    elsewhere = LISTEN
    other_ns = sock(state=TcpState.LISTEN, local=("0.0.0.0", 7000), netns="pod")
    six = sock(state=TcpState.LISTEN, local=("::", 7000), family="ipv6")
    for listener in (elsewhere, other_ns, six):
        assert kinds_of(listener, accepted) == ["client", "listener"]
    # A self-connect stays one even beside a listener (it never came through it).
    assert kinds_of(WILDCARD, SELF) == ["self-connect", "listener"]


def test_holders_come_in_advice_order() -> None:
    mixed = [BOUND, LISTEN, CLIENT, REMNANT, SELF]
    assert kinds_of(*mixed) == ["self-connect", "time-wait", "client", "listener", "other"]


def test_state_names_for_sockets_that_only_bound() -> None:
    assert BOUND.state_name == "BOUND" and UDP_BOUND.state_name == "UNCONN"
    assert UDP_CONNECTED.state_name == "ESTABLISHED" and LISTEN.remote is None


# ---------------------------------------------------------------- advice


def test_one_line_per_kind_with_commands_to_run() -> None:
    holders = classify([SELF, REMNANT, CLIENT, LISTEN, BOUND])
    lines = advise(7000, holders, namespace_flags=" --netns pod")
    assert len(lines) == 5
    itself, remnant, client, listener, other = lines
    assert "pid 12 (proc12)" in itself and "narcissus scan --kill --netns pod;" in itself
    assert itself.endswith("narcissus reserve 7000")
    assert remnant.startswith("wait 13 s for the TIME_WAIT entry a closed self-connect left")
    assert "narcissus scan --kill --netns pod" in remnant
    assert "source port of a connection of pid 11 (proc11)" in client
    assert client.endswith("narcissus reserve 7000")
    assert "pid 10 (proc10); kill 10 or stop its service" in listener
    assert "port 7000 is held by pid 13 (proc13) (BOUND)" in other


def test_time_wait_of_an_ordinary_connection_suggests_so_reuseaddr() -> None:
    closed = sock(state=TcpState.TIME_WAIT, remote=("10.0.0.1", 443), expires_ms=59_001)
    [line] = advise(7000, classify([closed]))
    assert line.startswith("wait 60 s for TIME_WAIT on port 7000 to end") and "SO_REUSEADDR" in line


def test_a_client_outside_the_range_bound_the_port_itself() -> None:
    linux = EphemeralPorts("linux", PortRange(32768, 60999), PortSet(), "test")
    [outside] = advise(7000, classify([CLIENT]), settings={"host": linux})
    assert "bound on purpose" in outside and "32768-60999" in outside
    inside = sock(local=("127.0.0.1", 40000), remote=("10.0.0.9", 6379), pids=(11,))
    [reserve] = advise(40000, classify([inside]), settings={"host": linux})
    assert reserve.endswith("narcissus reserve 40000")


def test_hidden_owners_are_said_to_be_hidden() -> None:
    [line] = advise(7000, classify([sock(state=TcpState.LISTEN)]), owners_visible=False)
    assert "hidden from this user" in line and "kill" not in line


def test_commands_run_inside_the_holder_namespace() -> None:
    assert in_namespace("host", "x") == "x"
    assert in_namespace("net:[4026531840]", "x") == "x"
    assert in_namespace("pod-1", "x") == "ip netns exec pod-1 x"
    assert in_namespace("pid:42", "x") == "nsenter -t 42 -n x"
    assert in_namespace("/run/docker/netns/ab c", "x") == "nsenter --net='/run/docker/netns/ab c' x"


def test_owners_are_named_up_to_five() -> None:
    from narcissus.core.who import owners_text

    many = classify([sock(remote=("10.0.0.9", port), pids=(port,)) for port in range(1, 9)])
    assert owners_text(many) == "pids 1, 2, 3, 4, 5 and 3 more (proc1, proc2, proc3, proc4, proc5)"
    assert owners_text(classify([SELF])) == "pid 12 (proc12)"
