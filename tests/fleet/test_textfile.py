"""`narcissus exporter --textfile`: the same metrics as the HTTP exporter, written atomically
for node_exporter's textfile collector, valid for promtool, and nothing left behind.

Every exporter runs in a private network namespace with the poll backend, so other tests'
sockets never show up in what is compared.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from narcissus.fleet.exporter import TEXTFILE_NAME, write_atomically
from tests.support import PrivateNetns, Running, assert_one_line_error, plant, run_cli

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backends")

ROOT = Path(__file__).parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
# How a whole file ends: the last collector's last family (the shield's counter, where it can
# be read, i.e. as root on Linux; else the self-connect collector's listeners).
LAST_FAMILY = re.compile(
    r"(# TYPE narcissus_ephemeral_listening_sockets gauge\n|"
    r"\nnarcissus_shield_refused_total \d+\.\d+\n)\Z"
)


def whole(data: str) -> bool:
    return LAST_FAMILY.search(data) is not None and "narcissus_scan_success 1.0\n" in data


def families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/test installs Debian's prometheus package"
    return subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )


def wait_for_file(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written within {timeout} s")


def test_once_writes_what_the_http_exporter_serves(netns: PrivateNetns, tmp_path: Path) -> None:
    netns.set_port_range(40000, 40999)
    http = ("exporter", "--json", "--listen", "127.0.0.1:30000", "--backend", "poll")
    with plant("self4", "listen4:40010", netns=netns), Running(*http, netns=netns) as exporter:
        url = exporter.json_line()["url"]
        with netns.entered():
            import urllib.request

            with urllib.request.urlopen(url, timeout=30) as response:
                served = families(response.read().decode())
        loop_dir, once_dir = tmp_path / "loop", tmp_path / "once"
        loop_dir.mkdir()
        once_dir.mkdir()
        loop = ("exporter", "--json", "--textfile", str(loop_dir), "--backend", "poll")
        with Running(*loop, netns=netns) as writer:
            ready = writer.json_line()
            looped = families((loop_dir / TEXTFILE_NAME).read_text())
            assert writer.stop(signal.SIGTERM)[0] == 0
        once = run_cli("exporter", "--json", "--textfile", str(once_dir), "--once", netns=netns)
        exporter.stop(signal.SIGTERM)
    assert ready["event"] == "ready" and ready["interval_seconds"] == 60
    assert ready["path"] == str(loop_dir / TEXTFILE_NAME)
    assert once.returncode == 0, once.stderr
    text = (once_dir / TEXTFILE_NAME).read_text()
    written = families(text)
    # The loop writes every family the HTTP exporter serves but node_exporter's own process_*.
    assert set(looped) == {name for name in served if not name.startswith("process_")}
    # --once runs no watch: no event families, rather than a watch reported down.
    watch_families = {
        "narcissus_self_connect_events",
        "narcissus_self_connect_events_lost",
        "narcissus_detection_backend_info",
        "narcissus_detection_up",
        "narcissus_bind_failures",  # the failed-bind watch (root on Linux) does not run either
        "narcissus_bind_failures_lost",
        "narcissus_bind_watch_up",
    }
    assert set(written) == set(looped) - watch_families
    for name in ("narcissus_self_connected_sockets", "narcissus_ephemeral_port_range_low"):
        assert written[name] == served[name] == looped[name]
    listeners = {labels["port"] for labels, _ in written["narcissus_ephemeral_listening_sockets"]}
    assert listeners == {"40010"}
    checked = promtool_check(text)
    assert checked.returncode == 0 and checked.stdout == "", checked.stdout + checked.stderr
    assert sorted(p.name for p in once_dir.iterdir()) == [TEXTFILE_NAME]
    assert sorted(p.name for p in loop_dir.iterdir()) == [TEXTFILE_NAME]


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on tmpfs when there is one: fsync costs nothing there, so the exporter
    rewrites hundreds of times a second (on this VM's disk an fsync'd rewrite takes 15-150 ms);
    the rename, which is what makes a rewrite atomic, is the same on every file system."""
    if not os.path.isdir("/dev/shm"):
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(prefix="narcissus-textfile-", dir="/dev/shm"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_reader_never_sees_a_partial_file(netns: PrivateNetns, fast_dir: Path) -> None:
    """A reader in a tight loop while the file is rewritten every millisecond: each read is a
    whole file (the last family ends it), and at least 500 distinct files (inodes) are read."""
    tmp_path = fast_dir
    target = tmp_path / TEXTFILE_NAME
    args = ("exporter", "--textfile", str(tmp_path), "--interval", "1ms", "--backend", "poll")
    stop = threading.Event()
    reads: list[int] = []
    inodes: set[int] = set()
    bad: list[str] = []

    def reader() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                with open(target, "rb") as handle:
                    inode = os.fstat(handle.fileno()).st_ino
                    data = handle.read().decode()
            except FileNotFoundError:
                continue
            reads.append(len(data))
            inodes.add(inode)
            if not whole(data):
                bad.append(data)
            if len(inodes) >= 500:
                return

    with Running(*args, netns=netns) as exporter:
        assert "ready" in exporter.line("stderr")
        thread = threading.Thread(target=reader)
        started = time.monotonic()
        thread.start()
        thread.join(timeout=150)
        seconds = time.monotonic() - started
        stop.set()
        status, _err = exporter.stop(signal.SIGTERM)
    assert status == 0
    assert not bad, f"{len(bad)} partial reads, e.g. {bad[0][-200:]!r}"
    assert len(inodes) >= 500, f"only {len(inodes)} rewrites seen in {seconds:.1f} s"
    assert sorted(p.name for p in tmp_path.iterdir()) == [TEXTFILE_NAME]
    print(f"\n{len(inodes)} rewrites in {seconds:.2f} s, {len(reads)} whole reads")


def test_sigterm_at_any_moment_leaves_only_the_file(netns: PrivateNetns, tmp_path: Path) -> None:
    rng = random.Random(14)
    for run in range(6):
        directory = tmp_path / f"run{run}"
        directory.mkdir()
        args = ("exporter", "--textfile", str(directory), "--interval", "1ms", "--backend", "poll")
        with Running(*args, netns=netns) as exporter:
            assert "ready" in exporter.line("stderr")
            time.sleep(rng.uniform(0, 0.2))  # a random moment among the rewrites
            status, err = exporter.stop(signal.SIGTERM)
        assert status == 0, err
        assert sorted(p.name for p in directory.iterdir()) == [TEXTFILE_NAME]
        assert whole(wait_for_file(directory / TEXTFILE_NAME))


class _Interrupt(Exception):
    pass


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    """Real SIGALRMs at random moments of real writes: each write either completes or leaves
    the previous file untouched, and no temporary file survives either way."""
    path = tmp_path / TEXTFILE_NAME
    contents = [bytes([65 + n]) * 300_000 + b"\n" for n in range(2)]
    write_atomically(str(path), contents[0])

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise _Interrupt

    started = time.perf_counter()
    for data in contents * 3:
        write_atomically(str(path), data)
    typical = (time.perf_counter() - started) / 6  # the timer lands in [0, twice a write]
    previous = signal.signal(signal.SIGALRM, interrupt)
    rng = random.Random(7)
    interrupted = completed = 0
    try:
        for n in range(300):
            data = contents[(n + 1) % 2]
            before = path.read_bytes()
            try:
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, 2 * typical))
                write_atomically(str(path), data)
                signal.setitimer(signal.ITIMER_REAL, 0)
                completed += 1
            except _Interrupt:
                interrupted += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            now = path.read_bytes()
            assert now in (before, data)
            assert [p.name for p in tmp_path.iterdir()] == [TEXTFILE_NAME]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert interrupted > 0 and completed > 0, (interrupted, completed)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--textfile", "/nonexistent/dir", "--once"), "is not a directory"),
        (("--once",), "needs --textfile"),
        (("--textfile", "/tmp", "--listen", "127.0.0.1:0"), "give one"),
        (("--textfile", "/tmp", "--interval", "0s"), "--interval"),
    ],
)
def test_bad_textfile_input_gets_one_line_and_exit_2(args: tuple[str, ...], fragment: str) -> None:
    assert_one_line_error(run_cli("exporter", "--backend", "poll", *args), fragment)


def test_systemd_textfile_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: scripts/test installs Debian's systemd package"
    narcissus = Path(sys.executable).parent / "narcissus"
    names = (
        "narcissus-textfile.service",
        "narcissus-textfile-once.service",
        "narcissus-textfile-once.timer",
    )
    for name in names:
        text = (SYSTEMD / name).read_text()
        (tmp_path / name).write_text(text.replace("/usr/local/bin/narcissus", str(narcissus)))
    done = subprocess.run(
        [analyze, "verify", *(str(tmp_path / name) for name in names)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    loop = (SYSTEMD / "narcissus-textfile.service").read_text()
    once = (SYSTEMD / "narcissus-textfile-once.service").read_text()
    directory = "/var/lib/prometheus/node-exporter"
    assert f"exporter --textfile {directory} --interval 1m" in loop
    assert f"exporter --textfile {directory} --once" in once
    assert f"ReadWritePaths={directory}" in loop and f"ReadWritePaths={directory}" in once


class _ShieldLikeCollector:
    """A collector from another part of narcissus (its metrics made up for the test)."""

    def describe(self) -> list[Any]:
        return list(self.collect())

    def collect(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("narcissus_test_extra", "A family added through COLLECTORS")
        family.add_metric([], 7)
        return [family]


def test_a_collector_added_to_the_list_reaches_http_and_textfile(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from narcissus.fleet.exporter import COLLECTORS, Sources, TextfileExporter, build_registry

    def factory(_sources: Sources) -> _ShieldLikeCollector:
        return _ShieldLikeCollector()

    collectors = [*COLLECTORS, factory]
    served = generate_latest(build_registry(Sources(None), collectors=collectors)).decode()
    assert "narcissus_test_extra 7.0" in served and "process_cpu_seconds_total" in served
    with TextfileExporter(str(tmp_path), collectors=collectors, watch=False) as exporter:
        exporter.write()
    written = (tmp_path / TEXTFILE_NAME).read_text()
    assert "narcissus_test_extra 7.0" in written and "process_" not in written
    assert "narcissus_scan_success" in written
