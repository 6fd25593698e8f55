"""`narcissus exporter` scraped over HTTP for real, and the deploy/ files it ships with.

The poll-backend exporter runs inside a private namespace whose port settings the test sets,
and is scraped from inside it; the ftrace one runs on the host, where other test runs also
self-connect, so it is only checked to count at least the one planted here.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    SRC,
    PrivateNetns,
    Running,
    assert_one_line_error,
    bind_errors,
    bind_in,
    needs_root,
    plant,
    run_cli,
    tracing_instances,
    unprivileged_argv,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux backends")

ROOT = Path(__file__).parents[2]
RULES = ROOT / "deploy" / "prometheus" / "narcissus-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "narcissus-rules.test.yml"
UNIT = ROOT / "deploy" / "systemd" / "narcissus-exporter.service"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, netns: PrivateNetns | None = None) -> tuple[str, Samples]:
    """GET /metrics (from inside `netns` when given); the text and every sample by name+labels."""
    if netns is not None:
        with netns.entered():
            return scrape(url)
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def scrape_until(
    url: str, done: Callable[[Samples], bool], netns: PrivateNetns | None = None
) -> tuple[str, Samples]:
    """Scrape until `done` holds (bounded: 40 scrapes 0.25 s apart; readings live 1 s)."""
    for _attempt in range(40):
        text, samples = scrape(url, netns)
        if done(samples):
            break
        time.sleep(0.25)
    return text, samples


def test_metrics_after_planting_sockets_and_listeners(netns: PrivateNetns) -> None:
    netns.set_port_range(40000, 40999)
    netns.reserve("40100")
    args = ("exporter", "--json", "--listen", "127.0.0.1:0", "--backend", "poll")
    with Running(*args, "--interval", "0.1", netns=netns) as exporter:
        ready = exporter.json_line()
        assert ready["event"] == "ready" and ready["backend"] == "poll"
        url = ready["url"]
        assert url == f"http://127.0.0.1:{ready['port']}/metrics"
        specs = ("self4", "remnant4", "listen4:40010", "listen4:40100", "listen4:30000")
        with plant(*specs, netns=netns) as planted:
            text, samples = scrape_until(
                url,
                lambda s: (
                    (value(s, "narcissus_self_connect_events_total") or 0) >= 2
                    and value(s, "narcissus_self_connected_sockets") == 1
                ),
                netns,
            )
        status, _err = exporter.stop(signal.SIGTERM)
    assert status == 0
    assert value(samples, "narcissus_self_connect_events_total") == 2  # the socket + the remnant
    assert value(samples, "narcissus_self_connect_events_lost_total") == 0
    assert value(samples, "narcissus_self_connected_sockets") == 1
    assert value(samples, "narcissus_self_connect_time_wait_sockets") == 1
    assert value(samples, "narcissus_ephemeral_port_range_low") == 40000
    assert value(samples, "narcissus_ephemeral_port_range_high") == 40999
    assert value(samples, "narcissus_reserved_ports") == 1
    assert value(samples, "narcissus_detection_backend_info", backend="poll") == 1
    assert value(samples, "narcissus_detection_up") == 1
    assert value(samples, "narcissus_scan_success") == 1
    listeners = {
        dict(labels)["port"]: (dict(labels)["process"], count)
        for (name, labels), count in samples.items()
        if name == "narcissus_ephemeral_listening_sockets"
    }
    process, count = listeners["40010"]
    assert process.startswith("python") and count == 1
    assert "40100" not in listeners  # reserved
    assert "30000" not in listeners  # below the range
    assert planted.pid > 0
    # The exporter's own port (0 asked for a free one) is picked outside the range, so the
    # exporter never reports itself at risk.
    assert not 40000 <= ready["port"] <= 40999
    assert str(ready["port"]) not in listeners
    for rule_metric in set(re.findall(r"narcissus_[a-z_]+", RULES.read_text())):
        assert f"\n{rule_metric}" in text, f"{rule_metric} used by the alert rules is not exposed"


@needs_root
def test_ftrace_backend_counts_a_self_connect_that_lived_a_moment(netns: PrivateNetns) -> None:
    with Running("exporter", "--json", "--listen", "127.0.0.1:0") as exporter:
        ready = exporter.json_line()
        assert ready["backend"] == "ftrace"
        _text, before = scrape(ready["url"])
        assert value(before, "narcissus_detection_backend_info", backend="ftrace") == 1
        start = value(before, "narcissus_self_connect_events_total") or 0
        with plant("remnant4", netns=netns):  # self-connected, then closed at once
            pass
        _text, after = scrape_until(
            ready["url"], lambda s: (value(s, "narcissus_self_connect_events_total") or 0) > start
        )
        assert tracing_instances(exporter.process.pid)
        status, _err = exporter.stop(signal.SIGTERM)
    assert (value(after, "narcissus_self_connect_events_total") or 0) > start
    assert status == 0
    assert tracing_instances(exporter.process.pid) == []


BIND_KINDS = ("listener", "client", "self-connect", "time-wait", "other", "none")
BIND_FAMILIES = (
    "narcissus_bind_failures",
    "narcissus_bind_failures_lost",
    "narcissus_bind_watch_up",
)


def bind_failures(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["kind"]: count
        for (name, labels), count in samples.items()
        if name == "narcissus_bind_failures_total"
    }


@needs_root
def test_failed_binds_are_counted_by_the_holders_kind(netns: PrivateNetns) -> None:
    """The bind watch counts every namespace (other test runs' failed binds too), so the check
    is that each planted failure moved its own kind's counter."""
    args = ("exporter", "--json", "--listen", "127.0.0.1:0", "--backend", "poll", "--binds")
    with Running(*args, netns=netns) as exporter:
        ready = exporter.json_line()
        assert ready["binds"] is True
        _text, before = scrape(ready["url"], netns)
        assert value(before, "narcissus_bind_watch_up") == 1
        assert set(bind_failures(before)) == set(BIND_KINDS)  # every kind from the start
        with plant("listen4:7500", "self4:7501", netns=netns):
            report = bind_in(netns, "tcp4:7500", "any4:7501", "tcp4:7502")
            _text, after = scrape_until(
                ready["url"],
                lambda s: all(
                    bind_failures(s)[kind] >= bind_failures(before)[kind] + 1
                    for kind in ("listener", "self-connect")
                ),
                netns,
            )
        status, _err = exporter.stop(signal.SIGTERM)
    assert bind_errors(report) == [errno.EADDRINUSE, errno.EADDRINUSE, 0]
    for kind in ("listener", "self-connect"):
        assert bind_failures(after)[kind] >= bind_failures(before)[kind] + 1, kind
    assert value(after, "narcissus_bind_failures_lost_total") == 0
    assert status == 0


def test_binds_asked_for_where_the_watch_cannot_run_is_exit_3(netns: PrivateNetns) -> None:
    """As nobody, --binds (no BPF there) fails as `watch --binds` does, in one line; as root
    without --binds (the default) there are no bind families at all, not zeros."""
    import prometheus_client

    site = str(Path(prometheus_client.__file__).parents[1])
    args = ["-m", "narcissus", "exporter", "--json", "--listen", "127.0.0.1:9469"]
    argv = unprivileged_argv([*args, "--binds", "--backend", "poll"], netns=netns)
    env = {**os.environ, "PYTHONPATH": f"{SRC}:{site}"}
    done = subprocess.run(
        argv, env=env, cwd="/", capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 3, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "failed binds cannot be counted here" in line and "needs root" in line, line
    with Running(*args[2:], "--backend", "poll", netns=netns) as exporter:
        ready = exporter.json_line()
        _text, disabled = scrape(ready["url"], netns)
        exporter.stop(signal.SIGTERM)
    assert ready["binds"] is False
    assert value(disabled, "narcissus_scan_success") == 1
    assert not [name for name, _labels in disabled if name.startswith("narcissus_bind")]


def test_loopback_port_9469_by_default_and_ctrl_c_exits_130(netns: PrivateNetns) -> None:
    with Running("exporter", "--json", "--backend", "poll", netns=netns) as exporter:
        ready = exporter.json_line()
        assert (ready["address"], ready["port"]) == ("127.0.0.1", 9469)
        _text, samples = scrape("http://127.0.0.1:9469/metrics", netns)
        assert value(samples, "narcissus_scan_success") == 1
        status, err = exporter.stop(signal.SIGINT)
    assert status == 130 and "interrupted" in err


def test_bad_listen_addresses_get_one_line_and_exit_2() -> None:
    assert_one_line_error(run_cli("exporter", "--listen", "nonsense"), "--listen")
    assert_one_line_error(run_cli("exporter", "--listen", ":9469"), "needs a host")
    assert_one_line_error(run_cli("exporter", "--listen", "127.0.0.1:99999"), "65535")
    assert_one_line_error(run_cli("exporter", "--listen", "::1:9469"), "brackets")
    held = socket.create_server(("127.0.0.1", 0))
    try:
        port = held.getsockname()[1]
        busy = run_cli("exporter", "--backend", "poll", "--listen", f"127.0.0.1:{port}")
    finally:
        held.close()
    assert_one_line_error(busy, "in use", "--listen")
    assert_one_line_error(
        run_cli("exporter", "--backend", "poll", "--listen", "192.0.2.1:9469"),
        "not an address of this host",
    )


def test_without_prometheus_client_it_says_what_to_install() -> None:
    # -S: no site-packages, so prometheus_client cannot be imported; narcissus from src/.
    done = subprocess.run(
        [sys.executable, "-S", "-m", "narcissus", "exporter", "--backend", "poll"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("\n") == 1 and "pip install '.[exporter]'" in done.stderr


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/test installs Debian's prometheus package"
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 3 rules found" in checked.stdout
    tested = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, check=False
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: scripts/test installs Debian's systemd package"
    # verify checks that ExecStart exists: point it at this checkout's narcissus.
    narcissus = Path(sys.executable).parent / "narcissus"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/narcissus", str(narcissus)))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "ExecStart=/usr/local/bin/narcissus exporter --listen 127.0.0.1:9469" in UNIT.read_text()


def test_text_mode_says_where_it_serves_and_warns_off_loopback(netns: PrivateNetns) -> None:
    args = ("exporter", "--listen", "0.0.0.0:0", "--backend", "poll")
    with Running(*args, netns=netns) as exporter:
        first = exporter.line("stderr")
        lines: list[str] = []
        for _note in range(8):  # the notes (self-connects, failed binds as root), the warning
            lines.append(exporter.line("stderr"))
            if "is not loopback" in lines[-1]:
                break
        status, _err = exporter.stop(signal.SIGTERM)
    assert re.search(
        r"serving http://0\.0\.0\.0:\d+/metrics \(self-connect events from poll\)", first
    )
    assert any("shows only as its TIME_WAIT remnant" in line for line in lines)
    assert any("0.0.0.0 is not loopback" in line for line in lines)
    assert status == 0
