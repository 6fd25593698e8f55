"""Which names mean "a port" and which values hold one: the tables every key/value format shares
(YAML, JSON, TOML, INI, .env, Python keywords and assignments, command-line options).

Rules: pure; behaviour lives in the tables. A name is split into lowercase words (`redisPort`,
`REDIS_PORT`, `redis-port` and `redis.port` are all `redis port`). It names a port when one of
its words is a port word and none is a "not a port" word: `port_timeout`, `num_ports` and
`max_port` hold a time, a count and the bound of a range, not a port anything listens on.
Address names (`bind`, `endpoint`, `redis_url`) hold `host:port`. Two small tables name the
exceptions: kube-apiserver's `service-node-port-range` holds the ports NodePort services listen
on, and kube-proxy's `nodePortAddresses` holds CIDRs, not ports.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

PORT_WORDS = frozenset(
    {"port", "ports", "listen", "pgport", "dbport", "sport", "dport", "lport", "rport"}
)
# A word among these makes the name a time, a size, a count or a setting about ports.
NOT_PORT_WORDS = frozenset(
    {
        "timeout", "timeouts", "time", "ms", "msec", "millis", "sec", "secs", "seconds",
        "interval", "delay", "ttl", "wait", "size", "bytes", "buffer", "count", "counts", "num",
        "total", "retries", "retry", "attempts", "tries", "limit", "weight", "priority",
        "range", "ranges", "version", "backlog", "workers", "threads", "connections", "pool",
        "memory", "mb", "kb", "gb", "percent", "ratio", "enabled", "enable", "disabled",
        "forwarding", "security", "policy", "protocol", "name", "names", "mode", "index",
        "reuse", "id", "ids",
        # the bounds of a range of ports (MAX_PORT = 65535), not a port anything listens on
        "min", "max", "low", "high", "lower", "upper", "lowest", "highest", "first", "last",
        "start", "end",
    }
)  # fmt: skip
ADDRESS_WORDS = frozenset(
    {
        "addr", "address", "addresses", "host", "hosts", "bind", "listen", "endpoint",
        "endpoints", "server", "servers", "url", "urls", "uri", "dsn", "upstream", "broker",
        "brokers", "peer", "peers", "seed", "seeds", "nodes", "master", "sentinel",
        "sentinels", "connect", "authority",
    }
)  # fmt: skip

# Names whose value is a range of ports servers are given, whatever their words say ("range"
# would make them a setting about ports): kube-apiserver's NodePort range.
PORT_RANGE_NAMES = frozenset({("service", "node", "port", "range")})
# Names that hold no port although their words say so: kube-proxy's nodePortAddresses is a list
# of CIDRs (which addresses NodePorts answer on).
NOT_PORT_NAMES = frozenset({("node", "port", "addresses"), ("nodeport", "addresses")})

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
# A port, not part of a longer number; TOML and YAML write 50_000.
PORT_NUMBER = re.compile(r"(?<![\w.])(\d[\d_]{0,5})(?![\w.])")
_HOST_PORT = re.compile(
    r"(?:\[[0-9A-Fa-f:.%\w]*\]|[\w.*${}-]*):(\d{1,5})(?![\w.:])"  # [v6]:p, host:p, :p, *:p
)
_RANGE = re.compile(r"^(\d{1,5})-(\d{1,5})$")
# docker's published-port syntax, [IP:]HOST[-HOST]:CONTAINER[-CONTAINER][/PROTOCOL]
_PUBLISHED = re.compile(
    r"^(?:(?:\[[^\]]*\]|[\w.-]+):)?(?P<host>(?P<low>\d{1,5})(?:-(?P<high>\d{1,5}))?)"
    r":\d{1,5}(?:-\d{1,5})?(?:/\w+)?$"
)


def words(name: str) -> list[str]:
    """`redisPort`, `REDIS_PORT`, `redis-port`, `--redis.port` -> ["redis", "port"]."""
    return [word.lower() for word in _WORD.findall(name)]


def is_port_name(name: str) -> bool:
    parts = words(name)
    if tuple(parts) in PORT_RANGE_NAMES:
        return True
    if tuple(parts) in NOT_PORT_NAMES:
        return False
    return bool(PORT_WORDS.intersection(parts)) and not NOT_PORT_WORDS.intersection(parts)


def is_address_name(name: str) -> bool:
    parts = words(name)
    if tuple(parts) in NOT_PORT_NAMES:
        return False
    return bool(ADDRESS_WORDS.intersection(parts)) and not NOT_PORT_WORDS.intersection(parts)


def as_port(text: str) -> int | None:
    """`"50000"` or `"50_000"` -> 50000; None when it is not a whole number from 1 to 65535."""
    digits = text.replace("_", "")
    if not digits.isdigit() or text.startswith("_") or text.endswith("_"):
        return None
    port = int(digits)
    return port if 1 <= port <= 65535 else None


def ports_in_port_value(value: str) -> Iterator[tuple[int, int, int | None]]:
    """(offset in `value`, port, last port of a range) for the value of a port name: `50000`,
    `"50000"`, `50000-50010`, `127.0.0.1:50000`, `50000,50001`."""
    stripped = value.strip()
    lead = value.find(stripped) if stripped else 0
    span = _RANGE.match(stripped)
    if span:
        yield from _span(lead + span.start(1), span.group(1), span.group(2))
        return
    if ":" in stripped:
        published = list(published_ports(value))
        yield from published or ports_in_address(value)
        return
    for match in PORT_NUMBER.finditer(value):
        port = as_port(match.group(1))
        if port is not None:
            yield match.start(1), port, None


def published_ports(value: str) -> Iterator[tuple[int, int, int | None]]:
    """The host side of a docker port mapping (`127.0.0.1:50000:6379` -> 50000); nothing for a
    container port alone (`6379`: docker picks the host port)."""
    stripped = value.strip()
    match = _PUBLISHED.match(stripped)
    if match:
        lead = value.find(stripped)
        yield from _span(lead + match.start("low"), match.group("low"), match.group("high"))


def _span(
    offset: int, low_text: str, high_text: str | None
) -> Iterator[tuple[int, int, int | None]]:
    low = as_port(low_text)
    high = as_port(high_text) if high_text else None
    if low is None or (high_text and (high is None or high < low)):
        return
    yield offset, low, high


def ports_in_address(value: str) -> Iterator[tuple[int, int, int | None]]:
    """(offset, port, None) for each `host:port` in an address value (`redis:50000`,
    `[::1]:50000`, `a:9092,b:9092`); URLs are left to the text rules."""
    if "://" in value:
        return
    for match in _HOST_PORT.finditer(value):
        port = as_port(match.group(1))
        if port is not None:
            yield match.start(1), port, None


def ports_for(name: str, value: str) -> Iterator[tuple[int, int, int | None]]:
    """The ports `value` holds when it is assigned to `name` (nothing for other names)."""
    if is_port_name(name):
        yield from ports_in_port_value(value)
    elif is_address_name(name):
        yield from ports_in_address(value)
