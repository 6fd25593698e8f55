"""Parsing HOST:PORT as a user types it (`narcissus exporter --listen`)."""

from __future__ import annotations

import pytest

from narcissus.core.ports import parse_host_port
from narcissus.errors import InputError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9469", ("127.0.0.1", 9469)),
        (" 0.0.0.0:9469 ", ("0.0.0.0", 9469)),
        ("[::1]:9469", ("::1", 9469)),
        ("[fe80::1%lo]:80", ("fe80::1%lo", 80)),
        ("localhost:80", ("localhost", 80)),
        ("9469", ("127.0.0.1", 9469)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
    ],
)
def test_accepted_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


def test_bare_port_uses_the_default_host() -> None:
    assert parse_host_port("80", default_host="::1") == ("::1", 80)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "must look like"),
        ("abc", "must look like"),
        (":9469", "needs a host"),
        ("::1:9469", "in brackets"),
        ("[::1]9469", "must look like"),
        ("[nope]:80", "not an IPv6 address"),
        ("127.0.0.1:99999", "from 1 to 65535"),
        ("127.0.0.1:http", "whole number"),
        ("bad host:80", "needs a host"),
    ],
)
def test_rejected_forms_say_what_to_write(text: str, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_host_port(text, what="--listen")
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("--listen")
