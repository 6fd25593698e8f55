"""The lint rules, on recorded sample files and on small texts (pure: no file system walk)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from narcissus.core.lint import format_of, lint_text, targets_for
from narcissus.core.lint.keys import is_port_name, ports_in_port_value

SAMPLES = Path(__file__).parent.parent / "data" / "lint"
TARGETS = targets_for()  # Linux, Windows, macOS
# The samples' convention (tests/data/lint/README.md): 50NNN is a port at risk, 40NNN is not a
# port, 51NNN ends a range.
AT_RISK = re.compile(r"(?<![\d-])50_?\d{3}(?!\d)")


def expected(text: str) -> list[tuple[int, int, int]]:
    """(line, column, port) of every 50NNN in the text, found independently of lint."""
    return [
        (number, match.start() + 1, int(match.group().replace("_", "")))
        for number, line in enumerate(text.splitlines(), 1)
        for match in AT_RISK.finditer(line)
    ]


def found(name: str, text: str, targets: tuple = TARGETS) -> list[tuple[int, int, int]]:  # type: ignore[type-arg]
    result = lint_text(name, text, targets)
    return [(f.line, f.column, f.port) for f in result.findings]


SAMPLE_NAMES = sorted(p.name for p in SAMPLES.iterdir() if p.name != "README.md")


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_each_sample_yields_exactly_its_ports_at_risk(name: str) -> None:
    text = (SAMPLES / name).read_text(encoding="utf-8")
    result = lint_text(name, text, TARGETS)
    assert result.note is None
    assert [(f.line, f.column, f.port) for f in result.findings] == expected(text)


def test_the_samples_cover_every_format_and_every_rule() -> None:
    formats = {fmt.name if (fmt := format_of(name)) else "text" for name in SAMPLE_NAMES}
    assert formats == {"python", "yaml", "json", "toml", "systemd", "conf", "env", "text"}
    kinds = {
        finding.kind
        for name in SAMPLE_NAMES
        for finding in lint_text(name, (SAMPLES / name).read_text(), TARGETS).findings
    }
    assert kinds >= {"url", "address", "option", "key", "compose", "kubernetes", "python"}
    assert kinds >= {"conf", "redis", "sentinel", "nginx", "systemd"}


def test_a_finding_names_the_ranges_the_place_and_the_fix() -> None:
    [finding] = lint_text("app.env", "REDIS_PORT=50000\n", TARGETS).findings
    assert [t.os for t in finding.ranges] == ["linux", "windows", "darwin"]
    assert finding.message.startswith("port 50000 (key REDIS_PORT) is inside the default")
    assert "Linux (32768-60999), Windows and macOS (49152-65535)" in finding.message
    assert finding.fix.startswith("use a port below 32768")
    assert finding.fix.endswith("narcissus reserve 50000")
    assert (finding.column, finding.end_column) == (12, 17)


def test_the_target_oses_decide_what_is_inside() -> None:
    text = "a_port = 20000\nb_port = 40000\nc_port = 62000\n"
    ports = lambda *names: [p for _l, _c, p in found("x.ini", text, targets_for(names))]  # noqa: E731
    assert ports("linux") == [40000]
    assert ports("windows") == [62000]
    assert ports("linux", "windows") == [40000, 62000]
    assert ports("freebsd") == [20000, 40000, 62000]
    [finding] = lint_text("x.ini", text, targets_for(["freebsd"])).findings[:1]
    assert "below 10000" in finding.fix


def test_a_port_range_is_one_finding_spanning_both_ends() -> None:
    [finding] = lint_text("c.yml", 'ports: ["30000-40000:80-10080"]\n', TARGETS).findings
    assert (finding.port, finding.last) == (30000, 40000)
    assert finding.message.startswith("ports 30000-40000 (key ports) are inside")
    assert finding.end_column - finding.column == len("30000-40000")
    assert finding.fix.startswith("reserve exactly this range on every host or node")
    assert "narcissus reserve 30000-40000 (or narcissus reserve --from c.yml)" in finding.fix


def test_columns_count_characters_not_bytes() -> None:
    text = 'x = {"naïve €": 1, "port": 50000}\n'
    assert found("a.py", text) == [(1, text.index("50000") + 1, 50000)]
    assert found("a.json", text[4:]) == [(1, text[4:].index("50000") + 1, 50000)]


def test_an_ignore_comment_silences_its_line_only() -> None:
    text = "port: 50000  # narcissus: ignore\nother_port: 50001\n"
    assert found("a.yaml", text) == [(2, 13, 50001)]


def test_compose_container_ports_alone_are_not_findings_but_plain_yaml_ports_are() -> None:
    compose = "services:\n  db:\n    ports:\n      - 50000\n      - '50001:5432'\n"
    assert found("docker-compose.yml", compose) == [(5, 10, 50001)]
    plain = "ports:\n  - 50000\n"
    assert found("app.yaml", plain) == [(2, 5, 50000)]


def test_yaml_with_aliases_recursion_and_many_documents() -> None:
    text = "base: &base {port: 50000}\ncopy: *base\nloop: &loop [*loop, 1]\n---\nport: 50001\n"
    assert found("a.yaml", text) == [(1, text.index("50000") + 1, 50000), (5, 7, 50001)]
    laughs = "a: &a [port, port]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(20)
    )
    assert found("laughs.yaml", laughs) == []  # walked once per node: no blow-up


def test_unparsable_files_are_read_line_by_line_and_say_so() -> None:
    helm = (
        "spec:\n  ports:\n{{- range .Values.ports }}\n    - port: {{ . }}\n{{- end }}\n"
        "  hostPort: 50000\n"
    )
    result = lint_text("service.yaml", helm, TARGETS)
    assert [(f.line, f.column, f.port) for f in result.findings] == [(6, 13, 50000)]
    assert result.note is not None and "read line by line" in result.note
    jsonc = '{\n  // the cache\n  "port": 50001,\n}\n'
    result = lint_text("settings.json", jsonc, TARGETS)
    assert [(f.line, f.column) for f in result.findings] == [(3, 11)]
    broken_python = "def f(:\n    url = 'redis://h:50002'\n"
    result = lint_text("bad.py", broken_python, TARGETS)
    assert [f.port for f in result.findings] == [50002]
    assert result.note is not None and "not valid python" in result.note


def test_kubernetes_json_and_deep_nesting() -> None:
    first = '{"spec": {"containers": [{"ports": [{"containerPort": 50000}],\n'
    second = '"env": [{"name": "API_PORT", "value": "50001"}]}]}}'
    assert found("pod.json", first + second) == [
        (1, first.index("50000") + 1, 50000),
        (2, second.index("50001") + 1, 50001),
    ]
    deep = "[" * 5000 + "]" * 5000
    assert lint_text("deep.json", deep, TARGETS).note is not None  # refused, not crashed


@pytest.mark.parametrize(
    ("name", "is_port"),
    [
        ("port", True),
        ("redisPort", True),
        ("REDIS_PORT", True),
        ("redis-port", True),
        ("server.port", True),
        ("PGPORT", True),
        ("containerPort", True),
        ("HTTPPort", True),
        ("listen", True),
        ("port_timeout", False),
        ("portTimeoutMs", False),
        ("num_ports", False),
        ("max_port", False),
        ("report", False),
        ("transport", False),
        ("support_email", False),
        ("listen_backlog", False),
    ],
)
def test_which_names_mean_a_port(name: str, is_port: bool) -> None:
    assert is_port_name(name) is is_port


@pytest.mark.parametrize(
    ("value", "ports"),
    [
        ("50000", [50000]),
        ("50_000", [50000]),
        ("50000-50010", [(50000, 50010)]),
        ("127.0.0.1:50000", [50000]),
        ("[::1]:50000", [50000]),
        ("50000:6379", [50000]),
        ("127.0.0.1:50000:6379/tcp", [50000]),
        ("50000, 50001", [50000, 50001]),
        ("0", []),
        ("70000", []),
        ("50000ms", []),
        ("5.5", []),
    ],
)
def test_which_values_hold_a_port(value: str, ports: list[object]) -> None:
    got = [port if last is None else (port, last) for _o, port, last in ports_in_port_value(value)]
    assert got == ports


def test_kube_apiserver_node_port_range_in_every_form() -> None:
    """The flag in a manifest's command (one item or two), kubeadm's v1beta3 map and v1beta4
    list forms: one finding spanning the range, Linux's range only (Windows' starts higher)."""
    linux_only = targets_for(["linux", "windows"])
    texts = {
        "one item": "command:\n  - kube-apiserver\n  - --service-node-port-range=30000-40000\n",
        "two items": "args:\n  - --service-node-port-range\n  - 30000-40000\n",
        "v1beta3": "kind: ClusterConfiguration\napiServer:\n  extraArgs:\n"
        "    service-node-port-range: 30000-40000\n",
        "v1beta4": "kind: ClusterConfiguration\napiServer:\n  extraArgs:\n"
        "    - name: service-node-port-range\n      value: 30000-40000\n",
        "shell": "kube-apiserver --service-node-port-range 30000-40000 --secure-port 6443\n",
    }
    for form, text in texts.items():
        name = "kube-apiserver.sh" if form == "shell" else "kube-apiserver.yaml"
        findings = lint_text(name, text, linux_only).findings
        assert [(f.port, f.last) for f in findings] == [(30000, 40000)], form
        assert [t.os for t in findings[0].ranges] == ["linux"], form
        assert "narcissus reserve 30000-40000" in findings[0].fix
    default = "command:\n  - --service-node-port-range=30000-32767\n"
    assert lint_text("kube-apiserver.yaml", default, TARGETS).findings == []


def test_kubernetes_component_settings_that_are_not_ports() -> None:
    proxy = (
        "kind: KubeProxyConfiguration\nnodePortAddresses: ['40000::/16', 10.0.0.0/8]\n"
        "metricsBindAddress: 127.0.0.1:50000\n"
    )
    findings = lint_text("kube-proxy.yaml", proxy, TARGETS).findings
    assert [(f.port, f.kind, f.what) for f in findings] == [
        (50000, "kubernetes", "kube-proxy metricsBindAddress")
    ]
    assert not is_port_name("nodePortAddresses") and not is_port_name("--nodeport-addresses")
    assert is_port_name("service-node-port-range") and is_port_name("readOnlyPort")
    pools = '{"default-address-pools": [{"base": "10.40.0.0/16", "size": 40000}]}'
    assert lint_text("daemon.json", pools, TARGETS).findings == []


def test_a_published_compose_range_is_one_finding_with_the_reserve_fix() -> None:
    compose = 'services:\n  sip:\n    ports:\n      - "40000-40100:40000-40100"\n'
    [finding] = lint_text("compose.yaml", compose, TARGETS).findings
    assert (finding.port, finding.last, finding.kind) == (40000, 40100, "compose")
    assert (finding.line, finding.column) == (4, 10)
    assert "narcissus reserve 40000-40100 (or narcissus reserve --from compose.yaml)" in (
        finding.fix
    )
