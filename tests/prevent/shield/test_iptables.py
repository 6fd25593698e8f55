"""The fallback for kernels without bpf_set_retval: iptables-reject, a rule per namespace that
answers a self-connect's SYN with a reset. Forced here with --mechanism (this kernel has
bpf_set_retval, so `auto` never picks it), always inside a namespace the test creates."""

from __future__ import annotations

import errno
import json
import subprocess

import pytest

from narcissus.core import shield as S
from tests.prevent.shield import clients
from tests.prevent.shield.conftest import P, needs_root_bpf, run_in
from tests.support import PrivateNetns, assert_one_line_error, run_cli

pytestmark = needs_root_bpf

ON = ("shield", "on", "--mechanism", "iptables-reject", "--json")


def _outcome(netns: PrivateNetns, host: str, port: int = P) -> dict[str, object]:
    done = run_in(clients.python(host, port), None, netns)
    assert done.returncode == 0, done.stderr
    outcome: dict[str, object] = json.loads(done.stdout)
    return outcome


def _rules(netns: PrivateNetns) -> str:
    return "".join(
        subprocess.run(
            netns.wrap([tool, "-w", "-S", "OUTPUT"]), capture_output=True, text=True, check=True
        ).stdout
        for tool in ("iptables", "ip6tables")
    )


def test_the_rules_refuse_every_self_connect_of_the_namespace(one_port: PrivateNetns) -> None:
    assert _outcome(one_port, "127.0.0.1")["connected"] is True  # unguarded: itself
    done = run_cli(*ON, netns=one_port)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["active"] and status["mechanism"] == "iptables-reject"
    [scope] = status["cgroups"]
    assert scope["scope"] == "netns" and scope["hooks"] == ["ip6tables", "iptables"]
    assert any("this network namespace only" in note for note in status["notes"])
    again = json.loads(run_cli(*ON, netns=one_port).stdout)
    assert again["changed"] is False  # idempotent: no second copy of the rules
    assert _rules(one_port).count(S.IPTABLES_COMMENT) == 2

    refused = {"connected": False, "errno": errno.ECONNREFUSED}
    assert _outcome(one_port, "127.0.0.1") == refused
    assert _outcome(one_port, "::1") == refused
    assert _outcome(one_port, "::ffff:127.0.0.1") == refused
    counted = json.loads(run_cli("shield", "status", "--json", netns=one_port).stdout)
    assert counted["refused"] == 3

    off = json.loads(run_cli("shield", "off", "--json", netns=one_port).stdout)
    assert off["changed"] is True and off["active"] is False
    assert S.IPTABLES_COMMENT not in _rules(one_port)
    assert _outcome(one_port, "127.0.0.1")["connected"] is True  # and nothing refuses anymore


def test_a_listener_and_other_connects_are_left_alone(netns: PrivateNetns) -> None:
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
        finally:
            server.kill()
            server.wait()
        counted = json.loads(run_cli("shield", "status", "--json", netns=netns).stdout)
        assert counted["refused"] == 0
    finally:
        run_cli("shield", "off", netns=netns)
    assert S.IPTABLES_COMMENT not in _rules(netns)


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


def test_auto_falls_back_to_the_rules_and_a_cgroup_to_eperm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where bpf_set_retval is missing: the rules for `shield on`, EPERM for a cgroup."""
    from narcissus.system.linux import shield

    monkeypatch.setattr(shield, "set_retval_supported", lambda: False)
    assert shield._choose_mechanism(None, cgroup=False) == S.MECHANISM_IPTABLES
    assert shield._choose_mechanism(None, cgroup=True) == S.MECHANISM_EPERM
    monkeypatch.setattr(shield, "iptables_usable", lambda: False)
    assert shield._choose_mechanism(None, cgroup=False) == S.MECHANISM_EPERM
