"""Findings as SARIF 2.1.0 (code scanning) and as GitHub Actions workflow commands.

Rules: pure; values in, a JSON-ready dict or text lines out (the CLI serializes). Columns in
SARIF are declared `unicodeCodePoints`, which is what the findings count (SARIF's default is
UTF-16 code units). Paths become relative URIs against `%SRCROOT%`, the directory lint ran in.

File names need not be UTF-8: Python keeps their undecodable bytes as lone surrogates, which
neither a terminal nor a strict JSON parser accepts. Every format shows them as U+FFFD
(`readable`), except SARIF URIs, which percent-encode the name's real bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePath
from typing import Any
from urllib.parse import quote

from narcissus.core.lint.model import EPHEMERAL_RULE, SERVICE_RULE, Finding

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
RULE_ID = EPHEMERAL_RULE
INFORMATION_URI = "https://narcissus-dev.github.io/narcissus/lint/"
SRCROOT = "%SRCROOT%"

_RULE: dict[str, Any] = {
    "id": RULE_ID,
    "name": "PortInsideEphemeralRange",
    "shortDescription": {"text": "Port inside an OS's default ephemeral port range"},
    "fullDescription": {
        "text": "A server port inside the ephemeral range can be handed to a client that "
        "retries it while nothing listens there: TCP simultaneous open then connects the "
        "client to itself, it reads back its own bytes, and the real server cannot bind."
    },
    "help": {
        "text": "Move the port below the ephemeral range of every OS it runs on (below 32768 "
        "for Linux, Windows and macOS; `narcissus port --portable` prints a free one), or "
        "reserve it on every host: `narcissus reserve PORT` (Linux "
        "net.ipv4.ip_local_reserved_ports, Windows excludedportrange)."
    },
    "defaultConfiguration": {"level": "warning"},
    "properties": {"tags": ["reliability", "networking"]},
}
_SERVICE_RULE: dict[str, Any] = {
    "id": SERVICE_RULE,
    "name": "PortOfWellKnownService",
    "shortDescription": {"text": "Port registered to a well-known service"},
    "fullDescription": {
        "text": "IANA's registry or the host's services database gives this port to a service "
        "the file does not name: the program of that service may already use it, or start "
        "later and find it taken."
    },
    "help": {
        "text": "Pick a port no service is registered for, outside every ephemeral range "
        "(`narcissus port --portable` prints one)."
    },
    "defaultConfiguration": {"level": "note"},
    "properties": {"tags": ["reliability", "networking"]},
}
_RULES = [_RULE, _SERVICE_RULE]
_RULE_INDEX = {rule["id"]: index for index, rule in enumerate(_RULES)}


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def readable(text: str) -> str:
    """`text` with each lone surrogate (an undecodable byte of a file name) as U+FFFD: it
    prints on any terminal and is valid in UTF-8 JSON."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def readable_json(value: Any) -> Any:
    """A JSON-ready value with every string in it `readable`."""
    if isinstance(value, str):
        return readable(value)
    if isinstance(value, dict):
        return {readable_json(key): readable_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [readable_json(item) for item in value]
    return value


def _path_bytes(posix: str) -> bytes:
    """The bytes of a file name Python decoded with surrogateescape (its undecodable bytes
    kept as lone surrogates), so its URI names the file exactly."""
    try:
        return posix.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte (Windows names)
        return readable(posix).encode("utf-8")


def artifact_uri(path: str) -> str:
    """A relative or file: URI for a path as lint printed it."""
    posix = _path_bytes(PurePath(path).as_posix())
    if PurePath(path).is_absolute():
        return "file://" + quote(posix, safe="/:")
    return quote(posix, safe="/")


def _region(finding: Finding) -> dict[str, int]:
    return {
        "startLine": finding.line,
        "startColumn": finding.column,
        "endColumn": finding.end_column,
    }


def sarif_log(
    findings: Iterable[Finding],
    *,
    tool_version: str,
    root_uri: str,
    notes: Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The SARIF log of one run. `root_uri` is the file: URI of the directory paths are relative
    to (ending in "/"); `notes` are (path, text) pairs about files not fully read."""
    results = [
        {
            "ruleId": finding.rule,
            "ruleIndex": _RULE_INDEX[finding.rule],
            "level": finding.level,
            "message": {"text": f"{finding.message}. Fix: {finding.fix}."},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {
                            "uri": artifact_uri(finding.path),
                            "uriBaseId": SRCROOT,
                        },
                        "region": _region(finding),
                    }
                }
            ],
            "properties": {
                "port": finding.port,
                "lastPort": finding.last,
                "kind": finding.kind,
                "ranges": [
                    {"os": t.os, "low": t.range.low, "high": t.range.high} for t in finding.ranges
                ],
                "fix": finding.fix,
                **({"service": finding.service.name} if finding.service else {}),
            },
        }
        for finding in findings
    ]
    notifications = [
        {
            "level": "note",
            "message": {"text": text},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": artifact_uri(path), "uriBaseId": SRCROOT}
                    }
                }
            ],
        }
        for path, text in notes
    ]
    log = {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "narcissus",
                        "version": tool_version,
                        "informationUri": INFORMATION_URI,
                        "rules": _RULES,
                    }
                },
                "originalUriBaseIds": {SRCROOT: {"uri": root_uri}},
                "columnKind": "unicodeCodePoints",
                "invocations": [
                    {"executionSuccessful": True, "toolExecutionNotifications": notifications}
                ],
                "results": results,
            }
        ],
    }
    return dict(readable_json(log))


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_commands(findings: Iterable[Finding]) -> list[str]:
    """One `::warning` (inside a range) or `::notice` (a service's port) workflow command per
    finding: annotations on the pull request."""
    lines = []
    for finding in findings:
        if finding.level == "warning":
            command, title = "warning", f"narcissus: port {finding.port} is ephemeral"
        else:
            command, title = "notice", f"narcissus: port {finding.port} is a service's"
        properties = ",".join(
            [
                f"file={_escape_property(finding.path)}",
                f"line={finding.line}",
                f"col={finding.column}",
                f"endColumn={finding.end_column}",
                f"title={_escape_property(title)}",
            ]
        )
        text = _escape_data(f"{finding.message}. Fix: {finding.fix}.")
        lines.append(readable(f"::{command} {properties}::{text}"))
    return lines
