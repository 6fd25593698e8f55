"""`narcissus run` and NARCISSUS_GUARD=1, from real processes and their children."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.support import ROOT, PrivateNetns, assert_one_line_error, build_wheel, run_cli

# Self-connects (bind-then-connect) and prints what it saw: "refused" or "self-connected";
# with "spawn", first runs itself again as a child process and passes its line on.
CHILD = textwrap.dedent(
    """
    import socket, subprocess, sys
    if sys.argv[1:] == ["spawn"]:
        child = subprocess.run([sys.executable, __file__], capture_output=True, text=True)
        sys.stdout.write("child: " + child.stdout)
        sys.stderr.write(child.stderr)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        sock.connect(sock.getsockname())
        print("self-connected")
    except ConnectionRefusedError:
        print("refused")
    sys.exit(7)
    """
)


@pytest.fixture
def child(tmp_path: Path) -> Path:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return script


def clean_env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NARCISSUS_GUARD")}
    env.pop("PYTHONPATH", None)
    env.update(changes)
    return env


def test_run_guards_the_command_and_its_children(child: Path, isolated: PrivateNetns) -> None:
    done = run_cli("run", "--", sys.executable, str(child), "spawn")
    assert done.returncode == 7  # the command's own exit status
    assert done.stdout.splitlines() == ["child: refused", "refused"]
    reports = [line for line in done.stderr.splitlines() if line.startswith("narcissus:")]
    assert len(reports) == 2, done.stderr
    assert "prevented a self-connect to 127.0.0.1:" in reports[0]
    assert "narcissus doctor --port" in reports[0]


def test_without_run_the_same_command_self_connects(child: Path, isolated: PrivateNetns) -> None:
    done = subprocess.run(
        [sys.executable, str(child)], capture_output=True, text=True, env=clean_env(), check=False
    )
    assert done.stdout.split() == ["self-connected"]


def test_run_json_reports_one_object_per_line(child: Path, isolated: PrivateNetns) -> None:
    done = run_cli("run", "--json", "--", sys.executable, str(child))
    assert done.stdout.split() == ["refused"]
    [report] = [json.loads(line) for line in done.stderr.splitlines()]
    assert report["event"] == "self-connect-prevented"
    assert report["address"] == "127.0.0.1"
    assert report["transport"] == "tcp" and report["family"] == "ipv4"
    assert report["program"] == "child.py" and isinstance(report["pid"], int)


def test_run_quiet_and_retries(child: Path, tmp_path: Path, isolated: PrivateNetns) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from narcissus.prevent.guard import check\nprint(check.retries)\n")
    done = run_cli("run", "--quiet", "--retries", "3", "--", sys.executable, str(probe))
    assert done.stdout.split() == ["3"], done.stderr
    done = run_cli("run", "--quiet", "--", sys.executable, str(child))
    assert done.stdout.split() == ["refused"] and done.stderr == ""


def test_run_keeps_an_existing_sitecustomize_and_pythonpath(child: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import builtins\nbuiltins.CUSTOMIZED = True\n")
    (site / "helper_module.py").write_text("VALUE = 42\n")
    script = "import builtins, helper_module; print(builtins.CUSTOMIZED, helper_module.VALUE)"
    done = subprocess.run(
        [sys.executable, "-m", "narcissus", "run", "--", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=str(site)),
        check=False,
        timeout=60,
    )
    assert done.stdout.split() == ["True", "42"], done.stderr


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs the system python3")
def test_run_guards_a_python_without_narcissus_installed(
    child: Path, isolated: PrivateNetns
) -> None:
    system = subprocess.run(
        ["/usr/bin/python3", "-c", "import narcissus"], capture_output=True, check=False
    )
    assert system.returncode != 0, "the system python3 should not have narcissus installed"
    done = run_cli("run", "--quiet", "--", "/usr/bin/python3", str(child))
    assert done.stdout.split() == ["refused"], done.stderr


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["run"], "give the command to run after --"),
        (["run", "--"], "give the command to run after --"),
        (["run", "--", "no-such-command-anywhere"], "no-such-command-anywhere: command not found"),
        (["run", "--", "/etc/hostname"], "cannot run /etc/hostname"),
        (["run", "--retries", "many", "--", "true"], "--retries takes a whole number"),
    ],
)
def test_run_bad_input_is_one_line_and_exit_2(argv: list[str], fragment: str) -> None:
    assert_one_line_error(run_cli(*argv), fragment)


# ---------------------------------------------------------------- NARCISSUS_GUARD=1


def probe_guard(**env: str) -> list[str]:
    script = (
        "import sys, socket; "
        "loaded = 'narcissus' in sys.modules; "
        "print(loaded, getattr(socket.socket.connect, '__module__', 'builtin'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split() + ([done.stderr.strip()] if done.stderr else [])


def test_narcissus_guard_1_guards_an_unwrapped_python(child: Path, isolated: PrivateNetns) -> None:
    assert probe_guard(NARCISSUS_GUARD="1") == ["True", "narcissus.prevent.guard.sockets"]
    done = subprocess.run(
        [sys.executable, str(child)],
        capture_output=True,
        text=True,
        env=clean_env(NARCISSUS_GUARD="1"),
        check=False,
    )
    assert done.stdout.split() == ["refused"]


def test_without_narcissus_guard_nothing_is_loaded() -> None:
    assert probe_guard() == ["False", "builtin"]
    assert probe_guard(NARCISSUS_GUARD="0") == ["False", "builtin"]


def test_a_bad_retries_setting_warns_and_still_guards() -> None:
    out = probe_guard(NARCISSUS_GUARD="1", NARCISSUS_GUARD_RETRIES="lots")
    assert out[:2] == ["True", "narcissus.prevent.guard.sockets"]
    assert "NARCISSUS_GUARD_RETRIES='lots' is not a whole number from 0 to 100" in out[2]


def test_the_wheel_puts_the_pth_file_beside_the_package(tmp_path: Path) -> None:
    """What NARCISSUS_GUARD=1 relies on in a regular (non-editable) install."""
    root = ROOT
    wheel, _done = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        pth = archive.read("narcissus_guard.pth").decode()
        snapshot = archive.read("narcissus/core/data/iana-tcp-service-ports.tsv")
    assert "narcissus/prevent/guard/_hook/sitecustomize.py" in names
    # The same wheel carries the IANA snapshot `narcissus port` and `lint` read (package data).
    assert snapshot == (root / "src/narcissus/core/data/iana-tcp-service-ports.tsv").read_bytes()
    assert pth == (root / "src" / "narcissus_guard.pth").read_text()
    assert "narcissus.prevent.guard.startup" in pth
