"""`narcissus reserve`, always inside a private namespace: the host's reserved ports and its /etc
are never touched (--persist writes to --sysctl-file in the test's temp dir)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import PrivateNetns, assert_one_line_error, run_cli

HOST_RESERVED = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")


def reserved_in(netns: PrivateNetns) -> str:
    done = subprocess.run(
        netns.wrap(["cat", str(HOST_RESERVED)]), capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def host_untouched() -> object:
    before = HOST_RESERVED.read_text()
    yield
    assert HOST_RESERVED.read_text() == before


@pytest.mark.usefixtures("host_untouched")
def test_merges_with_the_ports_already_reserved(netns: PrivateNetns) -> None:
    netns.reserve("8080")
    done = run_cli("reserve", "50000", "40000-40010", "--json", netns=netns)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["before"] == "8080"
    assert report["after"] == "8080,40000-40010,50000"
    assert report["added"] == "40000-40010,50000"
    assert report["applied"] and report["changed"] and not report["dry_run"]
    assert reserved_in(netns) == "8080,40000-40010,50000"
    again = json.loads(run_cli("reserve", "50000", "--json", netns=netns).stdout)
    assert again["applied"] and not again["changed"] and again["added"] == ""


@pytest.mark.usefixtures("host_untouched")
def test_dry_run_changes_nothing(netns: PrivateNetns, tmp_path: Path) -> None:
    netns.reserve("8080")
    target = tmp_path / "reserved.conf"
    done = run_cli("reserve", "50000", "--dry-run", "--sysctl-file", str(target), netns=netns)
    assert done.returncode == 0, done.stderr
    assert "would set 8080,50000" in done.stdout and "nothing was changed" in done.stdout
    assert f"would write {target}" in done.stdout
    assert reserved_in(netns) == "8080"
    assert not target.exists()


@pytest.mark.usefixtures("host_untouched")
def test_persist_merges_into_the_sysctl_file_and_keeps_its_other_lines(
    netns: PrivateNetns, tmp_path: Path
) -> None:
    target = tmp_path / "90-narcissus.conf"
    target.write_text("net.core.somaxconn = 4096\nnet.ipv4.ip_local_reserved_ports = 10250\n")
    done = run_cli("reserve", "50000", "--persist", "--sysctl-file", str(target), netns=netns)
    assert done.returncode == 0, done.stderr
    assert target.read_text() == (
        "net.core.somaxconn = 4096\nnet.ipv4.ip_local_reserved_ports = 10250,50000\n"
    )
    assert target.stat().st_mode & 0o777 == 0o644
    assert reserved_in(netns) == "50000"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary left


@pytest.mark.usefixtures("host_untouched")
def test_a_file_that_cannot_be_written_leaves_the_kernel_as_it_was(netns: PrivateNetns) -> None:
    netns.reserve("8080")
    # sysfs looks writable to root but refuses new files: the write fails after the kernel's.
    done = run_cli("reserve", "50000", "--sysctl-file", "/sys/kernel/narcissus.conf", netns=netns)
    assert done.returncode == 3, done.stderr
    assert "left as they were" in done.stderr
    assert reserved_in(netns) == "8080"
    missing = run_cli("reserve", "50000", "--sysctl-file", "/nonexistent/x.conf", netns=netns)
    assert_one_line_error(missing, "/nonexistent does not exist")
    assert reserved_in(netns) == "8080"


@pytest.mark.usefixtures("host_untouched")
def test_only_a_regular_file_is_written_and_a_symlink_through_to_its_target(
    netns: PrivateNetns, tmp_path: Path
) -> None:
    """A rename over a device, FIFO or directory would replace it (as it once replaced
    /dev/null): refused up front, nothing changed. Made in tmp_path, never the real ones."""
    device = tmp_path / "null"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, fragment in (
        (device, "is not a regular file"),
        (fifo, "is not a regular file"),
        (tmp_path, "is a directory"),
        ("", "--sysctl-file is empty"),
        ("  ", "--sysctl-file is empty"),
    ):
        done = run_cli("reserve", "50000", "--sysctl-file", str(path), netns=netns)
        assert_one_line_error(done, fragment)
    assert stat.S_ISCHR(device.stat().st_mode) and stat.S_ISFIFO(fifo.stat().st_mode)
    assert reserved_in(netns) == ""

    real = tmp_path / "etc" / "90-narcissus.conf"
    real.parent.mkdir()
    real.write_bytes(b"# caf\xe9: not UTF-8\nnet.ipv4.ip_local_reserved_ports = 10250\n")
    link = tmp_path / "link.conf"
    link.symlink_to(real)
    done = run_cli("reserve", "50000", "--sysctl-file", str(link), netns=netns)
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and link.resolve() == real  # the link stays a link
    assert real.read_bytes() == (
        b"# caf\xe9: not UTF-8\nnet.ipv4.ip_local_reserved_ports = 10250,50000\n"
    )


@pytest.mark.usefixtures("host_untouched")
def test_without_root_it_says_so_and_exits_3(netns: PrivateNetns) -> None:
    unprivileged = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = subprocess.run(
        netns.wrap([*unprivileged, sys.executable, "-m", "narcissus", "reserve", "50000"]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "needs root" in done.stderr and "Traceback" not in done.stderr
    assert reserved_in(netns) == ""


def test_other_oses_get_the_equivalent_command() -> None:
    done = run_cli("reserve", "--os", "windows", "50000-50009", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["on_this_host"] is False and report["applied"] is False
    assert report["commands"] == [
        "netsh int ipv4 add excludedportrange protocol=tcp startport=50000 numberofports=10 "
        "store=persistent"
    ]
    text = run_cli("reserve", "--os", "macos", "50000").stdout
    assert "sysctl -w net.inet.ip.portrange.first=50001" in text


def test_from_files_whose_names_are_not_utf8(tmp_path: Path) -> None:
    """--from reads through lint: a name that is not UTF-8 prints with U+FFFD, never a
    traceback or a lone surrogate in the JSON."""
    directory = os.fsencode(tmp_path)
    with open(directory + b"/bad\xffname.conf", "wb") as handle:
        handle.write(b"port 50000\n")
    with open(directory + b"/clean\xff.conf", "wb") as handle:
        handle.write(b"port 7032\n")

    def reserve(*args: str | bytes) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, "-m", "narcissus", "reserve", "--os", "linux", *args],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.stderr == b""
        return done.returncode, done.stdout.decode("utf-8")  # strict

    status, text = reserve("--from", directory + b"/bad\xffname.conf")
    assert status == 0 and "bad\ufffdname.conf:1: 50000 (directive port)" in text
    status, out = reserve("--json", "--from", directory + b"/bad\xffname.conf")
    [found] = json.loads(out)["from"]
    assert found["path"].endswith("/bad\ufffdname.conf")
    status, out = reserve("--json", "--from", directory + b"/clean\xff.conf")
    assert json.loads(out)["message"].startswith(f"{tmp_path}/clean\ufffd.conf: no port")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("70000",), "got 70000"),
        (("50010-50000",), "starts after it ends"),
        (("fifty",), "got 'fifty'"),
        (("--os", "plan9", "50000"), "unknown OS 'plan9'"),
        ((), "give ports to reserve"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(args: tuple[str, ...], fragment: str) -> None:
    assert_one_line_error(run_cli("reserve", *args), fragment)
