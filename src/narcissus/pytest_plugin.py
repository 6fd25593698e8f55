"""narcissus' pytest plugin (entry point `pytest11`, loaded by every pytest where narcissus is
installed, so it imports nothing heavy until an option turns something on).

- `pytest --narcissus-guard` or `narcissus_guard = true` in the ini file: the self-connect guard
  is installed for the whole session. A test whose client connects to itself then fails with
  SelfConnectError, a ConnectionRefusedError that says what happened and how to fix it, instead
  of reading back its own bytes; the terminal summary lists every self-connect prevented and
  the test it happened in (a client that retried past it may have passed).
- `free_port` fixture: a TCP port free for this test, outside the ephemeral range (so a client
  retrying it cannot connect to itself), never a well-known service's, and claimed across
  processes, so pytest-xdist workers and other test runs never get the same one; released when
  the test ends.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from narcissus.core.selfconnect import PreventedSelfConnect

# ---------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("narcissus", "narcissus: TCP self-connects")
    group.addoption(
        "--narcissus-guard",
        action="store_true",
        default=False,
        help="abort every TCP/UDP self-connect in the test process and raise SelfConnectError "
        "(a ConnectionRefusedError); same as the ini option narcissus_guard = true",
    )
    parser.addini(
        "narcissus_guard",
        type="bool",
        default=False,
        help="install narcissus' self-connect guard for the session (see --narcissus-guard)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("narcissus_guard") or config.getini("narcissus_guard"):
        config.pluginmanager.register(GuardSession(config), GuardSession.NAME)


# ---------------------------------------------------------------- the guard for a session


class GuardSession:
    """The guard, installed from configure to unconfigure, and the self-connects it prevented,
    by test."""

    NAME = "narcissus-guard"

    def __init__(self, config: pytest.Config) -> None:
        from narcissus.prevent.guard import add_listener, guarded, remove_listener

        self.prevented: list[tuple[str, PreventedSelfConnect]] = []
        self._test = "(outside any test)"
        self._guard = guarded()
        self._guard.__enter__()
        add_listener(self._record)
        config.add_cleanup(lambda: remove_listener(self._record))
        config.add_cleanup(lambda: self._guard.__exit__(None, None, None))

    def _record(self, event: PreventedSelfConnect) -> None:
        self.prevented.append((self._test, event))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, None, None]:
        self._test = item.nodeid
        try:
            yield
        finally:
            self._test = "(outside any test)"

    def pytest_report_header(self) -> str:
        return "narcissus: self-connect guard installed"

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.prevented:
            return
        terminalreporter.section("narcissus: self-connects prevented", yellow=True)
        for test, event in self.prevented:
            terminalreporter.write_line(
                f"{test}: {event.endpoint} ({event.transport}): nothing listened there and the "
                "client was handed the same port; raised SelfConnectError"
            )
        ports = " ".join(f"--port {port}" for port in sorted({e.port for _, e in self.prevented}))
        terminalreporter.write_line(f"fix for good: narcissus doctor {ports}")


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def free_port() -> Iterator[int]:
    """A free TCP port outside the ephemeral range, claimed for this test only."""
    from narcissus.prevent.free_port import claimed_port

    with claimed_port() as port:
        yield port
