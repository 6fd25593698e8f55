"""Documents that parse into mappings, lists and scalars (YAML, JSON), walked for ports.

Rules: pure. The YAML and JSON readers build these nodes with each scalar's source span, so a
port is placed on its exact digits whatever the quoting. What the walk knows beyond the key
tables:
- docker-compose `ports:` publish `[IP:]HOST:CONTAINER`; only the host side is at risk, and a
  container port alone (`- 6379`) gets a random host port from docker; the long form names the
  host side `published`;
- Kubernetes `containerPort`, `hostPort`, `nodePort`, `port` and `targetPort` are port names, and
  an env entry `{name: REDIS_PORT, value: "50000"}` holds a port, as does a kubeadm v1beta4
  extraArgs item `{name: service-node-port-range, value: 30000-40000}` (the v1beta3 map form
  `service-node-port-range: 30000-40000` is an ordinary key); in `command:`/`args:` lists an
  option and its value may be two items (`--service-node-port-range`, `30000-40000`);
- a string `REDIS_PORT=50000` (a compose `environment:` list item, a command argument) holds a
  port.
A node reached twice (YAML aliases, even recursive ones) is walked once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from narcissus.core.lint.keys import (
    is_port_name,
    ports_for,
    ports_in_port_value,
    published_ports,
)
from narcissus.core.lint.model import Hit, place

_ENV_ASSIGNMENT = re.compile(r"^(?P<key>[A-Za-z_][\w.-]*)=(?P<value>.+)$")
KUBERNETES_PORTS = frozenset({"containerPort", "hostPort", "nodePort", "targetPort"})
# Lists of command-line arguments, where an option and its value may be two items.
ARGUMENT_LISTS = frozenset({"command", "args", "entrypoint", "cmd"})


@dataclass(eq=False, slots=True)
class Scalar:
    """A scalar's decoded `value` and where its source text starts and ends in the file."""

    value: str
    start: int
    end: int


@dataclass(eq=False, slots=True)
class Mapping:
    pairs: list[tuple[Node, Node]] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class Sequence:
    items: list[Node] = field(default_factory=list)


Node = Scalar | Mapping | Sequence


def _scalar_hits(
    text: str, node: Scalar, found: Iterator[tuple[int, int, int | None]], kind: str, what: str
) -> Iterator[Hit]:
    yield from place(text, node.start, node.end, node.value, found, kind, what)


# Kubernetes component configuration files (`kind:`), named in what a finding says.
COMPONENT_KINDS = {
    "ClusterConfiguration": "kubeadm",
    "InitConfiguration": "kubeadm",
    "JoinConfiguration": "kubeadm",
    "KubeletConfiguration": "kubelet",
    "KubeProxyConfiguration": "kube-proxy",
}


def component_of(root: Node) -> str | None:
    """`kubelet`, `kube-proxy` or `kubeadm` for those configuration files, else None."""
    if not isinstance(root, Mapping):
        return None
    for key, value in root.pairs:
        if isinstance(key, Scalar) and key.value == "kind" and isinstance(value, Scalar):
            return COMPONENT_KINDS.get(value.value)
    return None


def walk(text: str, root: Node, *, compose: bool) -> Iterator[Hit]:
    """Port hits in a parsed document; `compose` reads `ports:` as docker-compose does; in a
    Kubernetes component's configuration a hit is of kind "kubernetes" and names it."""
    component = component_of(root)
    for hit in _walk(text, root, compose=compose):
        if component is None:
            yield hit
        else:
            setting = hit.what.removeprefix("key ").removeprefix("argument ")
            yield replace(hit, kind="kubernetes", what=f"{component} {setting}")


def _walk(text: str, root: Node, *, compose: bool) -> Iterator[Hit]:
    seen: set[int] = set()

    def visit(node: Node, key: str | None, in_ports: bool) -> Iterator[Hit]:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, Scalar):
            yield from scalar(node, key, in_ports)
        elif isinstance(node, Sequence):
            if key in ARGUMENT_LISTS:
                yield from option_pairs(node)
            for item in node.items:
                yield from visit(item, key, in_ports)
        else:
            yield from mapping(node, in_ports)

    def scalar(node: Scalar, key: str | None, in_ports: bool) -> Iterator[Hit]:
        if key is None:
            return
        if compose and in_ports:
            what = "docker-compose published port"
            yield from _scalar_hits(text, node, published_ports(node.value), "compose", what)
            return
        kind = "kubernetes" if key in KUBERNETES_PORTS else "key"
        yield from _scalar_hits(text, node, ports_for(key, node.value), kind, f"key {key}")
        env = _ENV_ASSIGNMENT.match(node.value)
        if env and is_port_name(env.group("key")):
            found = ((env.start("value") + at, port, last) for at, port, last in
                     ports_for(env.group("key"), env.group("value")))  # fmt: skip
            yield from _scalar_hits(text, node, found, "key", f"variable {env.group('key')}")

    def option_pairs(node: Sequence) -> Iterator[Hit]:
        """`command: [kube-apiserver, --service-node-port-range, 30000-40000]`: an option
        and its value as two items (`--opt=value` in one item is the text rules' part)."""
        for option, value in zip(node.items, node.items[1:], strict=False):
            if not (isinstance(option, Scalar) and isinstance(value, Scalar)):
                continue
            name = option.value
            if name.startswith("--") and "=" not in name and is_port_name(name[2:]):
                seen.add(id(value))
                found = ports_in_port_value(value.value)
                yield from _scalar_hits(text, value, found, "option", f"option {name}")

    def mapping(node: Mapping, in_ports: bool) -> Iterator[Hit]:
        names = {k.value: v for k, v in node.pairs if isinstance(k, Scalar)}
        env_name, env_value = names.get("name"), names.get("value")
        if (
            isinstance(env_name, Scalar)
            and isinstance(env_value, Scalar)
            and is_port_name(env_name.value)
        ):
            seen.add(id(env_value))
            found = ports_for(env_name.value, env_value.value)
            name = env_name.value
            # an environment variable, or a kubeadm v1beta4 extraArgs item {name:, value:}
            what = f"argument {name}" if "-" in name else f"variable {name}"
            yield from _scalar_hits(text, env_value, found, "key", what)
        for key_node, value in node.pairs:
            if not isinstance(key_node, Scalar):
                continue
            key = key_node.value
            if compose and in_ports:  # the long form: {target: 6379, published: "50000"}
                if key == "published" and isinstance(value, Scalar):
                    seen.add(id(value))
                    what = "docker-compose published port"
                    found = ports_in_port_value(value.value)
                    yield from _scalar_hits(text, value, found, "compose", what)
                continue
            yield from visit(value, key, in_ports=compose and key == "ports")

    yield from visit(root, None, False)


def is_compose(root: Node) -> bool:
    """A docker-compose file: a top-level `services` mapping."""
    return isinstance(root, Mapping) and any(
        isinstance(k, Scalar) and k.value == "services" and isinstance(v, Mapping)
        for k, v in root.pairs
    )
