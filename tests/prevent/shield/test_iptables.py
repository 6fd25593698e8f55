"""The fallback for kernels without bpf_set_retval: iptables-reject, a rule per namespace that
answers a self-connect's SYN with a reset. Forced here with --mechanism (this kernel has
bpf_set_retval, so `auto` never picks it), always inside a namespace the test creates."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from narcissus.core import shield as S
from narcissus.errors import UnsupportedError
from tests.prevent.shield import clients
from tests.prevent.shield.conftest import P, TestCgroup, needs_root_bpf, run_in
from tests.support import PrivateNetns, assert_one_line_error, run_cli

pytestmark = needs_root_bpf

ON = ("shield", "on", "--mechanism", "iptables-reject", "--json")
REFUSED = {"connected": False, "errno": errno.ECONNREFUSED}
OWN_V4, OWN_V6 = "10.215.9.1", "fd00:215::1"  # the namespace's own non-loopback addresses


def _outcome(netns: PrivateNetns, host: str, port: int = P, *options: str) -> dict[str, Any]:
    done = run_in(clients.python(host, port, *options), None, netns)
    assert done.returncode == 0, done.stderr
    outcome: dict[str, Any] = json.loads(done.stdout)
    return outcome


def _rules(netns: PrivateNetns) -> list[str]:
    """Both OUTPUT chains, rule by rule, in order."""
    return [
        line
        for tool in ("iptables", "ip6tables")
        for line in subprocess.run(
            netns.wrap([tool, "-w", "-S", "OUTPUT"]), capture_output=True, text=True, check=True
        ).stdout.splitlines()
    ]


def _ours(netns: PrivateNetns) -> list[str]:
    return [rule for rule in _rules(netns) if S.IPTABLES_COMMENT in rule]


def _scope(status: dict[str, Any]) -> dict[str, Any]:
    """The namespace's entry: status also lists every shielded cgroup of the host."""
    [entry] = [item for item in status["cgroups"] if item["scope"] == "netns"]
    return entry


@pytest.fixture
def firewalled(one_port: PrivateNetns) -> PrivateNetns:
    """A one-port namespace whose firewall already accepts everything on loopback first (as
    ufw and many hand-written rule sets do), and addresses of its own on an interface."""
    for argv in (
        ["iptables", "-w", "-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT"],
        ["ip6tables", "-w", "-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT"],
        ["ip", "link", "add", "own0", "type", "veth", "peer", "name", "own1"],  # no dummy here
        ["ip", "link", "set", "own0", "up"],
        ["ip", "addr", "add", f"{OWN_V4}/24", "dev", "own0"],
        ["ip", "addr", "add", f"{OWN_V6}/64", "dev", "own0", "nodad"],
    ):
        subprocess.run(one_port.wrap(argv), check=True, capture_output=True)
    return one_port


def test_the_rules_refuse_every_self_connect_of_the_namespace(firewalled: PrivateNetns) -> None:
    assert _outcome(firewalled, "127.0.0.1")["connected"] is True  # unguarded: itself
    done = run_cli(*ON, netns=firewalled)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["active"] and _scope(status)["mechanism"] == "iptables-reject"
    assert _scope(status)["hooks"] == ["ip6tables", "iptables"]
    assert any("this network namespace only" in note for note in status["notes"])
    again = json.loads(run_cli(*ON, netns=firewalled).stdout)
    assert again["changed"] is False  # idempotent: no second copy of the rules
    assert len(_ours(firewalled)) == 2
    # first in each chain, ahead of the ACCEPT for loopback that would let a SYN through
    chains = [rule for rule in _rules(firewalled) if rule.startswith("-A OUTPUT")]
    assert [S.IPTABLES_COMMENT in rule for rule in chains] == [True, False, True, False]

    targets = ("127.0.0.1", "::1", "::ffff:127.0.0.1", OWN_V4, OWN_V6)
    for host in targets:
        assert _outcome(firewalled, host) == REFUSED, host
    counted = json.loads(run_cli("shield", "status", "--json", netns=firewalled).stdout)
    assert _scope(counted)["refused"] == len(targets)  # one SYN each, counted by the rules

    off = json.loads(run_cli("shield", "off", "--json", netns=firewalled).stdout)
    assert off["changed"] is True and not [c for c in off["cgroups"] if c["scope"] == "netns"]
    assert _ours(firewalled) == []
    assert len(_rules(firewalled)) == 4  # the firewall's own rules (and policies) stay
    assert _outcome(firewalled, "127.0.0.1")["connected"] is True  # nothing refuses anymore


def test_a_bound_socket_connecting_to_itself_is_refused_too(one_port: PrivateNetns) -> None:
    """The difference from the BPF programs (documented): a SYN carries no sign of whether
    the port was bound, so a deliberate self-connect (bind, then connect to it) is refused."""
    assert run_cli(*ON, netns=one_port).returncode == 0
    try:
        deliberate = _outcome(one_port, "127.0.0.1", P + 7, "--bind", str(P + 7))
        assert deliberate == REFUSED
    finally:
        run_cli("shield", "off", netns=one_port)


def test_a_listener_and_other_connects_are_left_alone(netns: PrivateNetns) -> None:
    """Same address, other ports: a client's SYN to a listener on its own address."""
    netns.set_port_range(P, P + 1)
    assert run_cli(*ON, netns=netns).returncode == 0
    try:
        server = subprocess.Popen(
            netns.wrap(["python3", "-c", LISTENER, str(P)]), stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            reached = _outcome(netns, "127.0.0.1")
            assert reached["connected"] is True and reached["peer"] == ["127.0.0.1", P]
            bound = _outcome(netns, "127.0.0.1", P, "--bind", str(P + 5))
            assert bound["connected"] is True and bound["local"] == ["127.0.0.1", P + 5]
        finally:
            server.kill()
            server.wait()
        counted = json.loads(run_cli("shield", "status", "--json", netns=netns).stdout)
        assert _scope(counted)["refused"] == 0
    finally:
        run_cli("shield", "off", netns=netns)
    assert _ours(netns) == []


LISTENER = """
import socket, sys
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    server.accept()[0].close()
"""


def test_iptables_reject_cannot_be_scoped_to_a_cgroup(netns: PrivateNetns) -> None:
    done = run_cli(*ON, "--cgroup", "/sys/fs/cgroup", netns=netns)
    assert_one_line_error(done, "covers a network namespace, not a cgroup")


# ---------------------------------------------------------------- in this process


@pytest.fixture
def system_shield() -> Iterator[Any]:
    from narcissus.system.linux import shield

    yield shield
    shield.iptables_usable.cache_clear()


def test_auto_falls_back_to_the_rules_and_a_cgroup_to_eperm(
    system_shield: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where bpf_set_retval is missing: the rules for `shield on`, EPERM for a cgroup."""
    monkeypatch.setattr(system_shield, "set_retval_supported", lambda: False)
    assert system_shield._choose_mechanism(None, cgroup=False) == S.MECHANISM_IPTABLES
    assert system_shield._choose_mechanism(None, cgroup=True) == S.MECHANISM_EPERM
    monkeypatch.setattr(system_shield, "iptables_usable", lambda: False)
    assert system_shield._choose_mechanism(None, cgroup=False) == S.MECHANISM_EPERM


def test_rules_that_do_not_go_in_fall_back_to_eperm(
    system_shield: Any, monkeypatch: pytest.MonkeyPatch, cgroup: TestCgroup, netns: PrivateNetns
) -> None:
    """`-m bpf --help` succeeds without the kernel module: when the rule itself is refused,
    `auto` uses bpf-eperm (here on the test's cgroup standing in for the root) and says why;
    nothing of the half-added rules is left."""
    monkeypatch.setattr(system_shield, "set_retval_supported", lambda: False)
    monkeypatch.setattr(system_shield, "iptables_usable", lambda: True)
    monkeypatch.setattr(system_shield, "_target", lambda _path: cgroup.path)
    real = system_shield._xtables

    def ip6tables_refuses(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        if tool == "ip6tables" and "-I" in args:
            return subprocess.CompletedProcess([tool], 2, "", "Couldn't load match `bpf'")
        return real(tool, *args)

    monkeypatch.setattr(system_shield, "_xtables", ip6tables_refuses)
    with netns.entered():
        status = system_shield.shield_on(None).of_cgroup(cgroup.id)  # others may shield too
        try:
            assert status.mechanism == S.MECHANISM_EPERM
            assert any("iptables-reject could not be used" in note for note in status.notes)
            assert _ours(netns) == []  # the IPv4 rule that went in was taken out again
        finally:
            system_shield.shield_off(cgroup.path)
        with pytest.raises(UnsupportedError, match="ip6tables refused the shield's rule"):
            system_shield.shield_on(None, mechanism=S.MECHANISM_IPTABLES)
        assert _ours(netns) == []


def test_off_says_it_removed_the_rules_where_bpffs_holds_pins(
    system_shield: Any, netns: PrivateNetns
) -> None:
    """`off` without --cgroup also looks at the pins; finding none there must not hide that
    it removed the rules."""
    from narcissus.system.linux import bpf

    base = os.path.join(bpf.bpffs_root(mount=False), *system_shield.PIN_SUBDIR)
    made = [d for d in (os.path.dirname(base), base) if not os.path.isdir(d)]
    for directory in made:
        os.mkdir(directory)
    try:
        with netns.entered():
            assert system_shield._iptables_on() is True
            assert system_shield.shield_off().changed is True
            assert _ours(netns) == []
    finally:
        for directory in reversed(made):
            if os.path.isdir(directory):
                os.rmdir(directory)


def test_the_counter_is_read_from_the_listing(system_shield: Any, netns: PrivateNetns) -> None:
    """Packet counts from `iptables -L -v -n -x`, for our comment only (not a longer one)."""
    lookalike = ["-m", "comment", "--comment", f"{S.IPTABLES_COMMENT}-not", "-j", "RETURN"]
    for tool in ("iptables", "ip6tables"):
        subprocess.run(netns.wrap([tool, "-w", "-I", "OUTPUT", "1", *lookalike]), check=True)
    with netns.entered():
        assert system_shield._iptables_rules() == {}
        system_shield._iptables_on()
        try:
            assert system_shield._iptables_rules() == {"iptables": 0, "ip6tables": 0}
        finally:
            system_shield._iptables_off()
