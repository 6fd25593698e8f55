"""The Linux scan against the real kernel: sockets planted in child processes, each test in a
private network namespace of its own (self-connects never happen in the host's)."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import narcissus
from narcissus.core.scan import ScanReport
from narcissus.core.sockets import TcpSocket
from narcissus.errors import NamespaceGoneError
from narcissus.system import linux
from tests.support import IS_ROOT, PrivateNetns, needs_root, plant, private_netns

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backend")


def found(reports: list[ScanReport]) -> list[TcpSocket]:
    return [sock for report in reports for sock in report.sockets]


def matching(reports: list[ScanReport], port: int) -> list[TcpSocket]:
    return [sock for sock in found(reports) if sock.local_port == port]


def test_finds_planted_self_connects_with_the_owner_pid(isolated: PrivateNetns) -> None:
    with plant("self4", "self6", "selfmapped", netns=isolated) as planted:
        reports = narcissus.scan()
        for spec in planted.sockets:
            hits = matching(reports, int(spec["port"]))  # type: ignore[call-overload]
            assert len(hits) == 1, (spec, found(reports))
            sock = hits[0]
            assert sock.is_self_connected and not sock.is_remnant
            assert sock.family == spec["family"]
            assert sock.local_address == spec["address"] == sock.remote_address
            assert sock.state.name == "ESTABLISHED"
            if IS_ROOT:
                assert [owner.pid for owner in sock.owners] == [planted.pid]
                assert sock.owners[0].process.startswith("python")
        mapped = matching(reports, planted.ports("selfmapped")[0])[0]
        assert mapped.ipv4_mapped and mapped.local_address == "::ffff:127.0.0.1"


def test_never_reports_sockets_that_are_not_self_connected(isolated: PrivateNetns) -> None:
    with plant("pair4", "crossaddr", "listen4:0", "listen6:0", netns=isolated) as planted:
        reported = {sock.local_port for sock in found(narcissus.scan())}
        for spec in planted.sockets:
            assert int(spec["port"]) not in reported, spec  # type: ignore[call-overload]


def test_a_closed_self_connect_shows_as_a_time_wait_remnant_without_owner(
    isolated: PrivateNetns,
) -> None:
    with plant("remnant4", netns=isolated) as planted:
        port = planted.ports("remnant4")[0]
        hits = matching(narcissus.scan(), port)
        assert len(hits) == 1
        assert hits[0].is_remnant and hits[0].owners == ()
        assert "remnant" in hits[0].state_label


@needs_root
def test_kill_destroys_live_and_remnant_sockets_and_frees_the_port(isolated: PrivateNetns) -> None:
    with plant("self4", "remnant4", netns=isolated) as planted:
        live, remnant = planted.ports("self4")[0], planted.ports("remnant4")[0]
        for port in (live, remnant):
            server = socket.socket()
            with pytest.raises(OSError) as caught:
                server.bind(("127.0.0.1", port))
            assert caught.value.errno == errno.EADDRINUSE
            server.close()
        reports = narcissus.scan(kill=True)
        killed = {r.socket.local_port: r.error for report in reports for r in report.killed}
        assert killed[live] == 0 and killed[remnant] == 0
        assert matching(narcissus.scan(), live) == [] and matching(narcissus.scan(), remnant) == []
        for port in (live, remnant):
            server = socket.socket()
            server.bind(("127.0.0.1", port))  # no SO_REUSEADDR: the port is really free
            server.listen()
            server.close()


@needs_root
def test_scans_another_namespace_by_name_and_by_pid(netns: PrivateNetns) -> None:
    with plant("self4", netns=netns) as planted:
        port = planted.ports("self4")[0]
        by_name = narcissus.scan(netns.name)
        assert [r.netns for r in by_name] == [netns.name]
        hits = matching(by_name, port)
        assert len(hits) == 1 and hits[0].netns == netns.name
        assert [owner.pid for owner in hits[0].owners] == [planted.pid]
        assert matching(narcissus.scan(str(planted.pid)), port)
        assert all(sock.netns != netns.name for sock in found(narcissus.scan()))
        everywhere = narcissus.scan(every=True)
        assert any(s.netns == netns.name and s.local_port == port for s in found(everywhere))
        killed = narcissus.scan(netns.name, kill=True)
        assert [r.error for report in killed for r in report.killed] == [0]


@needs_root
def test_every_namespace_leaves_out_one_that_vanished_after_the_listing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a busy host namespaces come and go between the listing and the scan (containers stop,
    another test run deletes its own): a scan of every namespace leaves those out instead of
    failing, while a namespace asked for by name still fails loudly."""
    from narcissus import system
    from narcissus.diagnose.scan import scan_namespaces

    with private_netns() as namespace:
        gone = linux.namespaces(namespace.name)[0]
    listed = [*linux.namespaces(every=True), gone]  # the real listing, taken a moment too early
    monkeypatch.setattr(
        system, "namespaces", lambda spec=None, every=False: listed if every else [gone]
    )
    reports = scan_namespaces(every=True)
    assert [report.netns for report in reports] == [ns.label for ns in listed[:-1]]
    with pytest.raises(NamespaceGoneError, match="no longer exists"):
        scan_namespaces(gone.label)


@needs_root
def test_every_namespace_skips_a_name_not_mounted_yet(netns: PrivateNetns) -> None:
    """`ip netns add` creates /run/netns/NAME as a plain file, then mounts the namespace on it:
    a scan of every namespace in between skips the name instead of failing (setns: EINVAL)."""
    plain = Path(netns.path).with_name(f"{netns.name}-plain")
    plain.touch()
    try:
        labels = [report.netns for report in narcissus.scan(every=True)]
    finally:
        plain.unlink()
    assert netns.name in labels and plain.name not in labels


@needs_root
def test_a_name_that_now_holds_another_namespace_is_gone(netns: PrivateNetns) -> None:
    old = linux.namespaces(netns.name)[0]
    subprocess.run(["ip", "netns", "del", netns.name], check=True)
    subprocess.run(["ip", "netns", "add", netns.name], check=True)
    with pytest.raises(NamespaceGoneError, match="no longer exists"):
        linux.scan(old)


@needs_root
def test_settings_are_read_per_namespace(netns: PrivateNetns) -> None:
    netns.set_port_range(40000, 40100)
    netns.reserve("40010,40020-40030")
    settings = narcissus.ephemeral_ports(netns.name)
    assert (settings.range.low, settings.range.high) == (40000, 40100)
    assert str(settings.reserved) == "40010,40020-40030"
    assert settings.classify(40010).status.value == "reserved"
    assert settings.classify(40002).at_risk
    host = narcissus.ephemeral_ports()
    assert host.range != settings.range


@needs_root
def test_an_unprivileged_user_is_told_owners_are_not_visible(isolated: PrivateNetns) -> None:
    """Scan as `nobody` in a forked child (this interpreter, its modules already loaded)."""
    from narcissus.diagnose.scan import scan_namespaces

    with plant("self4", netns=isolated) as planted:
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            try:
                os.close(read_end)
                os.setgid(65534)
                os.setuid(65534)
                [report] = scan_namespaces()
                mine = [s for s in report.sockets if s.local_port == planted.ports("self4")[0]]
                result = {
                    "found": len(mine),
                    "owners": [o.pid for s in mine for o in s.owners],
                    "visible": report.owners_visible,
                    "notes": list(report.notes),
                }
                os.write(write_end, json.dumps(result).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            result = json.loads(pipe.read())
        os.waitpid(child, 0)
    assert result["found"] == 1 and result["owners"] == []
    assert result["visible"] is False
    assert any("root" in note for note in result["notes"])


def test_listening_sockets_are_found_with_owner() -> None:
    with plant("listen4:0", "listen6:0") as planted:
        listeners, _complete = linux.listening_sockets()
        ports = {sock.local_port: sock for sock in listeners}
        for spec in planted.sockets:
            sock = ports[int(spec["port"])]  # type: ignore[call-overload]
            assert sock.state.name == "LISTEN"
            if IS_ROOT:
                assert planted.pid in [owner.pid for owner in sock.owners]


def test_psutil_backend_finds_the_same_sockets(isolated: PrivateNetns) -> None:
    """The backend other OSes use, exercised for real on this host."""
    from narcissus.system import _portable

    with plant("self4", "pair4", netns=isolated) as planted:
        report = _portable.scan()
        ports = {sock.local_port: sock for sock in report.sockets}
        live = planted.ports("self4")[0]
        assert live in ports and ports[live].is_self_connected
        if IS_ROOT:
            assert ports[live].owners[0].pid == planted.pid
        assert not set(planted.ports("pair4")) & set(ports)


@needs_root
def test_a_namespace_deleted_between_listing_and_scanning_is_skipped(netns: PrivateNetns) -> None:
    """`scan --every` on a busy host: a namespace listed, then deleted before its turn (what
    containers starting and stopping do on a Kubernetes node) is skipped, not an error; one
    named by the user that vanished still is."""
    import subprocess

    from narcissus import system
    from narcissus.diagnose.scan import scan_listed
    from narcissus.errors import InputError
    from tests.support import private_netns

    with private_netns() as doomed, plant("self4", netns=netns) as planted:
        listed = system.namespaces(every=True)
        assert doomed.name in [namespace.label for namespace in listed]
        subprocess.run(["ip", "netns", "del", doomed.name], check=True)
        reports = scan_listed(listed, listed=True)
        assert doomed.name not in [report.netns for report in reports]
        assert matching(reports, planted.ports("self4")[0])  # the others were still scanned
        gone = next(namespace for namespace in listed if namespace.label == doomed.name)
        with pytest.raises(InputError, match="no longer exists"):
            scan_listed([gone])
