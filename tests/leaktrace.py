"""Trace one test session's self-connects, to tell its leftovers from other programs' ones.

Run by tests/leakcheck.py at session start as `leaktrace.py PID`. A private tracing instance
follows PID and every thread and process it starts (ftrace `set_event_pid` + `event-fork`) and
records their connects that reach their own port: self-connects (SYN_SENT -> SYN_RECV) and
connections from port P to port P of another address (SYN_SENT -> ESTABLISHED); also their
pids, the cgroups they make and whether they pin BPF objects. A TIME_WAIT
remnant found in the host's namespace at the end is the session's only if the session made a
connection with that address and port *in that namespace*, so each event is placed:

- the thread still runs and entered no other namespace since the event: where it is now;
- it entered another namespace since (setns/unshare are traced too) and is now back in the host's
  namespace: it was in a private one (a test's `netns.entered()` block ends that way);
- the thread is gone but its process runs, and neither moved since: where the process is now
  (threads are told from processes by the clone flags task_newtask records);
- otherwise (gone, or moved on to another namespace): it may have been the host's.

A thread id that now names a task started after the event (ids are reused: pid_max may be
32768) counts as gone; the trace clock is CLOCK_BOOTTIME, the clock of /proc's start times.

The host's namespace is the one PID runs in. A line "ready" on stdout says tracing is on; when
stdin closes, one JSON line reports what was seen, and the instance is removed. Tracing from
another process keeps the reader off the session's own CPU time and GIL, and a session killed
outright still closes our stdin, so the instance never outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import sys
import time
from collections import defaultdict
from typing import Any

from narcissus.core.sock_trace import EVENT, LostEvents, StateChange, parse_line
from narcissus.errors import UnsupportedError
from narcissus.system.linux.ftrace import tracing_root
from narcissus.system.linux.procfs import process_exists

PREFIX = "narcissus-leakcheck-"
CONNECTS = "protocol == 6 && oldstate == 2 && (newstate == 3 || newstate == 1)"
CLONE_NEWNET = 0x40000000
# event -> filter; the syscall events place events in namespaces, the fork event names our pids
EVENTS = {
    EVENT: CONNECTS,
    "syscalls/sys_enter_setns": f"flags == 0 || flags & {CLONE_NEWNET}",
    "syscalls/sys_enter_unshare": f"unshare_flags & {CLONE_NEWNET}",
    "sched/sched_process_fork": "",
    "task/task_newtask": "",
    # what else the session may leave: the cgroups it makes, the BPF objects it pins
    "cgroup/cgroup_mkdir": "",
    "syscalls/sys_enter_bpf": "cmd == 6",  # BPF_OBJ_PIN
}
_SAME_PORTS = re.compile(r"sport=(\d+) dport=(\d+) ")
_OTHER = re.compile(
    r"^\s*.*?-(?P<tid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[\d+\]\s+(?:\S+\s+)?(?P<seconds>\d+\.\d+):\s+"
    r"(?P<event>sys_setns|sys_unshare|sched_process_fork|task_newtask|cgroup_mkdir|sys_bpf)\b(?P<rest>.*)$"
)
_CHILD = re.compile(r"child_pid=(\d+)")
_NEWTASK = re.compile(r"pid=(\d+) .*clone_flags=([0-9a-f]+)")
CLONE_THREAD = 0x10000
TICKS = os.sysconf("SC_CLK_TCK")
_CGROUP = re.compile(r"path=(\S+)")


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(value)


def now() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def netns_inode(tid: int, since: float) -> int | None:
    """The namespace task `tid` is in, None if it is gone or is another task that started after
    `since` (seconds after boot)."""
    try:
        with open(f"/proc/{tid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        if int(fields[19]) / TICKS > since:
            return None
        return os.stat(f"/proc/{tid}/ns/net").st_ino
    except (OSError, IndexError, ValueError):
        return None


def key_of(change: StateChange) -> list[Any]:
    """What a leftover of this connection looks like: ("self", family, address, port) for a
    self-connect, ("same", family, [addresses], port) for port P to port P."""
    if change.saddr == change.daddr:
        return ["self", change.family, change.saddr, change.sport]
    return ["same", change.family, sorted([change.saddr, change.daddr]), change.sport]


class Tracer:
    def __init__(self, session: int) -> None:
        self.session = session
        self.host = netns_inode(session, now())
        self.root, _mounted = tracing_root()  # mounts tracefs where it is not (ip netns exec)
        instances = os.path.join(self.root, "instances")
        for name in os.listdir(instances):  # left by a session that was killed outright
            pid = name[len(PREFIX) :]
            if name.startswith(PREFIX) and pid.isdigit() and not process_exists(int(pid)):
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(instances, name))
        self.path = os.path.join(instances, f"{PREFIX}{os.getpid()}")
        self.enabled: list[str] = []
        self.fd = -1
        self.partial = b""
        self.pids = {session}
        self.lost = 0
        self.counts: dict[str, int] = defaultdict(int)
        self.suspects: dict[str, dict[str, Any]] = {}
        self.changes: dict[int, list[float]] = defaultdict(list)
        self.unplaced: list[StateChange] = []  # read, namespace not looked up yet
        self.looked_up: list[tuple[StateChange, int | None, int | None, float]] = []
        self.leaders: dict[int, int] = {session: session}  # thread id -> its process's id
        self.notes: list[str] = []
        self.cgroups: set[str] = set()  # paths below the hierarchy's root, as "/a/b"
        self.pinned = False

    def open(self) -> None:
        os.mkdir(self.path)
        for name, value in (
            ("buffer_size_kb", "8192"),
            ("trace_clock", "boot"),
            ("options/event-fork", "1"),
            ("set_event_pid", str(self.session)),
        ):
            _write(os.path.join(self.path, name), value)
        events = os.path.join(self.path, "events")
        for event, event_filter in EVENTS.items():
            if not os.path.isdir(os.path.join(events, event)):
                self.notes.append(f"this kernel has no {event}: placing events is coarser")
                continue
            if event_filter:
                _write(os.path.join(events, event, "filter"), event_filter)
        self.fd = os.open(os.path.join(self.path, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
        for event in EVENTS:
            if os.path.isdir(os.path.join(events, event)):
                _write(os.path.join(events, event, "enable"), "1")
                self.enabled.append(event)

    def close(self) -> None:
        for event in self.enabled:
            with contextlib.suppress(OSError):
                _write(os.path.join(self.path, "events", event, "enable"), "0")
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        for _attempt in range(100):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)

    def drain(self) -> None:
        """Read everything the kernel has, and file it."""
        chunks = [self.partial]
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        *lines, self.partial = b"".join(chunks).split(b"\n")
        for raw in lines:
            self.file(raw.decode("utf-8", "replace"))

    def file(self, line: str) -> None:
        ports = _SAME_PORTS.search(line)
        if ports:
            if ports.group(1) != ports.group(2):
                return  # an ordinary connection: most lines, so skip them before parsing
            parsed = parse_line(line)
            if isinstance(parsed, StateChange) and parsed.sport:
                self.unplaced.append(parsed)
            return
        other = _OTHER.match(line)
        if other:
            if other["event"] == "sched_process_fork":
                child = _CHILD.search(other["rest"])
                if child:
                    self.pids.add(int(child.group(1)))
            elif other["event"] == "task_newtask":
                task = _NEWTASK.search(other["rest"])
                if task:
                    creator = int(other["tid"])
                    new = int(task.group(1))
                    thread = int(task.group(2), 16) & CLONE_THREAD
                    self.leaders[new] = self.leaders.get(creator, creator) if thread else new
            elif other["event"] == "cgroup_mkdir":
                path = _CGROUP.search(other["rest"])
                if path:
                    self.cgroups.add(path.group(1))
            elif other["event"] == "sys_bpf":
                self.pinned = True
            else:
                self.changes[int(other["tid"])].append(float(other["seconds"]))
            return
        lost = parse_line(line) if "LOST" in line else None
        if isinstance(lost, LostEvents):
            self.lost += lost.count

    def look_up(self) -> None:
        """Where each thread, and its process, is now; decided after the next drain (`place`)."""
        looked = now()
        for change in self.unplaced:
            leader = self.leaders.get(change.tid, change.tid)
            thread = netns_inode(change.tid, change.seconds)
            process = netns_inode(leader, change.seconds) if leader != change.tid else None
            self.looked_up.append((change, thread, process, looked))
        self.unplaced = []

    def moved(self, tid: int, after: float, until: float) -> bool:
        """Did `tid` enter another namespace between the two moments?"""
        return any(after < t <= until for t in self.changes.get(tid, ()))

    def where(
        self, change: StateChange, thread: int | None, process: int | None, looked: float
    ) -> str:
        if thread is None:  # gone: where its process is, if neither moved since
            leader = self.leaders.get(change.tid, change.tid)
            if process is None or self.moved(change.tid, change.seconds, looked):
                return "gone"
            if self.moved(leader, change.seconds, looked):
                return "gone"
            return "host" if process == self.host else "private"
        if self.moved(change.tid, change.seconds, looked):
            return "private" if thread == self.host else "unknown"
        return "host" if thread == self.host else "private"

    def place(self) -> None:
        """Place the events looked up before the latest drain: every namespace change made
        before the look-up was traced before it, so the drain has read it."""
        for change, thread, process, looked in self.looked_up:
            where = self.where(change, thread, process, looked)
            self.counts[where] += 1
            if where != "private":
                key = key_of(change)
                self.suspects[json.dumps(key)] = {"key": key, "where": where, "tid": change.tid}
        self.looked_up = []

    def step(self) -> None:
        self.drain()
        self.place()
        self.look_up()

    def report(self) -> dict[str, Any]:
        if self.lost:
            self.notes.append(f"the trace lost {self.lost} events: some leftovers may go unnamed")
        return {
            "traced": True,
            "host_netns": self.host,
            "placed": dict(self.counts),
            "suspects": list(self.suspects.values()),
            "pids": sorted(self.pids),
            "cgroups": sorted(self.cgroups),
            "pinned": self.pinned,
            "lost": self.lost,
            "notes": self.notes,
        }


def main() -> int:
    session = int(sys.argv[1])
    try:
        tracer = Tracer(session)
        tracer.open()
    except (OSError, UnsupportedError) as exc:
        print(json.dumps({"traced": False, "notes": [f"cannot trace the session: {exc}"]}))
        return 0
    try:
        print("ready", flush=True)
        poller = select.poll()
        poller.register(tracer.fd, select.POLLIN)
        poller.register(sys.stdin.fileno(), select.POLLIN | select.POLLHUP)
        done = False
        while not done:
            for fd, _flags in poller.poll(200):
                if fd == sys.stdin.fileno() and not os.read(fd, 4096):
                    done = True
            tracer.step()
        for _round in range(2):  # the last events read still need a look-up and a drain
            tracer.step()
        print(json.dumps(tracer.report()), flush=True)
    finally:
        tracer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
