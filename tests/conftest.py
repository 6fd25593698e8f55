"""Fixtures, the rule that makes CI fail on any skipped test, and the leak check.

Tests that need root (namespaces, SOCK_DESTROY, ftrace) or a real server skip with a reason on a
laptop; CI runs with --fail-on-skip (or NARCISSUS_FAIL_ON_SKIP=1), which turns a skip into a
failed run, because there everything the tests need is available.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import suppress

import pytest

from tests.support import PrivateNetns, private_netns

# The session-end check that the run left nothing behind (tests/leakcheck.py).
pytest_plugins = ["tests.leakcheck"]

# ---------------------------------------------------------------- signals at their default


def pytest_configure(config: pytest.Config) -> None:
    """The tests signal the processes they start and check what each signal does. A run
    started under `nohup` (SIGHUP ignored) or as a background job without job control (SIGINT
    ignored) would hand that "ignore" down to every child and change the answer, so the
    session puts both back to their defaults first."""
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# ---------------------------------------------------------------- skips fail CI

_skipped: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fail-on-skip",
        action="store_true",
        default=os.environ.get("NARCISSUS_FAIL_ON_SKIP") == "1",
        help="fail the run if any test was skipped (CI: everything tests need is there)",
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.getoption("--fail-on-skip") and _skipped:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if terminalreporter.config.getoption("--fail-on-skip") and _skipped:
        terminalreporter.write_line(
            f"FAILED: {len(_skipped)} test(s) skipped under --fail-on-skip: " + ", ".join(_skipped),
            red=True,
        )


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session", autouse=True)
def private_cache() -> Iterator[None]:
    """`narcissus run` builds its preload library into the user's cache on first use; the
    suite uses a cache of its own (XDG_CACHE_HOME, inherited by every command it runs) and
    removes it, so a test run leaves nothing in the real one. Built here, before any test, so
    that no test's timing includes the compiler."""
    import shutil
    import tempfile

    from narcissus.prevent.preload import library
    from narcissus.prevent.preload.build import BuildError

    before = os.environ.get("XDG_CACHE_HOME")
    directory = tempfile.mkdtemp(prefix="narcissus-test-cache-")
    os.environ["XDG_CACHE_HOME"] = directory
    try:
        with suppress(BuildError):  # no compiler: the tests that need one say so themselves
            library()
        yield
    finally:
        if before is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = before
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def netns() -> Iterator[PrivateNetns]:
    """A private network namespace (loopback up) that only this test uses."""
    with private_netns() as namespace:
        yield namespace


@pytest.fixture
def isolated(netns: PrivateNetns) -> Iterator[PrivateNetns]:
    """This thread inside a private network namespace for one test: the sockets it makes and
    the processes it starts self-connect there, never in the host's namespace (where each would
    leave a TIME_WAIT remnant for a minute)."""
    with netns.entered():
        yield netns
