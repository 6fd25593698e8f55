"""deploy/kubernetes/ and deploy/Dockerfile: the manifests validate against Kubernetes' own
schemas (kubernetes-validate --strict, offline: run with no network), they fit together (the
PodMonitor selects the exporter's pods and port, the PrometheusRule is the shipped rules file),
the exporter asks for exactly the privileges it was measured to need, the node-setup script
really reserves the NodePort range (run inside a private network namespace), and the image's
COPY set is enough to build the package.

Not run here: docker (no image is built), a Kubernetes cluster (no pod is started), and the
Prometheus Operator's CRD schemas (kubernetes-validate has none for PodMonitor and
PrometheusRule; their structure is checked by hand below).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from narcissus._version import __version__
from narcissus.cli import build_parser
from tests.support import PrivateNetns

ROOT = Path(__file__).parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
RULES = ROOT / "deploy" / "prometheus" / "narcissus-rules.yml"
MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}
IMAGE = f"ghcr.io/narcissus-dev/narcissus:{__version__}"


def documents() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> document, over every manifest."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            found[(document["kind"], document["metadata"]["name"])] = document
    return found


def validator() -> str:
    path = Path(sys.executable).parent / "kubernetes-validate"
    assert path.exists(), "kubernetes-validate is missing: it is in the dev extra"
    return str(path)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_validate_strictly_and_offline(path: Path) -> None:
    argv = [validator(), "--strict", str(path)]
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], check=False).returncode == 0:
        argv = [unshare, "-n", *argv]  # no network: the schemas must be the bundled ones
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {document["kind"] for document in yaml.safe_load_all(path.read_text())}
    for kind in kinds - OPERATOR_KINDS:
        assert re.search(rf"passed for resource {kind.lower()}/", done.stdout), done.stdout
    for kind in kinds & OPERATOR_KINDS:  # a CRD: said plainly, checked by hand below
        assert f"Couldn't find schema for kind {kind}" in done.stdout + done.stderr


def test_strict_validation_can_fail(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    exporter = (KUBERNETES / "exporter.yaml").read_text()
    broken.write_text(exporter.replace("hostPID: true", "hostPID: true\n      hostPIDs: true"))
    done = subprocess.run(
        [validator(), "--strict", str(broken)], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0 and "hostPIDs" in done.stdout + done.stderr


def test_the_exporter_gets_what_it_needs_and_no_more() -> None:
    daemonset = documents()[("DaemonSet", "narcissus-exporter")]
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    assert pod["automountServiceAccountToken"] is False
    assert {"operator": "Exists"} in pod["tolerations"]
    [container] = pod["containers"]
    assert container["image"] == IMAGE
    security = container["securityContext"]
    assert "privileged" not in security and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {
        "drop": ["ALL"],
        "add": ["DAC_READ_SEARCH", "SYS_PTRACE"],
    }
    assert security["readOnlyRootFilesystem"] is True
    assert [v["hostPath"]["path"] for v in pod["volumes"]] == ["/sys/kernel/tracing"]
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/sys/kernel/tracing"]
    # The arguments are the command line's: they parse, with the node IP filled in.
    args = [arg.replace("$(NODE_IP)", "10.0.0.5") for arg in container["args"]]
    options = build_parser(args).parse_args(args)
    assert options.listen == ("10.0.0.5", 9469)
    [env] = container["env"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    [port] = container["ports"]
    assert (port["name"], port["containerPort"]) == ("metrics", 9469)


def test_the_pod_monitor_and_the_service_select_the_exporter() -> None:
    found = documents()
    pod = found[("DaemonSet", "narcissus-exporter")]["spec"]["template"]
    labels = pod["metadata"]["labels"]
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
    monitor = found[("PodMonitor", "narcissus-exporter")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel"}
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["namespaceSelector"]["matchNames"] == [monitor["metadata"]["namespace"]]
    allowed = {"port", "path", "interval", "scrapeTimeout", "relabelings", "scheme"}
    for endpoint in spec["podMetricsEndpoints"]:
        assert set(endpoint) <= allowed
        assert endpoint["port"] in ports
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
        for relabel in endpoint["relabelings"]:
            assert set(relabel) <= {"sourceLabels", "targetLabel", "action", "regex"}
            assert relabel["action"] in {"replace", "keep", "drop", "labelmap"}
    service = found[("Service", "narcissus-exporter")]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["clusterIP"] == "None"
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_the_prometheus_rule_is_the_shipped_rules_file() -> None:
    rule = documents()[("PrometheusRule", "narcissus")]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_every_object_is_in_the_narcissus_namespace_and_runs_the_same_image() -> None:
    found = documents()
    assert ("Namespace", "narcissus") in found
    images = set()
    for (kind, _name), document in found.items():
        if kind != "Namespace":
            assert document["metadata"]["namespace"] == "narcissus"
        if kind == "DaemonSet":
            pod = document["spec"]["template"]["spec"]
            for container in pod.get("initContainers", []) + pod["containers"]:
                images.add(container["image"])
    assert images == {IMAGE}


def test_the_node_setup_script_reserves_the_node_ports(netns: PrivateNetns, tmp_path: Path) -> None:
    """The ConfigMap's script, run as the init container would (its /host paths under a temp
    dir, SHIELD off), in a private namespace: the configured range and the manifest's are
    reserved and persisted."""
    found = documents()
    config = found[("ConfigMap", "narcissus-node-setup")]["data"]
    daemonset = found[("DaemonSet", "narcissus-node-setup")]
    pod = daemonset["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert init["securityContext"]["privileged"] is True
    assert pod["hostNetwork"] is True and "hostPID" not in pod
    mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    assert mounts["/sys/fs/bpf"]["mountPropagation"] == "Bidirectional"
    assert mounts["/host/etc/kubernetes/manifests"]["readOnly"] is True
    assert {"/sys/fs/cgroup", "/host/etc/sysctl.d", "/setup"} <= set(mounts)
    host = tmp_path / "host"
    (host / "etc" / "sysctl.d").mkdir(parents=True)
    (host / "etc" / "kubernetes" / "manifests").mkdir(parents=True)
    (host / "etc" / "kubernetes" / "manifests" / "kube-apiserver.yaml").write_text(
        "spec:\n  containers:\n    - command:\n        - kube-apiserver\n"
        "        - --service-node-port-range=30000-40000\n"
    )
    script = tmp_path / "setup.sh"
    script.write_text(config["setup.sh"].replace("/host/", f"{host}/"))
    assert config["SHIELD"] == "off"
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        "NODE_PORT_RANGE": config["NODE_PORT_RANGE"],
        "SHIELD": config["SHIELD"],
    }
    done = subprocess.run(
        netns.wrap(["env", *(f"{k}={v}" for k, v in env.items()), "sh", str(script)]),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    reserved = subprocess.run(
        netns.wrap(["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert reserved == "30000-40000"  # 30000-32767 from the ConfigMap, merged with the manifest
    persisted = (host / "etc" / "sysctl.d" / "90-narcissus-reserved-ports.conf").read_text()
    assert "net.ipv4.ip_local_reserved_ports = 30000-40000" in persisted


def _copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY in the Dockerfile."""
    copies = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            *sources, destination = line.split()[1:]
            copies.append((sources, destination))
    return copies


def test_the_dockerfile_copies_what_exists_and_enough_to_build(tmp_path: Path) -> None:
    """docker cannot build here: the COPY sources exist in the build context (the repository
    root), and a wheel builds from exactly those files, with the files the image needs."""
    copies = _copies()
    assert copies, "no COPY in the Dockerfile"
    context = tmp_path / "context"
    context.mkdir()
    for sources, destination in copies:
        for source in sources:
            origin = ROOT / source
            assert origin.exists(), f"COPY {source}: not in the build context"
            target = context / destination.lstrip("/")
            if origin.is_dir():
                into = target / origin.name if destination.endswith("/") else target
                shutil.copytree(origin, into, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, target / origin.name)
    build = context / "build"
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    done = subprocess.run(
        [*pip, "--wheel-dir", str(wheels), str(build)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [wheel] = wheels.glob("narcissus-*.whl")
    assert wheel.name.startswith(f"narcissus-{__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"narcissus/cli/exporter.py", "narcissus/fleet/exporter.py"} <= names
    text = DOCKERFILE.read_text()
    assert 'RUN pip install "/build[exporter,lint]"' in text
    assert 'ENTRYPOINT ["narcissus"]' in text
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert cmd
    args = yaml.safe_load(cmd.group(1))
    assert build_parser(args).parse_args(args).listen == ("0.0.0.0", 9469)
    assert f"-t {IMAGE} ." in text
