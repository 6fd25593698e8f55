"""`narcissus shield on|off|status` and `narcissus run --shield`, as a user runs them.

Always with --cgroup pointing at a cgroup the test made (never the host's root cgroup), and
checked from outside with bpftool and bpffs.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.prevent.shield import clients
from tests.prevent.shield.conftest import P, TestCgroup, needs_root_bpf, refused_in, run_in
from tests.support import PrivateNetns, assert_one_line_error, run_cli, run_unprivileged

pytestmark = needs_root_bpf


def bpftool_show(cgroup: TestCgroup) -> list[dict[str, object]]:
    if shutil.which("bpftool") is None:
        pytest.skip("needs bpftool (Debian package bpftool)")
    done = subprocess.run(
        ["bpftool", "-j", "cgroup", "show", cgroup.path],
        capture_output=True,
        text=True,
        check=True,
    )
    shown: list[dict[str, object]] = json.loads(done.stdout.strip() or "[]")
    return shown


def pin_dir(cgroup: TestCgroup) -> Path:
    from narcissus.system.linux.bpf import bpffs_root

    return Path(bpffs_root(), "narcissus", "shield", str(cgroup.id))


def our_links(cgroup_id: int) -> list[int]:
    """Ids of links of narcissus's programs on that cgroup, as the kernel lists them."""
    from narcissus.prevent.shield import shield_status

    return [item.cgroup_id for item in shield_status().cgroups if item.cgroup_id == cgroup_id]


def shield(*args: str) -> dict[str, object]:
    done = run_cli("shield", *args, "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def entry(status: dict[str, object], cgroup: TestCgroup) -> dict[str, object]:
    found = [c for c in status["cgroups"] if c["id"] == cgroup.id]  # type: ignore[attr-defined]
    assert len(found) == 1, status
    result: dict[str, object] = found[0]
    return result


def test_on_status_off(cgroup: TestCgroup, one_port: PrivateNetns) -> None:
    on = shield("on", "--cgroup", cgroup.path)
    assert on["active"] and on["changed"] and on["mechanism"] == "bpf-set-retval"
    assert set(on) >= {"active", "mechanism", "cgroups", "refused", "kernel"}
    assert on["kernel"] == os.uname().release
    mine = entry(on, cgroup)
    assert mine["path"] == cgroup.path and mine["pinned"] and mine["refused"] == 0
    assert mine["hooks"] == ["connect4", "connect6"]
    shown = bpftool_show(cgroup)
    assert sorted((p["attach_type"], p["name"], p["attach_flags"]) for p in shown) == [
        ("cgroup_inet4_connect", "narcissus_c4", "multi"),
        ("cgroup_inet6_connect", "narcissus_c6", "multi"),
    ]
    assert sorted(os.listdir(pin_dir(cgroup))) == ["cgroup", "connect4", "connect6"]

    # it stays after the command exited, and it counts
    for host in ("127.0.0.1", "::1"):
        done = run_in(clients.python(host, P), cgroup, one_port)
        assert json.loads(done.stdout) == {"connected": False, "errno": errno.ECONNREFUSED}
    assert entry(shield("status"), cgroup)["refused"] == 2

    again = shield("on", "--cgroup", cgroup.path)  # idempotent
    assert not again["changed"] and entry(again, cgroup)["refused"] == 2
    assert len(bpftool_show(cgroup)) == 2

    off = shield("off", "--cgroup", cgroup.path)
    assert off["changed"] and all(c["id"] != cgroup.id for c in off["cgroups"])  # type: ignore[attr-defined]
    assert bpftool_show(cgroup) == []
    assert not pin_dir(cgroup).exists() and our_links(cgroup.id) == []
    assert not shield("off", "--cgroup", cgroup.path)["changed"]
    text = run_cli("shield", "status", "--cgroup", cgroup.path)
    assert text.returncode == 0 and "No cgroup is shielded" in text.stdout


def test_sits_beside_other_programs_and_off_leaves_them(cgroup: TestCgroup) -> None:
    from narcissus.core import bpf as B
    from narcissus.system.linux import bpf as sysbpf

    other = sysbpf.load_program(
        B.PROG_TYPE_CGROUP_SOCK_ADDR,
        B.assemble(B.ret(1)),
        name="someone_else",
        expected_attach_type=B.CGROUP_INET4_CONNECT,
    )
    directory = os.open(cgroup.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sysbpf.prog_attach(other, directory, B.CGROUP_INET4_CONNECT, B.F_ALLOW_MULTI)
        try:
            shield("on", "--cgroup", cgroup.path)
            names = sorted(str(p["name"]) for p in bpftool_show(cgroup))
            assert names == ["narcissus_c4", "narcissus_c6", "someone_else"]
            shield("off", "--cgroup", cgroup.path)
            assert [p["name"] for p in bpftool_show(cgroup)] == ["someone_else"]
        finally:
            sysbpf.prog_detach(other, directory, B.CGROUP_INET4_CONNECT)
    finally:
        os.close(directory)
        os.close(other)
    assert bpftool_show(cgroup) == []


def test_eperm_mechanism(cgroup: TestCgroup, one_port: PrivateNetns) -> None:
    """What kernels without bpf_set_retval get; asked for explicitly here."""
    on = shield("on", "--cgroup", cgroup.path, "--mechanism", "bpf-eperm")
    assert entry(on, cgroup)["mechanism"] == "bpf-eperm"
    assert [p["name"] for p in bpftool_show(cgroup)] == ["narcissus_c4_ep", "narcissus_c6_ep"]
    done = run_in(clients.python("127.0.0.1", P), cgroup, one_port)
    assert json.loads(done.stdout) == {"connected": False, "errno": errno.EPERM}
    assert refused_in(cgroup) == 1
    # asking for the other mechanism replaces it, no duplicate programs
    on = shield("on", "--cgroup", cgroup.path, "--mechanism", "bpf-set-retval")
    assert on["changed"] and entry(on, cgroup)["mechanism"] == "bpf-set-retval"
    assert [p["name"] for p in bpftool_show(cgroup)] == ["narcissus_c4", "narcissus_c6"]


def test_bad_input_gets_one_line_and_exit_2(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("shield", "on", "--cgroup", str(tmp_path)), "not a cgroup v2")
    assert_one_line_error(run_cli("shield", "off", "--cgroup", "/nonexistent"), "/nonexistent")
    assert_one_line_error(run_cli("shield", "status", "--mechanism", "bpf-eperm"), "--mechanism")
    assert_one_line_error(run_cli("shield", "sideways"), "invalid choice")


def test_without_root_it_says_so_and_exits_3(cgroup: TestCgroup) -> None:
    for args in (
        ("shield", "status", "--json"),
        ("shield", "on", "--cgroup", cgroup.path, "--json"),
        ("run", "--shield", "--", "true"),
    ):
        done = run_unprivileged(*args)
        assert done.returncode == 3, (done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "needs root" in lines[0] and "Traceback" not in done.stderr
    assert bpftool_show(cgroup) == []


# ---------------------------------------------------------------- run --shield


def run_shield_argv(*cmd: str) -> list[str]:
    return [sys.executable, "-m", "narcissus", "run", "--shield", "--", *cmd]


def own_cgroup_dir() -> str:
    from narcissus.system.linux import cgroups

    return cgroups.own_directory()


def run_cgroups(pid: int) -> list[str]:
    """The cgroups `narcissus run --shield` with this pid made (a child of its own cgroup,
    which is ours: it inherits it)."""
    parent = own_cgroup_dir()
    return [
        os.path.join(parent, n)
        for n in os.listdir(parent)
        if n.startswith(f"narcissus-shield-{pid}-")
    ]


def wait_for_cmd(pid: int) -> tuple[str, int]:
    """The cgroup a running `run --shield` made and the pid of CMD inside it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in run_cgroups(pid):
            procs = Path(path, "cgroup.procs").read_text().split()
            if procs:
                return path, int(procs[0])
        time.sleep(0.05)
    raise AssertionError("CMD never appeared in a shielded cgroup")


def test_run_shield_refuses_and_keeps_the_exit_status(one_port: PrivateNetns) -> None:
    script = (
        "import json, socket, sys\n"
        f"s = socket.socket()\nprint(s.connect_ex(('127.0.0.1', {P})))\n"
        "print(open('/proc/self/cgroup').read().splitlines()[-1])\nsys.exit(7)\n"
    )
    done = subprocess.run(
        run_shield_argv(*one_port.wrap([sys.executable, "-c", script])),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 7, done.stderr
    refused, cgroup_line = done.stdout.split()
    assert int(refused) == errno.ECONNREFUSED
    assert "narcissus-shield-" in cgroup_line
    assert "refused 1 connect" in done.stderr
    cgroup = os.path.join(own_cgroup_dir(), cgroup_line.split("/")[-1])
    assert not os.path.exists(cgroup)


@pytest.mark.parametrize("how", ["SIGKILL to CMD", "SIGTERM to CMD", "SIGTERM to narcissus"])
def test_run_shield_cleans_up_whatever_ends_cmd(how: str) -> None:
    runner = subprocess.Popen(run_shield_argv("sleep", "60"), stderr=subprocess.PIPE, text=True)
    try:
        path, cmd = wait_for_cmd(runner.pid)
        cgroup_id = os.stat(path).st_ino
        assert len(our_links(cgroup_id)) == 1
        signum = signal.SIGKILL if "KILL" in how else signal.SIGTERM
        os.kill(cmd if how.endswith("CMD") else runner.pid, signum)
        status = runner.wait(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert status == -signum, runner.stderr.read() if runner.stderr else ""  # ends as CMD ended
    assert not os.path.exists(path) and run_cgroups(runner.pid) == []
    assert our_links(cgroup_id) == []


def test_run_shield_moves_leftover_processes_out_before_removing_the_cgroup() -> None:
    done = subprocess.run(
        run_shield_argv("sh", "-c", "sleep 30 & echo $!"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    leftover = int(done.stdout.split()[0])
    try:
        cgroup_line = Path(f"/proc/{leftover}/cgroup").read_text().splitlines()[-1]
        assert "narcissus-shield-" not in cgroup_line  # moved back to the parent, still running
    finally:
        os.kill(leftover, signal.SIGKILL)
