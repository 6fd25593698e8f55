"""`narcissus watch`: report every self-connect as it happens."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

from narcissus.cli import EXIT_FOUND, EXIT_OK
from narcissus.cli._common import (
    Terminated,
    add_backend_options,
    add_json_option,
    backend_choice,
    duration_arg,
    stop_on_terminate,
)
from narcissus.core.durations import format_duration
from narcissus.core.watch import SelfConnectEvent, WatchBatch
from narcissus.diagnose.watch import Watcher
from narcissus.errors import InputError

DESCRIPTION = """\
Report every TCP self-connect as it happens, with time, pid, process, address and port.

As root on Linux it uses the tracepoint sock:inet_sock_set_state through ftrace, in a private
tracing instance with a kernel-side filter on the SYN_SENT -> SYN_RECV transition (TCP
simultaneous open, which is how a socket connects to itself): it catches every one, in every
network namespace, however briefly the socket lives, and removes the instance when it stops.
Elsewhere it polls the socket table: a self-connect that opens and closes between two polls
shows only as its TIME_WAIT remnant (no process), or not at all if it was closed abortively.

It says which backend it uses and when it is ready. With --json the first line is
{"event": "ready", "backend": ...}, then one object per self-connect per line.
Ctrl-C or SIGTERM stops it.

exit status: 0 no self-connect seen, 1 some seen, 2 bad input, 3 the backend asked for cannot
run here, 130 interrupted (Ctrl-C).
"""

# At most this many --exec commands run at once; the next event waits for a slot.
EXEC_SLOTS = 4
EXEC_TIMEOUT = 30.0


def configure(parser: argparse.ArgumentParser) -> None:
    add_json_option(parser, "print JSON lines: a ready object, then one object per self-connect")
    parser.add_argument(
        "--duration",
        type=duration_arg("--duration"),
        metavar="DURATION",
        help="stop after this long, e.g. 30s or 5m (default: run until Ctrl-C or SIGTERM)",
    )
    parser.add_argument(
        "--exec",
        dest="exec_command",
        metavar="CMD",
        help="run the shell command CMD for each self-connect, with the event in its "
        "environment: NARCISSUS_EVENT (the JSON object), NARCISSUS_PID, NARCISSUS_PROCESS, "
        "NARCISSUS_ADDRESS, NARCISSUS_PORT, NARCISSUS_TIME, NARCISSUS_BACKEND, NARCISSUS_NETNS",
    )
    add_backend_options(parser)


def event_json(event: SelfConnectEvent) -> dict[str, Any]:
    """One self-connect as a JSON line."""
    return {
        "event": "self-connect",
        "time": datetime.fromtimestamp(event.time, timezone.utc).isoformat(timespec="microseconds"),
        "timestamp": round(event.time, 6),
        "pid": event.pid,
        "thread": event.thread,
        "process": event.process,
        "family": event.family,
        "address": event.address,
        "port": event.port,
        "state": event.state.name,
        "remnant": event.remnant,
        "netns": event.netns,
        "backend": event.backend,
    }


def event_environment(event: SelfConnectEvent) -> dict[str, str]:
    """What an --exec command finds in its environment about the event."""
    payload = event_json(event)
    return {
        "NARCISSUS_EVENT": json.dumps(payload),
        "NARCISSUS_TIME": payload["time"],
        "NARCISSUS_ADDRESS": event.address,
        "NARCISSUS_PORT": str(event.port),
        "NARCISSUS_FAMILY": event.family,
        "NARCISSUS_STATE": event.state.name,
        "NARCISSUS_BACKEND": event.backend,
        "NARCISSUS_PID": "" if event.pid is None else str(event.pid),
        "NARCISSUS_PROCESS": event.process or "",
        "NARCISSUS_NETNS": event.netns or "",
    }


class _Commands:
    """Runs --exec per event without letting a slow or stuck command stall the watch forever
    or pile up: at most EXEC_SLOTS run at once, each at most EXEC_TIMEOUT seconds."""

    def __init__(self, command: str, *, output_to_stderr: bool) -> None:
        self.command = command
        self.stdout = sys.stderr if output_to_stderr else None
        self.running: list[tuple[subprocess.Popen[bytes], float, int]] = []

    def _reap(self, *, block: bool) -> None:
        still: list[tuple[subprocess.Popen[bytes], float, int]] = []
        for index, (process, started, port) in enumerate(self.running):
            if block and index == 0:
                left = max(0.0, started + EXEC_TIMEOUT - time.monotonic())
                try:
                    process.wait(timeout=left)
                except subprocess.TimeoutExpired:
                    process.kill()  # one we started, by its pid
                    process.wait()
                    _warn(f"--exec command ran over {EXEC_TIMEOUT:g} s for port {port}: killed")
                    continue
            status = process.poll()
            if status is None:
                still.append((process, started, port))
            elif status != 0:
                _warn(f"--exec command exited with status {status} for the event at port {port}")
        self.running = still

    def run(self, event: SelfConnectEvent) -> None:
        self._reap(block=False)
        while len(self.running) >= EXEC_SLOTS:
            self._reap(block=True)
        process = subprocess.Popen(
            self.command,
            shell=True,
            env={**os.environ, **event_environment(event)},
            stdin=subprocess.DEVNULL,
            stdout=self.stdout,
        )
        self.running.append((process, time.monotonic(), event.port))

    def finish(self) -> None:
        while self.running:
            self._reap(block=True)


def _warn(message: str) -> None:
    sys.stderr.write(f"narcissus watch: warning: {message}\n")
    sys.stderr.flush()


def _event_text(event: SelfConnectEvent) -> str:
    stamp = datetime.fromtimestamp(event.time).strftime("%H:%M:%S.%f")
    who = f"pid {event.pid} ({event.process or '?'})" if event.pid is not None else "owner unknown"
    where = f"[{event.address}]" if event.family == "ipv6" else event.address
    what = "TIME_WAIT remnant" if event.remnant else event.state.name
    netns = f"  netns {event.netns}" if event.netns else ""
    return f"{stamp}  self-connect  {where}:{event.port}  {who}  {what}{netns}"


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run(options: argparse.Namespace) -> int:
    if options.exec_command is not None and not options.exec_command.strip():
        raise InputError("--exec needs a command, e.g. --exec 'logger \"$NARCISSUS_EVENT\"'")
    commands = (
        _Commands(options.exec_command, output_to_stderr=options.as_json)
        if options.exec_command
        else None
    )
    backend, interval = backend_choice(options)
    watcher = Watcher(backend, interval=interval)
    seen = _Tally()
    started = time.monotonic()
    try:
        with stop_on_terminate():
            try:
                _watch(watcher, options, commands, seen)
            finally:
                watcher.close()
                if commands:
                    commands.finish()
    except Terminated:
        watcher.close()  # in case the signal cut the first close() short
    if not options.as_json:
        sys.stderr.write(
            f"narcissus watch: saw {seen.count} self-connect(s) in "
            f"{time.monotonic() - started:.1f} s\n"
        )
    return EXIT_FOUND if seen.count else EXIT_OK


class _Tally:
    """Events reported so far; survives a signal that ends the loop anywhere."""

    count = 0


def _watch(
    watcher: Watcher,
    options: argparse.Namespace,
    commands: _Commands | None,
    seen: _Tally,
) -> None:
    watcher.start()
    _announce_ready(watcher, options)
    try:
        for batch in watcher.batches(options.duration):
            _report(batch, options, commands, seen)
    except Terminated:
        pass  # stop as if the duration were over: report what the backend still holds
    _report(watcher.drain(), options, commands, seen)


def _report(
    batch: WatchBatch, options: argparse.Namespace, commands: _Commands | None, seen: _Tally
) -> None:
    for event in batch.events:
        seen.count += 1
        _emit(json.dumps(event_json(event)) if options.as_json else _event_text(event))
        if commands:
            commands.run(event)
    if batch.lost:
        _report_lost(batch.lost, options.as_json)
    for warning in batch.warnings:
        _warn(warning)


def _announce_ready(watcher: Watcher, options: argparse.Namespace) -> None:
    if options.as_json:
        ready = {
            "event": "ready",
            "backend": watcher.backend,
            "interval": watcher.interval if watcher.backend == "poll" else None,
            "pid": os.getpid(),
            "notes": list(watcher.notes),
        }
        _emit(json.dumps(ready))
        return
    until = f"for {format_duration(options.duration)}" if options.duration else "until Ctrl-C"
    sys.stderr.write(f"narcissus watch: backend {watcher.backend}; ready, watching {until}\n")
    for note in watcher.notes:
        sys.stderr.write(f"  note: {note}\n")
    sys.stderr.flush()


def _report_lost(count: int, as_json: bool) -> None:
    if as_json:
        _emit(json.dumps({"event": "lost", "count": count}))
    _warn(
        f"the kernel dropped {count} trace event(s) (ring buffer full): self-connects may be "
        "missing from this report"
    )
