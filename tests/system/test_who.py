"""Who holds a port, against the real kernel: sockets planted in child processes inside a private
network namespace (self-connects never happen in the host's), found through netlink and, for
the backend other OSes use, through psutil."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import narcissus
from narcissus.core.who import PortReport
from narcissus.diagnose.who import holders
from tests.support import PrivateNetns, needs_root, plant

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backend")

P = 7100  # below the namespace's ephemeral range: nothing else is handed it


def look(netns: PrivateNetns, port: int = P) -> PortReport:
    [report] = narcissus.who(port, netns.name)
    return report


def kinds(report: PortReport) -> list[tuple[str, str, str]]:
    return [(h.kind, h.socket.transport, h.socket.family) for h in report.holders]


def test_a_free_port_has_no_holders(netns: PrivateNetns) -> None:
    report = look(netns)
    assert report.free and report.holders == () and report.advice == ()
    assert report.namespaces == (netns.name,)


def test_listeners_ipv4_and_ipv6_with_pid_and_command(netns: PrivateNetns) -> None:
    with plant(f"listen4:{P}", f"listen6:{P}", netns=netns) as planted:
        report = look(netns)
    assert kinds(report) == [("listener", "tcp", "ipv4"), ("listener", "tcp", "ipv6")]
    for holder in report.holders:
        assert holder.socket.state_name == "LISTEN" and holder.socket.remote is None
        [owner] = holder.socket.owners
        assert owner.pid == planted.pid and owner.process.startswith("python")
        assert "planter.py" in owner.command and f"listen4:{P}" in owner.command
        assert holder.socket.netns == netns.name
    assert {h.socket.local for h in report.holders} == {f"127.0.0.1:{P}", f"[::1]:{P}"}
    [advice] = report.advice
    assert advice.startswith(f"stop the listener to free port {P}: pid {planted.pid} (python")
    assert f"kill {planted.pid}" in advice and not report.free


@pytest.mark.parametrize("version", ["4", "6"])
def test_a_client_whose_source_port_it_is(netns: PrivateNetns, version: str) -> None:
    with plant(f"client{version}:{P}", netns=netns) as planted:
        report = look(netns)
        server = look(netns, int(planted.sockets[0]["server_port"]))  # type: ignore[call-overload]
    [holder] = report.holders
    assert holder.kind == "client" and holder.socket.family == f"ipv{version}"
    assert holder.socket.state_name == "ESTABLISHED"
    assert holder.socket.remote is not None
    assert holder.socket.remote.endswith(f":{planted.sockets[0]['server_port']}")
    assert [o.pid for o in holder.socket.owners] == [planted.pid]
    # P is below the namespace's range (32768-60999): the client bound it on purpose.
    assert "bound on purpose" in report.advice[0]
    # The other end: the server's listener and the connection it accepted.
    assert [h.kind for h in server.holders] == ["listener", "other"]
    assert "accepted by the listener" in server.holders[1].detail


def test_a_client_handed_a_port_inside_the_range_is_told_to_reserve(netns: PrivateNetns) -> None:
    with plant("client4:40002", netns=netns):
        report = look(netns, 40002)
    assert [h.kind for h in report.holders] == ["client"]
    assert report.advice[0].endswith(f"ip netns exec {netns.name} narcissus reserve 40002")


@pytest.mark.parametrize(("spec", "family"), [("self4", "ipv4"), ("self6", "ipv6")])
def test_a_self_connect_and_then_its_time_wait_remnant(
    netns: PrivateNetns, spec: str, family: str
) -> None:
    with plant(f"{spec}:{P}", netns=netns) as planted:
        live = look(netns)
    [holder] = live.holders
    assert holder.kind == "self-connect" and holder.socket.family == family
    assert holder.self_connected and holder.socket.local == holder.socket.remote
    assert [o.pid for o in holder.socket.owners] == [planted.pid]
    assert f"narcissus scan --kill --netns {netns.name}" in live.advice[0]
    # The planter closed it on exit, normally: its 4-tuple now sits in TIME_WAIT, ownerless.
    [remnant] = look(netns).holders
    assert remnant.kind == "time-wait" and remnant.self_connected
    assert remnant.socket.owners == ()
    seconds = remnant.socket.seconds_left
    assert seconds is not None and 0 < seconds <= 60


def test_a_planted_remnant_with_the_seconds_left(netns: PrivateNetns) -> None:
    with plant(f"remnant6:{P}", netns=netns):
        report = look(netns)
    [holder] = report.holders
    assert (holder.kind, holder.socket.family, holder.socket.state_name) == (
        "time-wait",
        "ipv6",
        "TIME_WAIT",
    )
    seconds = holder.socket.seconds_left
    assert seconds is not None and 0 < seconds <= 60
    assert report.advice[0].startswith("wait ")
    assert f"narcissus scan --kill --netns {netns.name}" in report.advice[0]


def test_udp_listener_client_and_self_connect(netns: PrivateNetns) -> None:
    with plant(f"udp6:{P}", f"udpclient4:{P + 1}", f"udpself4:{P + 2}", netns=netns) as planted:
        [listener, client, itself] = narcissus.who([P, P + 1, P + 2], netns.name)
    assert [(h.kind, h.socket.transport, h.socket.state_name) for h in listener.holders] == [
        ("listener", "udp", "UNCONN")
    ]
    assert [(h.kind, h.socket.transport) for h in client.holders] == [("client", "udp")]
    assert [(h.kind, h.socket.transport) for h in itself.holders] == [("self-connect", "udp")]
    for report in (listener, client, itself):
        assert [o.pid for o in report.holders[0].socket.owners] == [planted.pid]
    assert itself.advice[0].startswith(f"stop pid {planted.pid}")


def test_a_socket_only_bound_is_other(netns: PrivateNetns) -> None:
    with plant(f"bound4:{P}", netns=netns) as planted:
        report = look(netns)
    [holder] = report.holders
    assert (holder.kind, holder.socket.state_name) == ("other", "BOUND")
    assert [o.pid for o in holder.socket.owners] == [planted.pid]
    assert "(BOUND)" in report.advice[0]


def test_every_kind_on_one_port_at_once(netns: PrivateNetns) -> None:
    """A listener on ::1, a client on 127.0.0.1, a self-connect on 127.0.0.2, a UDP socket."""
    with (
        plant(f"listen6:{P}", f"client4:{P}", f"udp4:{P}", netns=netns) as first,
        plant(f"self4:{P}@127.0.0.2", netns=netns) as second,
    ):
        report = look(netns)
    pids = {h.kind: [o.pid for o in h.socket.owners] for h in report.holders}
    assert [h.kind for h in report.holders] == ["self-connect", "client", "listener", "listener"]
    assert pids == {"self-connect": [second.pid], "client": [first.pid], "listener": [first.pid]}
    assert len(report.advice) == 3


def test_the_watcher_hook_takes_a_namespace_value(netns: PrivateNetns) -> None:
    """What `watch --binds` will call when bind(P) fails in the process with this pid."""
    from narcissus import system

    with plant(f"self4:{P}", netns=netns) as planted:
        [namespace] = system.namespaces(str(planted.pid))
        report = holders(P, namespace)
    assert [h.kind for h in report.holders] == ["self-connect"]
    assert report.namespaces == (f"pid:{planted.pid}",)
    assert f"narcissus scan --kill --netns {planted.pid};" in report.advice[0]
    assert report.advice[0].endswith(f"nsenter -t {planted.pid} -n narcissus reserve {P}")


def test_ports_are_checked() -> None:
    for bad in (0, 70000, "abc", -1):
        with pytest.raises(narcissus.InputError):
            narcissus.who(bad)  # type: ignore[arg-type]
    with pytest.raises(narcissus.InputError, match="no network namespace named"):
        narcissus.who(P, "narcissus-no-such-namespace")


def test_psutil_backend_finds_the_same_holders(netns: PrivateNetns) -> None:
    """The backend other OSes use, run for real here inside the namespace."""
    from narcissus.core.who import classify
    from narcissus.system import _portable

    with (
        plant(f"listen4:{P}", f"client6:{P}", f"udp4:{P}", netns=netns) as planted,
        netns.entered(),
    ):
        found = _portable.sockets_on_ports([P])
    got = sorted((h.kind, h.socket.transport, h.socket.family) for h in classify(found.sockets))
    assert got == [
        ("client", "tcp", "ipv6"),
        ("listener", "tcp", "ipv4"),
        ("listener", "udp", "ipv4"),
    ]
    for sock in found.sockets:
        assert [o.pid for o in sock.owners] == [planted.pid]
        assert "planter.py" in sock.owners[0].command


def test_the_bytecode_filter_keeps_exactly_the_ports_asked(netns: PrivateNetns) -> None:
    """Many sockets on other ports, a few on the ones asked: the kernel returns only those."""
    from narcissus import system

    [namespace] = system.namespaces(netns.name)
    with plant(*(f"bound4:{port}" for port in range(P, P + 40)), netns=netns):
        found = system.sockets_on_ports([P + 3, P + 17, P + 39, P + 90], namespace)
        one = system.sockets_on_ports([P + 5], namespace)
    assert sorted(s.local_port for s in found.sockets) == [P + 3, P + 17, P + 39]
    assert [s.local_port for s in one.sockets] == [P + 5]


@needs_root
def test_a_namespace_that_went_away_is_skipped_only_when_looking_everywhere() -> None:
    """--all-netns lists namespaces, then enters each: one whose last process exits between
    the two is passed over (a busy host starts and ends containers all the time)."""
    from narcissus import system
    from narcissus.core.namespaces import Netns
    from narcissus.diagnose.who import look
    from narcissus.errors import NamespaceGoneError

    sleeper = subprocess.Popen(["unshare", "-n", "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        [gone] = system.namespaces(str(sleeper.pid))
        while gone.inode == system.namespaces()[0].inode and time.monotonic() < deadline:
            time.sleep(0.01)  # unshare has not switched yet
            [gone] = system.namespaces(str(sleeper.pid))
        assert gone.inode != system.namespaces()[0].inode
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.raises(NamespaceGoneError, match="no longer exists"):
        look([P], [gone])
    here = system.namespaces()[0]
    assert [found.netns for found in look([P], [gone, here], skip_gone=True)] == [here.label]
    # A pid reused by a process in another namespace is not entered as if it were the old one.
    stale = Netns("pid:1", "/proc/self/ns/net", here.inode + 1)
    with pytest.raises(NamespaceGoneError):
        look([P], [stale])
