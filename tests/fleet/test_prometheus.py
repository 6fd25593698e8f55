"""The Prometheus end to end: a real Prometheus server (Debian's `prometheus`) scrapes a real
`narcissus exporter` with the shipped alert rules loaded, and the alerts fire through its HTTP
API when a self-connect and a listener inside the range are planted; every query of the Grafana
dashboard is evaluated by the same server.

Everything runs inside a private network namespace the test creates (the exporter with the poll
backend, so only this namespace's sockets count; Prometheus on 127.0.0.1 there), with a data
directory in the test's temp dir: the host's Prometheus service and /etc/prometheus are never
touched. The rules are the shipped file with only their `for:` durations shortened to a few
seconds (the rendering is checked to change nothing else); the firing itself is Prometheus's.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from narcissus import free_port
from tests.support import PrivateNetns, Running, bind_errors, bind_in, plant

ROOT = Path(__file__).parents[2]
RULES = ROOT / "deploy" / "prometheus" / "narcissus-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "narcissus-dashboard.json"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SHORT_FOR = "3s"
DEADLINE = 120.0  # seconds any one wait may take on two busy cores

# Grafana's variables, as a dashboard with every host selected would send them.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$job": ".*",
    "$instance": ".*",
}


def render_rules(text: str, duration: str) -> str:
    """The shipped rules with every `for:` set to `duration`, and nothing else changed."""
    rendered, count = re.subn(r"(?m)^(\s+for:) \S+$", rf"\g<1> {duration}", text)
    assert count == len(re.findall(r"(?m)^\s+for:", text)) and count > 0
    shipped, short = yaml.safe_load(text), yaml.safe_load(rendered)
    for group in short["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "(shortened)"
    for group in shipped["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "(shortened)"
    assert short == shipped
    return rendered


class Prometheus:
    """A Prometheus server this test started, and its HTTP API (called from inside netns)."""

    def __init__(self, netns: PrivateNetns, base: str, process: subprocess.Popen[bytes]) -> None:
        self.netns = netns
        self.base = base
        self.process = process

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with self.netns.entered(), urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())

    def api(self, path: str, **params: str) -> Any:
        answer = self.get(f"/api/v1/{path}", **params)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def until(self, what: str, check: Callable[[], Any]) -> Any:
        """Poll `check` until it returns something truthy (bounded by DEADLINE)."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "prometheus exited"
            found = check()
            if found:
                return found
            time.sleep(0.25)
        raise AssertionError(f"prometheus: {what} not seen within {DEADLINE:.0f} s")

    def alerts(self, name: str, state: str = "firing") -> list[dict[str, Any]]:
        return [
            alert
            for alert in self.api("alerts")["alerts"]
            if alert["labels"]["alertname"] == name and alert["state"] == state
        ]


@contextmanager
def prometheus(netns: PrivateNetns, directory: Path, target: str) -> Iterator[Prometheus]:
    """Start Prometheus in `netns` scraping `target` every second with the shortened rules."""
    (directory / "narcissus-rules.yml").write_text(render_rules(RULES.read_text(), SHORT_FOR))
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["narcissus-rules.yml"],
        "scrape_configs": [{"job_name": "narcissus", "static_configs": [{"targets": [target]}]}],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    with netns.entered():
        port = free_port()
    log = (directory / "prometheus.log").open("wb")
    argv = netns.wrap(
        [
            PROMETHEUS,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
    )
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    server = Prometheus(netns, f"http://127.0.0.1:{port}", process)
    try:
        server.until("/-/ready", lambda: _ready(server))
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _ready(server: Prometheus) -> bool:
    try:
        url = f"{server.base}/-/ready"
        with server.netns.entered(), urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation and variable of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    queries = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]
    queries += [
        (f"annotation {item['name']!r}", item["expr"])
        for item in board["annotations"]["list"]
        if "expr" in item
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), \w+\)", variable["query"]["query"])
            assert match, variable["query"]
            queries.append((f"variable {variable['name']}", match.group(1)))
    return queries


def grafana_to_promql(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


@pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="needs Debian's prometheus package")
def test_alerts_fire_through_a_real_prometheus(netns: PrivateNetns, tmp_path: Path) -> None:
    netns.set_port_range(40000, 40999)
    with netns.entered():
        exporter_port = free_port()
    listen = f"127.0.0.1:{exporter_port}"
    args = (
        *("exporter", "--json", "--listen", listen, "--backend", "poll", "--interval", "200ms"),
        "--binds",
    )
    with Running(*args, netns=netns) as exporter, prometheus(netns, tmp_path, listen) as server:
        assert exporter.json_line()["event"] == "ready"

        def rules() -> dict[str, dict[str, Any]]:
            return {
                rule["name"]: rule
                for group in server.api("rules")["groups"]
                for rule in group["rules"]
            }

        assert set(rules()) == {"TcpSelfConnect", "ListenerInEphemeralPortRange",
                                "SelfConnectDetectionDown"}  # fmt: skip
        server.until("the exporter scraped", lambda: server.query('up{job="narcissus"} == 1'))
        server.until(
            "every rule evaluated", lambda: all(r["health"] == "ok" for r in rules().values())
        )
        server.until("narcissus metrics", lambda: server.query("narcissus_scan_success == 1"))
        assert server.alerts("TcpSelfConnect", "firing") == []
        assert server.alerts("ListenerInEphemeralPortRange", "firing") == []

        planted_at = time.monotonic()
        with plant("self4", "listen4:40010", "listen4:30000", netns=netns) as planted:
            fired = server.until("TcpSelfConnect firing", lambda: server.alerts("TcpSelfConnect"))
            self_connect_seconds = time.monotonic() - planted_at
            # a server failing to bind the self-connected port: the bind-failures panel's data
            failed = bind_in(netns, f"any4:{planted.ports('self4')[0]}")
            server.until(
                "a failed bind counted",
                lambda: server.query('narcissus_bind_failures_total{kind="self-connect"} > 0'),
            )
            states: set[str] = set()

            def listener_firing() -> list[dict[str, Any]]:
                if server.alerts("ListenerInEphemeralPortRange", "pending"):
                    states.add("pending")
                return server.alerts("ListenerInEphemeralPortRange")

            listener = server.until("ListenerInEphemeralPortRange firing", listener_firing)
            listener_seconds = time.monotonic() - planted_at
            checked = check_dashboard(server)
            assert planted.ports("self4")
        detection_down = server.alerts("SelfConnectDetectionDown", "firing")
        health = {name: rule["health"] for name, rule in rules().items()}
        status, _err = exporter.stop(signal.SIGTERM)
    assert status == 0
    assert [a["labels"]["instance"] for a in fired] == [listen]
    assert fired[0]["labels"]["severity"] == "critical"
    assert fired[0]["annotations"]["summary"] == f"TCP self-connect on {listen}"
    # Exactly the planted listener inside the range: not the one below it, not the exporter's
    # or Prometheus's own ports (free_port() picks outside the range).
    assert [(a["labels"]["port"], a["labels"]["severity"]) for a in listener] == [
        ("40010", "warning")
    ]
    assert listener[0]["labels"]["process"].startswith("python")
    assert "pending" in states or listener_seconds >= 3  # `for:` held it back first
    assert detection_down == []
    assert bind_errors(failed) == [errno.EADDRINUSE]
    assert set(health.values()) == {"ok"}, health  # e.g. no duplicate label sets while firing
    assert checked >= 10
    print(
        f"\nTcpSelfConnect firing {self_connect_seconds:.1f} s after the plant; "
        f"ListenerInEphemeralPortRange (for: {SHORT_FOR}) after {listener_seconds:.1f} s; "
        f"{checked} dashboard queries evaluated"
    )


def check_dashboard(server: Prometheus) -> int:
    """Every dashboard query parses and evaluates; the self-connect and listener panels, and
    the host variable, return data now that both were planted. Returns how many were run."""
    must_have_data = (
        "Bind failures per host and kind",
        "Self-connects over time",
        "Listeners at risk per host",
        "Listeners at risk",
        "variable instance",
    )
    queries = dashboard_queries()
    for where, expr in queries:
        result = server.query(grafana_to_promql(expr))  # asserts status success
        if any(where.startswith(f"panel {name!r}") or where == name for name in must_have_data):
            if where.endswith(" B") and "over time" in where:
                # sockets now: the self-connected one
                assert result and float(result[0]["value"][1]) >= 1, (where, result)
            else:
                assert result, (where, expr)
    exprs = " ".join(expr for _where, expr in queries)
    for metric in ("narcissus_shield_refused_total", "narcissus_shield_active",
                   "narcissus_bind_failures_total", "narcissus_self_connect_events_total",
                   "narcissus_ephemeral_listening_sockets"):  # fmt: skip
        assert metric in exprs, f"the dashboard has no panel on {metric}"
    return len(queries)


def test_rule_rendering_changes_only_the_for_durations() -> None:
    text = RULES.read_text()
    rendered = render_rules(text, "3s")
    assert rendered != text
    assert [line for line in rendered.splitlines() if "for:" in line] == [
        "        for: 3s",
        "        for: 3s",
    ]


def test_the_dashboard_is_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    assert board["uid"] and board["schemaVersion"] >= 36
    titles = [panel["title"] for panel in board["panels"]]
    for wanted in (
        "Self-connects over time, per host",
        "Listeners at risk per host",
        "Shield refusals per host",
        "Bind failures per host and kind",
    ):
        assert wanted in titles
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert '{job=~"$job", instance=~"$instance"}' in target["expr"], target["expr"]
