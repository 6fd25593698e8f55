"""`narcissus port`, run as a shell script runs it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from narcissus.core.free_port import Claim
from narcissus.prevent.free_port import CLAIMS_ENV
from tests.support import PrivateNetns, assert_one_line_error, run_cli


@pytest.fixture
def claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "claims"
    monkeypatch.setenv(CLAIMS_ENV, str(directory))
    return directory


def test_prints_ports_outside_the_range_with_a_lease(netns: PrivateNetns, claims: Path) -> None:
    netns.set_port_range(20000, 60999)
    done = run_cli("port", "--count", "3", netns=netns)
    assert done.returncode == 0, done.stderr
    ports = [int(line) for line in done.stdout.split()]
    assert len(set(ports)) == 3
    assert all(1024 <= port < 20000 or port > 60999 for port in ports)
    for port in ports:
        claim = Claim.decode((claims / f"{port}.claim").read_text())
        assert time.time() + 250 < claim.expires <= time.time() + 300  # the default lease


def test_the_lease_outlives_the_command(netns: PrivateNetns, claims: Path) -> None:
    netns.set_port_range(1025, 65535)  # one safe port: 1024
    first = run_cli("port", "--lease", "60", netns=netns)
    assert first.returncode == 0 and first.stdout.strip() == "1024"
    second = run_cli("port", netns=netns)
    assert second.returncode == 3
    assert "no free port" in second.stderr and second.stdout == ""


def test_json_names_the_zone_and_the_lease(netns: PrivateNetns, claims: Path) -> None:
    netns.set_port_range(32768, 60999)
    done = run_cli("port", "--portable", "--lease", "30", "--json", netns=netns)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    [port] = report["ports"]
    assert 1024 <= port <= 9999
    assert report["portable"] is True and report["lease_seconds"] == 30
    assert report["zone"] == "1024-9999"
    assert report["claims_directory"] == str(claims)
    assert os.path.exists(claims / f"{port}.claim")


def test_never_a_port_of_a_well_known_service(netns: PrivateNetns, claims: Path) -> None:
    """200 portable ports (1024-9999, where IANA names about half): none in /etc/services,
    none in the IANA snapshot shipped with the package."""
    from narcissus.core.services import parse_services
    from narcissus.diagnose.services import iana_snapshot

    listed = set(parse_services(Path("/etc/services").read_text()))
    assert {5222, 6379, 8080} <= listed  # the database this test trusts is the real one
    iana, _header = iana_snapshot()
    done = run_cli("port", "--count", "200", "--portable", "--lease", "5", netns=netns)
    assert done.returncode == 0, done.stderr
    ports = [int(line) for line in done.stdout.split()]
    assert len(set(ports)) == 200 and all(1024 <= port <= 9999 for port in ports)
    assert not set(ports) & listed
    assert not set(ports) & set(iana)


def test_json_says_how_many_service_ports_were_skipped(netns: PrivateNetns, claims: Path) -> None:
    done = run_cli("port", "--portable", "--json", "--lease", "5", netns=netns)
    report = json.loads(done.stdout)
    assert report["zone"] == "1024-9999"
    assert 4000 < report["services_skipped"] < 8976
    sources = report["services_sources"]
    assert "2025-04-30" in sources["iana_snapshot"] and sources["host_database"] == "/etc/services"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--lease", "0"), "--lease takes a duration"),
        (("--lease", "soon"), "--lease takes a duration"),
        (("--lease", "0.5"), "--lease takes from 1s to 1d"),
        (("--count", "0"), "--count takes a whole number"),
        (("--count", "1001"), "--count takes a whole number"),
    ],
)
def test_bad_options_get_one_line_and_exit_2(args: tuple[str, ...], fragment: str) -> None:
    assert_one_line_error(run_cli("port", *args), fragment)
