from __future__ import annotations

import pytest

from narcissus.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("200ms", 0.2), ("1.5s", 1.5), ("5m", 300), ("2h", 7200), ("1d", 86400), ("3", 3),
     ("30us", 30e-6), (" 10 s ", 10)],
)  # fmt: skip
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["0", "0ms", "-1s", "1w", "fast", "", "1.2.3s"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(30e-6, "30us"), (0.2, "200ms"), (1.5, "1.5s"), (90, "1.5m"), (60, "1m"), (3600, "1h"),
     (3300, "55m"), (7200, "2h"), (86400, "1d"), (float("inf"), "never")],
)  # fmt: skip
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
