"""Durations as people write and read them: `200ms`, `1.5s`, `5m`, `2h`, `1d`.

Rules: pure, standard library only. Parsing raises ValueError with a message written for a user
(the CLI wraps it into its one-line error); formatting picks the unit that keeps the number short.
"""

from __future__ import annotations

import math
import re

UNITS: dict[str, float] = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s|m|h|d)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds in `text` (a number with an optional unit us/ms/s/m/h/d; bare numbers are seconds).

    Raises ValueError for anything else, including zero: every duration narcissus asks for (a
    retry interval, a horizon) must be positive.
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(
            f"{text.strip()!r} is not a duration: write a positive number with a unit, "
            "e.g. 200ms, 1.5s, 5m, 2h or 1d"
        )
    seconds = float(match.group(1)) * UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"{text.strip()!r} must be longer than zero")
    return seconds


def _short(value: float) -> str:
    """Three significant digits, without a trailing `.0`."""
    if value >= 100:
        return f"{value:.0f}"
    text = f"{value:.2f}" if value < 10 else f"{value:.1f}"
    return text.rstrip("0").rstrip(".")


def format_duration(seconds: float) -> str:
    """`0.0002` -> `200us`, `0.2` -> `200ms`, `90` -> `1.5m`, `3300` -> `55m`, `7200` -> `2h`."""
    if math.isinf(seconds) or math.isnan(seconds):
        return "never"
    if seconds < 1e-3:
        return f"{_short(seconds * 1e6)}us"
    if seconds < 1:
        return f"{_short(seconds * 1e3)}ms"
    for unit, size, limit in (("s", 1.0, 60), ("m", 60.0, 60), ("h", 3600.0, 24)):
        if seconds < size * limit:
            return f"{_short(seconds / size)}{unit}"
    return f"{_short(seconds / 86400)}d"
