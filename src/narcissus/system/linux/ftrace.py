"""A private ftrace instance: one tracepoint, a kernel-side filter, and its trace_pipe.

Plain tracefs, no BPF toolchain: `mkdir /sys/kernel/tracing/instances/NAME` creates a tracing
instance with its own ring buffer and event switches, so this never touches the host's main
trace buffer or another tool's instance. Names are `narcissus-<pid>-<n>`: unique per process
(n counts instances this process made) and per live process, so parallel runs never collide.

Nothing may outlive the run: the instance keeps an enabled tracepoint and a ring buffer per
CPU. `close()` disables the event, closes trace_pipe (an open reader makes rmdir fail with
EBUSY) and removes the directory; it runs from `with`, from an atexit hook, and, when the
process left SIGTERM/SIGHUP at their default, from a handler that turns them into SystemExit so
`finally` blocks run. A run killed outright (SIGKILL, a crash) leaves its directory behind: the
next `open()` removes every `narcissus-<pid>-*` instance whose process is gone.

tracefs is mounted at /sys/kernel/tracing when no tracefs is found; it stays mounted afterwards
(as perf and trace-cmd leave it), because another tool may have started using it meanwhile.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import itertools
import os
import re
import select
import signal
import threading
from collections.abc import Mapping

from narcissus.errors import UnsupportedError
from narcissus.system.linux import kernfs
from narcissus.system.linux.procfs import process_exists

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType

TRACEFS = "/sys/kernel/tracing"
DEBUGFS_TRACING = "/sys/kernel/debug/tracing"  # where tracefs appears on kernels before 4.1
INSTANCE_PREFIX = "narcissus-"
_INSTANCE_NAME = re.compile(r"^narcissus-(\d+)-\d+$")
_READ_CHUNK = 1 << 16
_RMDIR_ATTEMPTS = 20  # x 50 ms: how long close() waits for the kernel to let go of a buffer
_counter = itertools.count(1)


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(value)


def _mount_tracefs(target: str) -> None:
    import ctypes

    from narcissus.system.linux.libc import libc

    if libc().mount(b"nodev", target.encode(), b"tracefs", 0, None) != 0:
        error = ctypes.get_errno()
        if error == errno.EPERM:
            raise UnsupportedError("mounting tracefs needs root (CAP_SYS_ADMIN)")
        raise UnsupportedError(f"cannot mount tracefs at {target}: {os.strerror(error)}")


def tracing_root(*, mount: bool = True) -> tuple[str, bool]:
    """Where tracefs is mounted, mounting it if needed; the flag says whether we mounted it."""
    for candidate in (TRACEFS, DEBUGFS_TRACING):
        if os.path.isdir(os.path.join(candidate, "instances")):
            return candidate, False
    if not mount or not os.path.isdir(TRACEFS):
        raise UnsupportedError("this kernel offers no tracefs (CONFIG_TRACING)")
    _mount_tracefs(TRACEFS)
    if not os.path.isdir(os.path.join(TRACEFS, "instances")):
        raise UnsupportedError(f"tracefs at {TRACEFS} has no instances directory")
    return TRACEFS, True


def stale_instances(root: str) -> list[str]:
    """Instances this module made in processes that no longer exist."""
    try:
        names = os.listdir(os.path.join(root, "instances"))
    except OSError:
        return []
    stale = []
    for name in sorted(names):
        match = _INSTANCE_NAME.match(name)
        if match and not process_exists(int(match.group(1))):
            stale.append(name)
    return stale


def _remove_instance(path: str, attempts: int = _RMDIR_ATTEMPTS) -> None:
    """rmdir an instance, waiting briefly while the kernel still holds it (EBUSY)."""
    kernfs.remove_directory(path, attempts=attempts, pause=0.05)


def remove_stale_instances(root: str) -> list[str]:
    """Remove what crashed runs left behind; returns the names removed."""
    removed = []
    for name in stale_instances(root):
        try:
            _remove_instance(os.path.join(root, "instances", name), attempts=1)
        except OSError:
            continue  # someone else's reader still has it open: not ours to force
        removed.append(name)
    return removed


def saved_tgids(root: str) -> dict[int, int]:
    """ftrace's record of thread id -> process id (kept while any instance has `record-tgid`
    on; global, not per instance). A thread's entry is written at its context switches after
    an event, so a thread that has exited has its last one; {} if it cannot be read."""
    try:
        with open(os.path.join(root, "saved_tgids"), encoding="ascii") as handle:
            text = handle.read()
    except OSError:
        return {}
    found: dict[int, int] = {}
    for line in text.splitlines():
        tid, _, tgid = line.partition(" ")
        if tid.isdigit() and tgid.isdigit():
            found[int(tid)] = int(tgid)
    return found


# ------------------------------------------------------------------ signals


class _SignalGuard:
    """While any instance is open, SIGTERM and SIGHUP left at their default raise SystemExit
    in the main thread instead of killing the process, so `finally` removes the instance."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._installed: dict[int, object] = {}

    @staticmethod
    def _exit(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    def acquire(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        with self._lock:
            self._users += 1
            if self._users == 1:
                for sig in self.SIGNALS:
                    if signal.getsignal(sig) is signal.SIG_DFL:
                        self._installed[sig] = signal.signal(sig, self._exit)

    def release(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        with self._lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0:
                for sig in list(self._installed):
                    if signal.getsignal(sig) == self._exit:
                        signal.signal(sig, signal.SIG_DFL)
                    del self._installed[sig]


_guard = _SignalGuard()


# ------------------------------------------------------------------ the instance


class TraceInstance:
    """One private tracing instance with one event enabled under a filter.

    `open()` returns once the event is enabled: from then on every matching event is in the
    ring buffer, read with `read_lines()`. `clock` is the trace clock the lines' timestamps are
    on ("mono" is CLOCK_MONOTONIC), or None if the kernel refused the one asked for.
    """

    def __init__(
        self,
        event: str,
        event_filter: str,
        *,
        options: Mapping[str, str] | None = None,
        clock: str = "mono",
    ) -> None:
        self.event = event
        self.event_filter = event_filter
        self.options = dict(options or {})
        self.wanted_clock = clock
        self.clock: str | None = None
        self.root = ""
        self.name = ""
        self.path = ""
        self.mounted = False
        self.removed_stale: list[str] = []
        self._fd = -1
        self._poller: select.poll | None = None
        self._partial = b""
        self._disabled = False
        self._released = True  # nothing to release until open() takes the guard

    def __enter__(self) -> TraceInstance:
        return self.open()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _make_directory(self) -> None:
        instances = os.path.join(self.root, "instances")
        for _attempt in range(100):
            name = f"{INSTANCE_PREFIX}{os.getpid()}-{next(_counter)}"
            path = os.path.join(instances, name)
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            except PermissionError as exc:
                raise UnsupportedError("ftrace needs root (creating a tracing instance)") from exc
            self.name, self.path = name, path
            return
        raise UnsupportedError(f"could not find a free tracing instance name in {instances}")

    def open(self) -> TraceInstance:
        """Create the instance and enable the event (a no-op if this one is already open)."""
        if self.path:
            return self
        if os.geteuid() != 0 and not os.access(os.path.join(TRACEFS, "instances"), os.W_OK):
            raise UnsupportedError("ftrace needs root (tracefs is writable only by root)")
        self.root, self.mounted = tracing_root()
        if not os.path.isdir(os.path.join(self.root, "events", self.event)):
            raise UnsupportedError(f"this kernel has no tracepoint {self.event.replace('/', ':')}")
        self.removed_stale = remove_stale_instances(self.root)
        _guard.acquire()
        atexit.register(self.close)
        self._released = False
        try:
            self._make_directory()
            self._configure()
        except BaseException:
            self.close()
            raise
        return self

    def _configure(self) -> None:
        try:
            _write(os.path.join(self.path, "trace_clock"), self.wanted_clock)
            self.clock = self.wanted_clock
        except OSError:
            self.clock = None
        for option, value in self.options.items():
            with contextlib.suppress(OSError):  # an option this kernel lacks only costs detail
                _write(os.path.join(self.path, "options", option), value)
        event_dir = os.path.join(self.path, "events", self.event)
        try:
            _write(os.path.join(event_dir, "filter"), self.event_filter)
        except OSError as exc:
            raise UnsupportedError(
                f"the kernel rejected the filter {self.event_filter!r} for {self.event}: "
                f"{exc.strerror}"
            ) from exc
        # Open the reader before enabling, so no event falls between the two.
        self._fd = os.open(
            os.path.join(self.path, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
        )
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLIN)
        _write(os.path.join(event_dir, "enable"), "1")

    def fileno(self) -> int:
        """trace_pipe's fd (-1 when closed): readable (poll) when lines wait."""
        return self._fd

    def read_lines(self, timeout: float, *, max_bytes: int = 1 << 20) -> list[str]:
        """Complete lines available now, waiting up to `timeout` seconds for the first one.

        Returns at most about `max_bytes` of text per call, so a flood of events never keeps
        the caller from checking its deadline or stop flag.
        """
        if self._poller is None:
            raise ValueError("read_lines() on a trace instance that is not open")
        if not self._poller.poll(max(0, int(timeout * 1000))):
            return []
        chunks = [self._partial]
        total = 0
        while total < max_bytes:
            try:
                data = os.read(self._fd, _READ_CHUNK)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
            total += len(data)
        *lines, self._partial = b"".join(chunks).split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines if line]

    def close(self) -> None:
        """Disable the event, close the reader and remove the instance (idempotent).

        Never raises: it runs in `finally` blocks. Each step is done once and remembered, so if
        a second signal cuts it short, the atexit hook finishes it. If the directory cannot be
        removed (a forked child still holds trace_pipe), the next open() removes it once that
        process is gone.
        """
        if self.path and not self._disabled:
            with contextlib.suppress(OSError):
                _write(os.path.join(self.path, "events", self.event, "enable"), "0")
            self._disabled = True
        if self._fd >= 0:
            self._poller = None
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        if self.path:
            with contextlib.suppress(OSError):
                _remove_instance(self.path)
            self.path = ""
        if not self._released:
            self._released = True
            atexit.unregister(self.close)
            _guard.release()
