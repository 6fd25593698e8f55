"""Helpers for the preload tests: the programs compiled at test time, and running commands as
user nobody (no usable HOME, a TMPDIR of its own) inside a private network namespace."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support import NOBODY, SRC, PrivateNetns, unprivileged_python

HERE = Path(__file__).parent
# Any even port inside Linux's default range; in a one-port namespace, the only port.
PORT = 50000
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Programs:
    """What the tests run, built once per session in a directory nobody can read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.client = root / "client"
        self.static_client = root / "client-static"
        self.fake_go_section = root / "fake-go-section"
        self.fake_go_note = root / "fake-go-note"
        self.node_script = root / "selfconnect.js"
        self.java_classes = root / "java"
        self.cache_root = root / "tmp"  # nobody's TMPDIR


def compile_program(argv: list[str]) -> None:
    """Compile, failing on any warning as well as on an error."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stderr}"
    assert done.stderr == "", f"warnings from {' '.join(argv)}:\n{done.stderr}"


def nobody_env(programs: Programs, **changes: str) -> dict[str, str]:
    """User nobody's environment: no usable HOME, this checkout importable, TMPDIR its own."""
    env = {
        "PATH": SYSTEM_PATH,
        "PYTHONPATH": str(SRC),
        "HOME": "/nonexistent",
        "TMPDIR": str(programs.cache_root),
        "LANG": "C.UTF-8",
    }
    env.update(changes)
    return {k: v for k, v in env.items() if v != ""}


def as_nobody(argv: list[str], netns: PrivateNetns | None = None) -> list[str]:
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    return netns.wrap([*drop, *argv]) if netns is not None else [*drop, *argv]


def run_as_nobody(
    argv: list[str],
    programs: Programs,
    netns: PrivateNetns | None = None,
    *,
    timeout: float = 120,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """`argv` as nobody with `nobody_env(**env)`. A PATH given there is set only for `argv`
    itself (through env(1)), so ip and setpriv are still found on the way."""
    path = env.pop("PATH", None)
    if path is not None:
        argv = ["/usr/bin/env", f"PATH={path}", *argv]
    return subprocess.run(
        as_nobody(argv, netns),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
        env=nobody_env(programs, **env),
    )


def narcissus_run(
    programs: Programs,
    netns: PrivateNetns | None,
    *argv: str,
    options: tuple[str, ...] = (),
    timeout: float = 120,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """`narcissus run [OPTIONS] -- ARGV` as user nobody (inside `netns` if given)."""
    python = unprivileged_python()
    return run_as_nobody(
        [*python, "-m", "narcissus", "run", *options, "--", *argv],
        programs,
        netns,
        timeout=timeout,
        **env,
    )


def reports(stderr: str) -> list[str]:
    """The report lines (text form) among what a command wrote on stderr."""
    return [line for line in stderr.splitlines() if line.startswith("narcissus: prevented")]


def sockets_on(netns: PrivateNetns, port: int) -> list[str]:
    """Every TCP socket (TIME_WAIT included) in `netns` with `port` at either end."""
    done = subprocess.run(
        netns.wrap(["ss", "-tanH"]), capture_output=True, text=True, check=True, timeout=30
    )
    return [line for line in done.stdout.splitlines() if f":{port} " in f"{line} "]
