"""What the rest of narcissus says about the shield: doctor's line and JSON, the exporter's
metrics (HTTP and textfile alike, through the shared collectors)."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

from tests.prevent.shield import clients
from tests.prevent.shield.conftest import P, TestCgroup, needs_root_bpf, refused_in, run_in
from tests.support import PrivateNetns, run_cli

pytestmark = needs_root_bpf


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _export(tmp_path: Path) -> str:
    done = run_cli("exporter", "--textfile", str(tmp_path), "--once", "--json")
    assert done.returncode == 0, done.stderr
    return (tmp_path / "narcissus.prom").read_text()


def test_doctor_says_where_the_shield_is_on_and_what_it_refused(
    shielded: TestCgroup, one_port: PrivateNetns
) -> None:
    before = refused_in(shielded)
    done = run_in(clients.python("127.0.0.1", P), shielded, one_port)
    assert json.loads(done.stdout) == {"connected": False, "errno": errno.ECONNREFUSED}
    assert refused_in(shielded) == before + 1

    report = json.loads(run_cli("doctor", "--json").stdout)
    shield = report["shield"]
    assert shield["active"] is True and shield["mechanism"] == "bpf-set-retval"
    assert shielded.path in shield["cgroups"]
    assert shield["refused"] >= before + 1
    text = run_cli("doctor").stdout
    assert "shield           on (bpf-set-retval) for" in text and shielded.path in text


def test_doctor_says_off_when_no_cgroup_is_shielded(cgroup: TestCgroup) -> None:
    report = json.loads(run_cli("doctor", "--json").stdout)
    if report["shield"]["active"]:  # another run's shield on this host: not ours to judge
        assert cgroup.path not in report["shield"]["cgroups"]
        return
    assert report["shield"] == {"active": False, "mechanism": None, "cgroups": [], "refused": 0}
    assert "shield           off (narcissus shield on:" in run_cli("doctor").stdout


def test_the_exporter_counts_refusals(
    shielded: TestCgroup, one_port: PrivateNetns, tmp_path: Path
) -> None:
    first = _export(tmp_path)
    assert _metric(first, "narcissus_shield_active") == 1
    cgroups = _metric(first, "narcissus_shield_cgroups")
    assert cgroups is not None and cgroups >= 1
    before = _metric(first, "narcissus_shield_refused_total")
    assert before is not None
    for _ in range(3):
        run_in(clients.python("127.0.0.1", P), shielded, one_port)
    after = _metric(_export(tmp_path), "narcissus_shield_refused_total")
    assert after == before + 3


def test_without_root_the_shield_metrics_are_absent_not_zero(tmp_path: Path) -> None:
    """'Cannot tell' must never read as 'not shielded' on a dashboard."""
    from narcissus.fleet.exporter import ShieldCollector

    collector = ShieldCollector()
    collector._status = None  # as after a failed read (not root)
    collector._read_at = float("inf")
    assert list(collector.collect()) == []
    assert [family.name for family in collector.describe()] == [
        "narcissus_shield_active",
        "narcissus_shield_cgroups",
        "narcissus_shield_refused",
    ]


def test_the_boot_unit_verifies(tmp_path: Path) -> None:
    """deploy/systemd/narcissus-shield.service: systemd-analyze accepts it (ExecStart pointed at
    this checkout's narcissus, since verify checks that it exists)."""
    import shutil
    import subprocess
    import sys

    unit_file = Path(__file__).resolve().parents[3] / "deploy/systemd/narcissus-shield.service"
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: scripts/test installs Debian's systemd package"
    narcissus = Path(sys.executable).parent / "narcissus"
    unit = tmp_path / unit_file.name
    unit.write_text(unit_file.read_text().replace("/usr/local/bin/narcissus", str(narcissus)))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = unit_file.read_text()
    assert "ExecStart=/usr/local/bin/narcissus shield on" in text
    assert "ExecStop=/usr/local/bin/narcissus shield off" in text


def test_a_root_without_capabilities_is_told_what_is_missing(cgroup: TestCgroup) -> None:
    """Root in a container usually lacks CAP_BPF and CAP_SYS_ADMIN: status cannot list the
    links, so it says so (exit 3) rather than report "nothing shielded"."""
    no_caps = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--"]
    narcissus = [sys.executable, "-m", "narcissus"]
    for args in (
        ("shield", "status"),
        ("shield", "status", "--json"),
        ("shield", "off", "--cgroup", cgroup.path),
        ("shield", "on", "--cgroup", cgroup.path),
    ):
        done = subprocess.run(
            [*no_caps, *narcissus, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 3, (args, done.stderr)
        [line] = done.stderr.strip().splitlines()
        assert "lacks CAP_BPF" in line and "Traceback" not in done.stderr, line
    from narcissus.prevent.shield import shield_status

    assert not shield_status(cgroup.path).active  # and nothing was attached
