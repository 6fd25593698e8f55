"""Turning the guard on at interpreter start-up, from the environment.

Two ways in, both ending in `activate()`:
- `NARCISSUS_GUARD=1` where narcissus is installed: the one-line `narcissus_guard.pth` that the
  package puts in site-packages calls it (and costs a dictionary lookup when the variable is
  unset);
- `narcissus run -- CMD` (or `child_environment()`): puts `_hook/` first on PYTHONPATH, whose
  `sitecustomize` calls it in any Python >= 3.10 the command starts, narcissus installed there or
  not, then runs the `sitecustomize` it shadows. Children inherit the environment, so their
  Python processes are guarded too.

Variables: NARCISSUS_GUARD (1 on, 0 or unset off), NARCISSUS_GUARD_RETRIES (0-100),
NARCISSUS_GUARD_REPORT (text or json: one line on stderr for each self-connect prevented).
"""

from __future__ import annotations

import os
import sys

from narcissus.core.selfconnect import MAX_RETRIES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from narcissus.core.selfconnect import PreventedSelfConnect

ENV_GUARD = "NARCISSUS_GUARD"
ENV_RETRIES = "NARCISSUS_GUARD_RETRIES"
ENV_REPORT = "NARCISSUS_GUARD_REPORT"
REPORT_FORMATS = ("text", "json")
HOOK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_hook")

_activated: list[bool] = []  # [True] once activate() has installed the guard


def activate(environ: Mapping[str, str] | None = None) -> bool:
    """Install the guard if the environment asks for it; True if it did. Never raises for a bad
    setting: a warning on stderr, and the default is used."""
    from narcissus.prevent.guard import add_listener, install

    env = os.environ if environ is None else environ
    if env.get(ENV_GUARD, "") in ("", "0") or _activated:
        return bool(_activated)
    install(retries=_retries(env.get(ENV_RETRIES, "")))
    report = env.get(ENV_REPORT, "")
    if report in REPORT_FORMATS:
        add_listener(_StderrReport(report))
    elif report:
        _warn(f"{ENV_REPORT}={report!r} is not one of {', '.join(REPORT_FORMATS)}; not reporting")
    _activated.append(True)
    return True


def child_environment(
    environ: Mapping[str, str] | None = None, *, retries: int = 0, report: str | None = None
) -> dict[str, str]:
    """A copy of `environ` (default: this process's) in which every Python process started
    guards its connects: the start-up hook first on PYTHONPATH, NARCISSUS_GUARD=1."""
    env = dict(os.environ if environ is None else environ)
    env[ENV_GUARD] = "1"
    env[ENV_RETRIES] = str(retries)
    if report is None:
        env.pop(ENV_REPORT, None)
    else:
        env[ENV_REPORT] = report
    rest = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry != HOOK_DIR]
    env["PYTHONPATH"] = os.pathsep.join([HOOK_DIR, *rest]) if any(rest) else HOOK_DIR
    return env


def _retries(text: str) -> int:
    if not text:
        return 0
    if text.isdigit() and int(text) <= MAX_RETRIES:
        return int(text)
    _warn(f"{ENV_RETRIES}={text!r} is not a whole number from 0 to {MAX_RETRIES}; using 0")
    return 0


def _warn(message: str) -> None:
    from contextlib import suppress

    with suppress(OSError, ValueError, AttributeError):  # no usable stderr: nothing to tell
        sys.stderr.write(f"narcissus guard: {message}\n")


class _StderrReport:
    """A listener that writes one line per self-connect prevented (`narcissus run`'s report)."""

    def __init__(self, form: str) -> None:
        self.form = form

    def __call__(self, event: PreventedSelfConnect) -> None:
        from narcissus.core.selfconnect import event_line

        try:
            sys.stderr.write(event_line(event, self.form) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):  # stderr closed: the connect matters more
            pass
