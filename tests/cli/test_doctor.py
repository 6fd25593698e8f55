"""`narcissus doctor`, run as a user runs it, inside namespaces whose settings the test owns."""

from __future__ import annotations

import json

import pytest

from tests.support import PrivateNetns, assert_one_line_error, plant, run_cli


def doctor_json(netns: PrivateNetns, *args: str) -> tuple[int, dict[str, object]]:
    done = run_cli("doctor", "--json", *args, netns=netns)
    assert done.stderr == "", done.stderr
    return done.returncode, json.loads(done.stdout)


def test_clean_namespace_is_healthy(netns: PrivateNetns) -> None:
    netns.set_port_range(40000, 40999)
    status, report = doctor_json(netns)
    assert status == 0
    assert report["ephemeral_range"] == [40000, 40999]
    assert report["reserved_ports"] == []
    assert report["at_risk"] == [] and report["self_connected"] == []
    assert report["fix"] is None


def test_flags_a_listener_inside_the_range_not_one_outside(netns: PrivateNetns) -> None:
    netns.set_port_range(40000, 40999)
    with plant("listen4:40100", "listen6:40200", "listen4:8080", netns=netns) as planted:
        status, report = doctor_json(netns)
    assert status == 1
    at_risk = {item["port"]: item for item in report["at_risk"]}  # type: ignore[union-attr]
    assert set(at_risk) == {40100, 40200}
    item = at_risk[40100]
    assert item["pid"] == planted.pid and item["address"] == "127.0.0.1"
    assert item["process"].startswith("python")
    assert "inside the ephemeral range 40000-40999" in item["reason"]
    assert at_risk[40200]["address"] == "::1"
    fix = report["fix"]
    assert fix["commands"] == ["sysctl -w net.ipv4.ip_local_reserved_ports=40100,40200"]
    assert fix["persist_line"] == "net.ipv4.ip_local_reserved_ports = 40100,40200"
    assert fix["persist_file"].startswith("/etc/sysctl.d/")


def test_reserved_ports_are_not_at_risk_and_the_fix_merges_them(netns: PrivateNetns) -> None:
    netns.set_port_range(40000, 40999)
    netns.reserve("40100")
    with plant("listen4:40100", "listen4:40300", netns=netns):
        status, report = doctor_json(netns)
    assert status == 1
    assert report["reserved_ports"] == [40100]
    assert [item["port"] for item in report["at_risk"]] == [40300]  # type: ignore[union-attr]
    assert report["fix"]["commands"] == ["sysctl -w net.ipv4.ip_local_reserved_ports=40100,40300"]


def test_planned_ports_and_self_connects_are_reported(netns: PrivateNetns) -> None:
    netns.set_port_range(32768, 60999)
    with plant("self4", netns=netns) as planted:
        status, report = doctor_json(netns, "--port", "50000", "--port", "8080")
    assert status == 1
    assert [(i["port"], i["kind"]) for i in report["at_risk"]] == [(50000, "planned")]  # type: ignore[union-attr]
    assert [p["status"] for p in report["planned"]] == ["inside", "outside"]  # type: ignore[union-attr]
    [sock] = report["self_connected"]  # type: ignore[misc]
    assert sock["port"] == planted.ports("self4")[0] and sock["pids"] == [planted.pid]


def test_a_planned_port_listening_already_or_given_twice_counts_once(netns: PrivateNetns) -> None:
    netns.set_port_range(40000, 40999)
    with plant("listen4:40100", netns=netns):
        args = ("--port", "40100", "--port", "40100", "--port", "40200", "--port", "40200")
        status, report = doctor_json(netns, *args)
    assert status == 1
    at_risk = [(i["port"], i["kind"]) for i in report["at_risk"]]  # type: ignore[union-attr]
    assert at_risk == [(40100, "listening"), (40200, "planned")]
    assert [p["port"] for p in report["planned"]] == [40100, 40200]  # type: ignore[union-attr]


def test_text_output_gives_the_exact_fix(netns: PrivateNetns) -> None:
    netns.set_port_range(40000, 40999)
    with plant("listen4:40100", netns=netns):
        done = run_cli("doctor", netns=netns)
    assert done.returncode == 1
    out = done.stdout
    assert "40000-40999" in out and "40100" in out
    assert "sysctl -w net.ipv4.ip_local_reserved_ports=40100" in out
    assert "net.ipv4.ip_local_reserved_ports = 40100" in out
    assert "/etc/sysctl.d/" in out and "below 40000" in out
    assert "AT RISK" in out


def test_odd_ports_are_flagged_as_low_likelihood(netns: PrivateNetns) -> None:
    netns.set_port_range(32768, 60999)
    _status, report = doctor_json(netns, "--port", "50001", "--port", "50002")
    likelihood = {i["port"]: i["likelihood"] for i in report["at_risk"]}  # type: ignore[union-attr]
    assert likelihood == {50001: "low", 50002: "high"}


@pytest.mark.parametrize(
    ("value", "fragment"), [("0", "got 0"), ("70000", "got 70000"), ("abc", "got 'abc'")]
)
def test_bad_ports_get_one_line_and_exit_2(value: str, fragment: str) -> None:
    assert_one_line_error(run_cli("doctor", "--port", value), "--port", fragment)


def test_a_planned_port_of_a_service_or_held_now_is_named(netns: PrivateNetns) -> None:
    """The first report's two surprises: the new port was a chat client's, and the old one was
    held by a client connected to itself. Neither changes the verdict; both are said."""
    netns.set_port_range(32768, 60999)
    with plant("self4:7032", "listen4:7033", netns=netns) as planted:
        status, report = doctor_json(netns, "--port", "5222", "--port", "7032", "--port", "7033")
        text = run_cli("doctor", "--port", "5222", "--port", "7033", netns=netns).stdout
    assert status == 1  # the self-connect, as before
    planned = {item["port"]: item for item in report["planned"]}  # type: ignore[union-attr]
    chat = planned[5222]
    assert chat["service"]["name"] == "xmpp-client"
    assert chat["service"]["message"].startswith("5222 is xmpp-client: a chat client")
    assert chat["free"] is True and chat["holders"] == []
    itself = planned[7032]
    assert itself["service"] is None and itself["free"] is False
    assert [(h["kind"], h["pids"]) for h in itself["holders"]] == [("self-connect", [planted.pid])]
    assert "narcissus scan --kill" in itself["advice"][0]
    assert [h["kind"] for h in planned[7033]["holders"]] == ["listener"]
    assert "but 5222 is xmpp-client: a chat client or server may use it" in text
    assert "held right now: listener tcp4 127.0.0.1:7033 LISTEN by python" in text
