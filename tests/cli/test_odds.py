"""`narcissus odds` run as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import assert_one_line_error, run_cli

SMALL = ("--range", "40000-40999", "--reserved", "")


def odds_json(*args: str) -> tuple[int, dict[str, object]]:
    done = run_cli("odds", "--json", *args)
    assert done.stderr == "", done.stderr
    return done.returncode, json.loads(done.stdout)


def test_json_carries_the_answer_for_a_port_at_risk() -> None:
    status, report = odds_json("--port", "40100", "--os", "windows", *SMALL, "--horizon", "1m")
    assert status == 1
    assert report["model"] == "windows" and report["method"] == "closed form"
    # 1,000 ports, one attempt every 200 ms: within 60 s, 300 of the 1,000 starts hit.
    assert report["p_within_horizon"] == pytest.approx(0.3)
    assert report["mean_attempts"] == pytest.approx(500.5)
    assert report["mean_seconds"] == pytest.approx(100.1)
    assert report["median_seconds"] == pytest.approx(100.0)
    assert report["p99_seconds"] == pytest.approx(198.0)
    assert report["per_day"] == pytest.approx(86400 / 0.2 / 1000)
    assert "excludedportrange" in str(report["advice"])
    assert [e["model"] for e in report["estimates"]] == ["windows"]  # type: ignore[index]


def test_several_models_and_a_safe_port() -> None:
    status, report = odds_json(
        "--port", "40101", "--os", "linux", "--os", "linux-3", *SMALL, "--interval", "1s"
    )
    assert status == 1  # linux-3 can hand out odd ports
    linux, old = report["estimates"]  # type: ignore[misc]
    assert linux["exposure"] == "other-parity" and linux["p_within_horizon"] == 0
    assert linux["mean_seconds"] is None and linux["method"] == "none"
    assert old["exposure"] == "exposed" and old["p_within_horizon"] == 1.0
    status, report = odds_json("--port", "8080", "--os", "linux", *SMALL)
    assert status == 0 and report["exposure"] == "outside"


def test_monte_carlo_prints_trials_and_intervals() -> None:
    args = ("--port", "40100", "--os", "linux", *SMALL, "--interval", "1ms", "--seed", "1")
    status, report = odds_json(*args, "--trials", "500")
    assert status == 1 and report["method"] == "monte carlo" and report["trials"] == 500
    low, high = report["mean_attempts_interval"]  # type: ignore[misc]
    assert low <= report["mean_attempts"] <= high
    text = run_cli("odds", *args, "--trials", "500")
    assert text.returncode == 1
    assert "Monte Carlo: 500 trials; 99% intervals" in text.stdout
    assert "sysctl -w net.ipv4.ip_local_reserved_ports=40100" in text.stdout


def test_default_is_this_host(tmp_path: Path) -> None:
    status, report = odds_json()
    assert report["from_host"] is True and report["model"] == "linux"
    assert report["range_from"] == "host"
    assert status == (1 if report["p_within_horizon"] > 0 else 0)


def test_the_range_says_where_it_came_from() -> None:
    _status, given = odds_json("--range", "40000-50000", "--os", "linux")
    assert given["range_from"] == "given" and given["from_host"] is True  # reserved: host's
    _status, windows = odds_json("--os", "windows")
    assert windows["range_from"] == "default" and windows["from_host"] is False
    text = run_cli("odds", "--range", "40000-50000", "--os", "linux").stdout
    assert "range 40000-50000 as given" in text
    assert "from the Windows default" in run_cli("odds", "--os", "windows").stdout


def test_plot_writes_a_png(tmp_path: Path) -> None:
    target = tmp_path / "odds.png"
    done = run_cli(
        "odds", "--os", "windows", "--os", "linux-4.6", "--os", "macos", *SMALL,
        "--plot", str(target),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert f"plot written to {target}" in done.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--interval", "0"), "--interval takes a duration more than 0"),
        (("--interval=-1s",), "--interval takes a duration"),
        (("--horizon", "soon"), "--horizon takes a duration"),
        (("--port", "70000"), "1 to 65535"),
        (("--port", "0"), "1 to 65535"),
        (("--os", "plan9"), "unknown model 'plan9'"),
        (("--range", "50000-40000"), "starts after it ends"),
        (("--clients", "0"), "--clients takes a whole number from 1"),
        (("--other-cps", "-3"), "connects per second"),
        (("--plot", "odds.txt"), "PNG"),
        (("--fleet", "0"), "from 1"),
        (("--retrying", "5m"), "give --fleet HOSTS"),
        (("--fleet", "10", "--retrying", "31d"), "at most 30d"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], fragment: str) -> None:
    assert_one_line_error(run_cli("odds", *args), fragment)


def test_fleet_answers_in_json_and_text() -> None:
    args = ("--port", "40100", "--os", "windows", *SMALL, "--fleet", "2000")
    args += ("--clients-per-host", "4", "--retrying", "50s")
    status, report = odds_json(*args)
    assert status == 1
    fleet = report["fleet"]
    assert isinstance(fleet, dict)
    # 4 clients every 200 ms for 50 s: 1,000 attempts, one full lap of the 1,000-port ring.
    assert fleet["hosts"] == 2000 and fleet["clients_per_host"] == 4
    assert fleet["per_host_per_month"] == pytest.approx(1.0)
    assert fleet["per_month"] == pytest.approx(2000.0)
    assert fleet["per_day"] == pytest.approx(2000.0 / 30)
    assert fleet["p_host_per_month"] == pytest.approx(1.0)
    assert fleet["hosts_hit_per_month"] == pytest.approx(2000.0)
    assert report["clients"] == 4
    text = run_cli("odds", *args)
    assert text.returncode == 1
    assert "fleet: 2,000 hosts, 4 clients each retrying port 40100 every 200ms, 50s a month" in (
        text.stdout
    )
    assert "windows: 2e+03 self-connects a month across the fleet (66.7 a day)" in text.stdout
    status, plain = odds_json("--port", "40100", "--os", "windows", *SMALL)
    assert "fleet" not in plain


WITHOUT_NUMPY = """
import sys
class NoNumpy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("numpy", "matplotlib"):
            raise ImportError(f"No module named {name!r} (hidden by the test)")
sys.meta_path.insert(0, NoNumpy())
from narcissus.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_closed_forms_work_without_numpy_and_a_monte_carlo_says_what_to_install() -> None:
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", WITHOUT_NUMPY, "odds", "--port", "40100", *SMALL, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    closed = run("--os", "linux", "--json")
    assert closed.returncode == 1, closed.stderr
    assert json.loads(closed.stdout)["method"] == "closed form"
    needs = run("--os", "linux", "--interval", "1ms")
    assert needs.returncode == 3
    assert needs.stderr.strip().splitlines() == [
        "narcissus odds: error: linux in this scenario needs a Monte Carlo, which needs numpy: "
        "NARCISSUS_EXTRAS=odds ./scripts/install, or pip install '.[odds]', in the checkout"
    ]
