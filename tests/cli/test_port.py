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


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--lease", "0"), "--lease takes a duration"),
        (("--lease", "soon"), "--lease takes a duration"),
        (("--lease", "0.5"), "--lease takes from 1s to 1d"),
        (("--count", "0"), "--count takes a whole number"),
        (("--count", "65"), "--count takes a whole number"),
    ],
)
def test_bad_options_get_one_line_and_exit_2(args: tuple[str, ...], fragment: str) -> None:
    assert_one_line_error(run_cli("port", *args), fragment)
