"""`narcissus scan` as a user runs it."""

from __future__ import annotations

import json

from tests.support import PrivateNetns, assert_one_line_error, plant, run_cli


def test_json_lists_self_connects_with_the_documented_fields(netns: PrivateNetns) -> None:
    with plant("self4", "self6", "selfmapped", "pair4", netns=netns) as planted:
        done = run_cli("scan", "--json", netns=netns)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    listed = {item["port"]: item for item in report["self_connected"]}
    assert set(listed) == set(
        planted.ports("self4") + planted.ports("self6") + planted.ports("selfmapped")
    )
    for item in listed.values():
        for key in ("family", "address", "port", "state", "pids", "processes", "netns"):
            assert key in item
        assert item["pids"] == [planted.pid]
        assert item["state"] == "ESTABLISHED"
    assert {item["family"] for item in listed.values()} == {"ipv4", "ipv6"}
    assert report["owners_visible"] is True


def test_exit_0_and_a_plain_sentence_when_nothing_is_found(netns: PrivateNetns) -> None:
    done = run_cli("scan", netns=netns)
    assert done.returncode == 0
    assert "No self-connected TCP sockets" in done.stdout


def test_text_output_lists_owner_and_remnant(netns: PrivateNetns) -> None:
    with plant("self4", "remnant4", netns=netns) as planted:
        done = run_cli("scan", netns=netns)
    assert done.returncode == 1
    assert f"({planted.pid})" in done.stdout
    assert "TIME_WAIT (remnant" in done.stdout
    assert "narcissus scan --kill" in done.stdout


def test_kill_reports_what_it_freed(netns: PrivateNetns) -> None:
    with plant("self4", netns=netns) as planted:
        port = planted.ports("self4")[0]
        done = run_cli("scan", "--kill", "--json", netns=netns)
        assert done.returncode == 1
        killed = json.loads(done.stdout)["killed"]
        assert [(k["port"], k["killed"]) for k in killed] == [(port, True)]
        again = json.loads(run_cli("scan", "--json", netns=netns).stdout)
        assert again["self_connected"] == []


def test_netns_option_from_the_host(netns: PrivateNetns) -> None:
    with plant("self4", netns=netns) as planted:
        done = run_cli("scan", "--netns", netns.name, "--json")
        by_pid = run_cli("scan", "--netns", str(planted.pid), "--json")
        everywhere = run_cli("scan", "--all-netns", "--json")
    port = planted.ports("self4")[0]
    assert [(i["port"], i["netns"]) for i in json.loads(done.stdout)["self_connected"]] == [
        (port, netns.name)
    ]
    assert [i["port"] for i in json.loads(by_pid.stdout)["self_connected"]] == [port]
    assert port in [i["port"] for i in json.loads(everywhere.stdout)["self_connected"]]


def test_bad_input_gets_one_line_and_exit_2() -> None:
    assert_one_line_error(run_cli("scan", "--netns", "no-such-namespace"), "no-such-namespace")
    assert_one_line_error(run_cli("scan", "--netns", "999999999"), "999999999")
    assert_one_line_error(run_cli("scan", "--netns", "x", "--all-netns"), "not allowed")
    assert_one_line_error(run_cli("scan", "--bogus"), "--bogus")
    assert_one_line_error(run_cli("frobnicate"), "frobnicate")
    assert_one_line_error(run_cli())
