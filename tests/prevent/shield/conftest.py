"""Fixtures for the shield tests: cgroups and namespaces this test run creates, a shield on
them, and a way to run any program inside both.

Everything is the real kernel: programs are verified and attached by it, clients are real
binaries. BPF programs attach only to cgroups made here (never the host's root cgroup), port
settings change only in private namespaces, and every fixture removes what it made on every
exit path (processes left in a cgroup are killed: they are ours).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import IS_ROOT, PrivateNetns, private_netns

# An even port: with the range [P, P] every unguarded first connect to P connects to itself.
P = 40_000
_counter = itertools.count()

needs_root_bpf = pytest.mark.skipif(
    not IS_ROOT or shutil.which("ip") is None, reason="needs root and iproute2 (BPF, cgroups)"
)


def cgroup2_root() -> str:
    from narcissus.system.linux import cgroups

    return cgroups.root()


class TestCgroup:
    """A cgroup v2 directory made for one test."""

    __test__ = False  # not a test class for pytest

    def __init__(self, path: str) -> None:
        self.path = path
        self.id = os.stat(path).st_ino

    def wrap(self, argv: list[str], netns: PrivateNetns | None = None) -> list[str]:
        """argv that runs inside this cgroup (and namespace): the shell moves itself in and
        execs, so the program never runs a single instruction outside."""
        inner = netns.wrap(argv) if netns is not None else argv
        procs = os.path.join(self.path, "cgroup.procs")
        return ["sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "sh", *inner]

    def procs(self) -> list[int]:
        text = Path(self.path, "cgroup.procs").read_text()
        return [int(line) for line in text.split()]


def _kill_and_remove(path: str) -> None:
    for directory, _subdirs, _files in os.walk(path, topdown=False):
        for _ in range(100):
            pids = Path(directory, "cgroup.procs").read_text().split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            try:
                os.rmdir(directory)
                break
            except OSError:
                time.sleep(0.05)


@pytest.fixture
def cgroup() -> Iterator[TestCgroup]:
    """A fresh cgroup under the cgroup v2 root, removed (with any shield on it) afterwards."""
    if not IS_ROOT:
        pytest.skip("needs root to create cgroups")
    path = os.path.join(cgroup2_root(), f"narcissus-test-{os.getpid()}-{next(_counter)}")
    os.mkdir(path)
    try:
        yield TestCgroup(path)
    finally:
        from narcissus.prevent.shield import shield_off

        try:
            shield_off(path)
        finally:
            _kill_and_remove(path)


@pytest.fixture
def shielded(cgroup: TestCgroup) -> TestCgroup:
    """The test's cgroup with the shield on."""
    from narcissus.prevent.shield import shield_on

    status = shield_on(cgroup.path)
    assert any(item.cgroup_id == cgroup.id for item in status.cgroups)
    return cgroup


@pytest.fixture
def one_port(netns: PrivateNetns) -> PrivateNetns:
    """A private namespace whose ephemeral range is the single port P."""
    netns.set_port_range(P, P)
    return netns


@pytest.fixture
def other_netns() -> Iterator[PrivateNetns]:
    with private_netns() as namespace:
        yield namespace


def run_in(
    argv: list[str],
    cgroup: TestCgroup | None,
    netns: PrivateNetns,
    *,
    timeout: float = 60,
    stdin: int | None = subprocess.DEVNULL,
) -> subprocess.CompletedProcess[str]:
    """Run a program in the namespace, inside the cgroup when one is given."""
    wrapped = cgroup.wrap(argv, netns) if cgroup is not None else netns.wrap(argv)
    return subprocess.run(
        wrapped, capture_output=True, text=True, timeout=timeout, check=False, stdin=stdin
    )


def refused_in(cgroup: TestCgroup) -> int:
    from narcissus.prevent.shield import shield_status

    return sum(item.refused for item in shield_status().cgroups if item.cgroup_id == cgroup.id)
