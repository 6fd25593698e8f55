"""deploy/osquery/narcissus.conf and deploy/falco/narcissus_rules.yaml, as far as this machine
allows: neither osquery nor Falco is installed (Debian 12 packages neither; the
libfalcosecurity0 package is the libraries without the falco program), so

- each osquery query is run with Python's sqlite3 (osquery's SQL is SQLite's) against tables
  with osquery's column names, filled with rows as osquery reports them: a self-connected
  socket, a normal one, an unconnected one, listeners inside, below and reserved within the
  range, and system_controls rows with the range tab-separated as /proc writes it;
- the Falco rule's condition is evaluated by a small interpreter of the part of Falco's
  condition language it uses (fields, =, !=, in, and/or/not, macros, val()) over recorded
  connect() events; its fields are checked against the Falco fields it may use.

Not run: osquery itself (its tables, its SQLite build) and Falco itself (its parser, its
drivers, real syscall events).
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
PACK = ROOT / "deploy" / "osquery" / "narcissus.conf"
RULES = ROOT / "deploy" / "falco" / "narcissus_rules.yaml"

# osquery's tables, with the columns the pack reads (names and types as osquery documents them).
SCHEMA = """
CREATE TABLE process_open_sockets (pid INTEGER, fd INTEGER, socket INTEGER, family INTEGER,
  protocol INTEGER, local_address TEXT, remote_address TEXT, local_port INTEGER,
  remote_port INTEGER, path TEXT, state TEXT, net_namespace TEXT);
CREATE TABLE listening_ports (pid INTEGER, port INTEGER, protocol INTEGER, family INTEGER,
  address TEXT, fd INTEGER, socket INTEGER, path TEXT, net_namespace TEXT);
CREATE TABLE system_controls (name TEXT, oid TEXT, subsystem TEXT, current_value TEXT,
  config_value TEXT, type TEXT, field_name TEXT);
CREATE TABLE processes (pid INTEGER, name TEXT, path TEXT, cmdline TEXT);
"""
NS = "4026531840"
SOCKETS = [
    # a self-connected client: same address and port on both ends
    (4242, 7, 91001, 2, 6, "127.0.0.1", "127.0.0.1", 50000, 50000, "", "ESTABLISHED", NS),
    # the same over IPv6, in a container's namespace
    (4343, 5, 91002, 10, 6, "::1", "::1", 41000, 41000, "", "ESTABLISHED", "4026532999"),
    # a normal client of redis
    (4242, 8, 91003, 2, 6, "127.0.0.1", "127.0.0.1", 40001, 6379, "", "ESTABLISHED", NS),
    # same port on both ends, different hosts: not a self-connect
    (4444, 3, 91004, 2, 6, "10.0.0.1", "10.0.0.2", 50001, 50001, "", "ESTABLISHED", NS),
    # an unconnected socket: 0.0.0.0:0 on both ends
    (4444, 4, 91005, 2, 6, "0.0.0.0", "0.0.0.0", 0, 0, "", "CLOSE", NS),
    # UDP "connected" to itself: not TCP
    (4444, 6, 91006, 2, 17, "127.0.0.1", "127.0.0.1", 50002, 50002, "", "", NS),
]
LISTENERS = [
    (100, 45000, 6, 2, "0.0.0.0", 3, 92001, "", NS),  # inside the range: at risk
    (101, 6379, 6, 2, "127.0.0.1", 3, 92002, "", NS),  # below the range
    (102, 50000, 6, 10, "::", 3, 92003, "", NS),  # reserved
    (103, 55005, 6, 2, "0.0.0.0", 3, 92004, "", NS),  # inside a reserved range
    (104, 45001, 17, 2, "0.0.0.0", 3, 92005, "", NS),  # UDP
    (105, 60999, 6, 2, "0.0.0.0", 3, 92006, "", NS),  # the last port of the range
]
PROCESSES = [(4242, "client", "/usr/bin/client", "client --retry"), (100, "api", "", ""),
             (105, "edge", "", ""), (4343, "worker", "", "")]  # fmt: skip


def controls(port_range: str, reserved: str | None) -> list[tuple[str, ...]]:
    rows = [("net.ipv4.ip_local_port_range", "", "net", port_range, "", "", "")]
    if reserved is not None:
        rows.append(("net.ipv4.ip_local_reserved_ports", "", "net", reserved, "", "", ""))
    rows.append(("net.ipv4.tcp_fin_timeout", "", "net", "60", "", "", ""))
    return rows


def database(
    port_range: str = "32768\t60999", reserved: str | None = "50000,55000-55010"
) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    db.executemany(f"INSERT INTO process_open_sockets VALUES ({','.join('?' * 12)})", SOCKETS)
    db.executemany(f"INSERT INTO listening_ports VALUES ({','.join('?' * 9)})", LISTENERS)
    db.executemany("INSERT INTO system_controls VALUES (?,?,?,?,?,?,?)",
                   controls(port_range, reserved))  # fmt: skip
    db.executemany("INSERT INTO processes VALUES (?,?,?,?)", PROCESSES)
    return db


def pack() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(PACK.read_text())
    return loaded


def run(name: str, db: sqlite3.Connection) -> list[dict[str, Any]]:
    cursor = db.execute(pack()["queries"][name]["query"])
    columns = [column[0] for column in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def test_the_pack_is_a_valid_osquery_pack() -> None:
    loaded = pack()
    assert loaded["platform"] == "linux"
    assert set(loaded["queries"]) == {
        "narcissus_self_connected_sockets",
        "narcissus_listeners_in_ephemeral_range",
        "narcissus_ephemeral_port_settings",
    }
    for name, query in loaded["queries"].items():
        assert set(query) <= {"query", "interval", "description", "snapshot", "removed",
                              "platform", "version", "shard"}, name  # fmt: skip
        assert isinstance(query["interval"], int) and 10 <= query["interval"] <= 604800
        assert query["query"].rstrip().endswith(";") and query["description"]
    for discovery in loaded["discovery"]:
        assert database().execute(discovery).fetchall() == [(1,)]


def test_self_connected_sockets_are_exactly_the_self_connected_ones() -> None:
    rows = run("narcissus_self_connected_sockets", database())
    assert [(r["pid"], r["process"], r["address"], r["port"]) for r in rows] == [
        (4242, "client", "127.0.0.1", 50000),
        (4343, "worker", "::1", 41000),
    ]
    assert rows[1]["net_namespace"] == "4026532999"  # containers' namespaces are seen too


def test_listeners_inside_the_range_and_not_reserved() -> None:
    rows = run("narcissus_listeners_in_ephemeral_range", database())
    assert [(r["port"], r["process"]) for r in rows] == [(45000, "api"), (60999, "edge")]
    assert {(r["range_low"], r["range_high"]) for r in rows} == {(32768, 60999)}


@pytest.mark.parametrize(
    ("port_range", "reserved", "ports"),
    [
        ("32768\t60999", None, [45000, 50000, 55005, 60999]),  # no reserved-ports row
        ("32768\t60999", "", [45000, 50000, 55005, 60999]),  # nothing reserved
        ("32768 60999", "45000", [50000, 55005, 60999]),  # spaces, one port reserved
        ("45001\t55000", "", [50000]),  # a narrower range
        ("50000\t50000", "50000", []),  # a one-port range, reserved
    ],
)
def test_the_listener_query_reads_the_settings_as_proc_writes_them(
    port_range: str, reserved: str | None, ports: list[int]
) -> None:
    rows = run("narcissus_listeners_in_ephemeral_range", database(port_range, reserved))
    assert sorted(r["port"] for r in rows) == ports


def test_the_settings_query() -> None:
    rows = run("narcissus_ephemeral_port_settings", database())
    assert {r["name"]: r["current_value"] for r in rows} == {
        "net.ipv4.ip_local_port_range": "32768\t60999",
        "net.ipv4.ip_local_reserved_ports": "50000,55000-55010",
    }


# ---------------------------------------------------------------- Falco

# Falco fields the rule may use (from Falco's field reference: syscall source).
FALCO_FIELDS = frozenset(
    {
        "evt.type", "evt.dir", "evt.res", "fd.l4proto", "fd.lport", "fd.rport", "fd.lip",
        "fd.rip", "fd.name", "proc.name", "proc.pid", "proc.cmdline", "user.name",
        "container.id", "container.image.repository",
    }
)  # fmt: skip
_TOKEN = re.compile(r"\s*(\(|\)|,|!=|=|<|>|val\([\w.]+\)|[\w.]+)")


def falco_items() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())
    return items


def expand(condition: str, macros: dict[str, str]) -> str:
    for _depth in range(10):
        expanded = re.sub(
            r"\b[a-z_]+\b",
            lambda m: f"({macros[m.group()]})" if m.group() in macros else m.group(),
            condition,
        )
        if expanded == condition:
            return expanded
        condition = expanded
    raise AssertionError("macros nest too deep")


def compile_condition(condition: str) -> str:
    """The subset of Falco's condition language the rule uses, as a Python expression over a
    dict `ev`: a field on the left of an operator, a literal (or val(field), or a list of
    literals) on its right."""
    python: list[str] = []
    expect = "field"
    position = 0
    condition = condition.strip()
    while position < len(condition):
        match = _TOKEN.match(condition, position)
        assert match, f"cannot read {condition[position:]!r}"
        token, position = match.group(1), match.end()
        if token in ("and", "or", "not", "(") and expect == "field":
            python.append(token)
        elif token == ")" or (token == "," and expect == "list"):
            python.append(token)
            if token == ")":
                expect = "field"
        elif expect == "field":
            assert token in FALCO_FIELDS, f"unknown field {token}"
            python.append(f"ev[{token!r}]")
            expect = "operator"
        elif expect == "operator":
            python.append({"=": "==", "!=": "!=", "in": "in"}[token])
            expect = "list" if token == "in" else "value"
        elif token.startswith("val("):
            field = token[4:-1]
            assert field in FALCO_FIELDS, f"unknown field {field}"
            python.append(f"ev[{field!r}]")
            expect = "field"
        else:
            python.append(token if token == "(" else repr(int(token) if token.isdigit() else token))
            if expect == "value":
                expect = "field"
    return " ".join(python)


def connect_event(**fields: object) -> dict[str, object]:
    event: dict[str, object] = {
        "evt.type": "connect", "evt.dir": "<", "evt.res": "SUCCESS", "fd.l4proto": "tcp",
        "fd.lip": "127.0.0.1", "fd.rip": "127.0.0.1", "fd.lport": 50000, "fd.rport": 50000,
    }  # fmt: skip
    event.update(fields)
    return event


def test_the_falco_rule_matches_self_connects_and_nothing_else() -> None:
    items = falco_items()
    macros = {item["macro"]: item["condition"] for item in items if "macro" in item}
    [rule] = [item for item in items if "rule" in item]
    assert "val(" in rule["condition"]
    expression = compile(compile_condition(expand(rule["condition"], macros)), "rule", "eval")

    def matches(event: dict[str, object]) -> bool:
        return bool(eval(expression, {"__builtins__": {}}, {"ev": event}))

    assert matches(connect_event())
    assert matches(connect_event(**{"evt.res": "EINPROGRESS"}))  # non-blocking
    assert matches(connect_event(**{"fd.lip": "::1", "fd.rip": "::1"}))
    assert not matches(connect_event(**{"fd.lport": 40001, "fd.rport": 6379}))
    assert not matches(connect_event(**{"fd.rip": "10.0.0.2", "fd.lip": "10.0.0.1"}))
    assert not matches(connect_event(**{"evt.res": "ECONNREFUSED"}))
    assert not matches(connect_event(**{"evt.dir": ">"}))  # the enter event
    assert not matches(connect_event(**{"fd.l4proto": "udp"}))
    assert not matches(connect_event(**{"fd.lport": 0, "fd.rport": 0}))
    assert not matches(connect_event(**{"evt.type": "accept"}))


def test_the_falco_rules_file_is_well_formed() -> None:
    items = falco_items()
    [rule] = [item for item in items if "rule" in item]
    assert set(rule) == {"rule", "desc", "condition", "output", "priority", "source", "tags"}
    assert rule["priority"] in {"EMERGENCY", "ALERT", "CRITICAL", "ERROR", "WARNING",
                                "NOTICE", "INFORMATIONAL", "DEBUG"}  # fmt: skip
    assert rule["source"] == "syscall" and "narcissus" in rule["tags"]
    for field in re.findall(r"%([\w.]+)", rule["output"]):
        assert field in FALCO_FIELDS, field
    assert rule["condition"].count("(") == rule["condition"].count(")")
    assert "Falco >= 0.38" in RULES.read_text()
