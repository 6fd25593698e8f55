"""Cluster and container configuration: `narcissus lint` on a kube-apiserver manifest and a
compose file with published ranges, and `narcissus reserve --from` the same files (dry run, and
for real inside a private network namespace: the host's reserved ports are never touched)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import PrivateNetns, assert_one_line_error, run_cli

HOST_RESERVED = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")

APISERVER = """\
apiVersion: v1
kind: Pod
metadata:
  name: kube-apiserver
  namespace: kube-system
spec:
  hostNetwork: true
  containers:
    - name: kube-apiserver
      image: registry.k8s.io/kube-apiserver:v1.30.2
      command:
        - kube-apiserver
        - --secure-port=6443
        - --service-node-port-range=30000-40000
        - --etcd-servers=https://127.0.0.1:2379
"""

COMPOSE = """\
services:
  media:
    image: example/rtp-relay:1
    ports:
      - "40000-40100:40000-40100"
      - "8080:80"
"""


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    apiserver = manifests / "kube-apiserver.yaml"
    apiserver.write_text(APISERVER)
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(COMPOSE)
    yield apiserver, compose


@pytest.fixture
def host_untouched() -> Iterator[None]:
    before = HOST_RESERVED.read_text()
    yield
    assert HOST_RESERVED.read_text() == before


def reserved_in(netns: PrivateNetns) -> str:
    done = subprocess.run(
        netns.wrap(["cat", str(HOST_RESERVED)]), capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_lint_finds_the_node_port_range_as_one_finding(files: tuple[Path, Path]) -> None:
    apiserver, _compose = files
    done = run_cli("lint", "--json", str(apiserver))
    assert done.returncode == 1, done.stderr
    [finding] = json.loads(done.stdout)
    assert (finding["port"], finding["last_port"]) == (30000, 40000)
    assert finding["line"] == 14 and finding["kind"] == "option"
    assert finding["what"] == "option --service-node-port-range"
    assert [r["os"] for r in finding["ranges"]] == ["linux"]  # Windows/macOS start at 49152
    assert "reserve exactly this range on every host or node" in finding["fix"]
    assert (
        f"narcissus reserve 30000-40000 (or narcissus reserve --from {apiserver})"
        in (finding["fix"])
    )


def test_lint_finds_the_published_compose_range_as_one_finding(files: tuple[Path, Path]) -> None:
    _apiserver, compose = files
    done = run_cli("lint", "--json", str(compose))
    assert done.returncode == 1, done.stderr
    # 8080 is below every range: at most a note that http-alt is registered there
    [finding] = [f for f in json.loads(done.stdout) if f["rule"] == "ephemeral-port"]
    assert (finding["port"], finding["last_port"], finding["kind"]) == (40000, 40100, "compose")
    assert (finding["line"], finding["column"]) == (5, 10)
    assert finding["end_column"] - finding["column"] == len("40000-40100")
    assert "narcissus reserve 40000-40100" in finding["fix"]
    text = run_cli("lint", str(compose)).stdout
    assert "ports 40000-40100 (docker-compose published port) are inside" in text


@pytest.mark.usefixtures("host_untouched")
def test_reserve_from_in_a_dry_run(netns: PrivateNetns, files: tuple[Path, Path]) -> None:
    apiserver, compose = files
    netns.reserve("8080")
    args = ("reserve", "--dry-run", "--json", "--from", str(apiserver), "--from", str(compose))
    done = run_cli(*args, netns=netns)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["requested"] == "30000-40100"  # the two ranges, merged
    assert report["after"] == "8080,30000-40100"
    assert report["dry_run"] and not report["applied"]
    assert sorted((f["path"], f["port"], f["last_port"]) for f in report["from"]) == sorted(
        [(str(apiserver), 30000, 40000), (str(compose), 40000, 40100)]
    )
    assert reserved_in(netns) == "8080"
    text = run_cli("reserve", "--dry-run", "--from", str(apiserver), netns=netns).stdout
    assert f"{apiserver}:14: 30000-40000 (option --service-node-port-range)" in text
    assert "would set 8080,30000-40000" in text and "nothing was changed" in text


@pytest.mark.usefixtures("host_untouched")
def test_reserve_from_for_real(netns: PrivateNetns, files: tuple[Path, Path]) -> None:
    apiserver, compose = files
    done = run_cli("reserve", "--json", "--from", str(apiserver), netns=netns)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applied"]
    assert reserved_in(netns) == "30000-40000"
    done = run_cli("reserve", "--json", "--from", str(compose), "6379", netns=netns)
    assert done.returncode == 0, done.stderr
    assert reserved_in(netns) == "6379,30000-40100"


@pytest.mark.usefixtures("host_untouched")
def test_reserve_from_follows_the_live_range(netns: PrivateNetns, files: tuple[Path, Path]) -> None:
    """In a namespace whose range starts at 45000 neither file names a port a client could be
    handed: nothing to reserve, exit 0 (a node-setup job must not fail on a default cluster)."""
    apiserver, compose = files
    netns.set_port_range(45000, 60999)
    done = run_cli("reserve", "--from", str(apiserver), "--from", str(compose), netns=netns)
    assert done.returncode == 0, done.stderr
    assert "no port inside the ephemeral range 45000-60999 (Linux): nothing to reserve" in (
        done.stdout
    )
    assert reserved_in(netns) == ""
    windows = run_cli("reserve", "--os", "windows", "--json", "--from", str(apiserver))
    assert json.loads(windows.stdout)["requested"] == ""


def test_reserve_from_a_missing_file_is_bad_input() -> None:
    assert_one_line_error(
        run_cli("reserve", "--dry-run", "--from", "/nonexistent/kube-apiserver.yaml"),
        "cannot read",
    )
