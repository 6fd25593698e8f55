"""`narcissus watch`: report every self-connect, and with --binds every failed bind, as it
happens."""

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
    holder_json,
    stop_on_terminate,
)
from narcissus.core.durations import format_duration
from narcissus.core.watch import BindFailedEvent, SelfConnectEvent, WatchBatch
from narcissus.core.who import owners_text
from narcissus.diagnose.watch import AUTO, Watcher
from narcissus.errors import InputError

DESCRIPTION = """\
Report every TCP self-connect as it happens, with time, pid, process, address and port.

As root on Linux it uses the tracepoint sock:inet_sock_set_state through ftrace, in a private
tracing instance with a kernel-side filter on the SYN_SENT -> SYN_RECV transition (TCP
simultaneous open, which is how a socket connects to itself): it catches every one, in every
network namespace, however briefly the socket lives, and removes the instance when it stops.
Elsewhere it polls the socket table: a self-connect that opens and closes between two polls
shows only as its TIME_WAIT remnant (no process), or not at all if it was closed abortively.

With --binds (root, Linux) it reports each bind() that fails with EADDRINUSE ("Address
already in use"), in every network namespace: time, pid and process that failed, address, port,
transport, and who held the port at that moment (as `narcissus who` shows it: listener, client,
self-connect, time-wait, other; with their pids and one line of advice), looked up in the
failing socket's own namespace among sockets of its transport. Two BPF tracepoint programs on
the bind() syscall catch them (nothing pinned: they go when the watch stops, however it stops).
--binds alone watches failed binds only; --binds --self-connects watches both.

It says which backend it uses and when it is ready. With --json the first line is
{"event": "ready", "backend": ...}, then one object per event per line: "self-connect", or
"bind-failed" with pid, process, family, address, port, transport, netns, kind (the holder that
matters most, "none" if the port was free again when looked at), holders (as `who --json`
prints them) and advice. Ctrl-C or SIGTERM stops it.

examples:
  sudo narcissus watch
  sudo narcissus watch --binds --json
  sudo narcissus watch --binds --self-connects --exec 'logger "$NARCISSUS_EVENT"'

exit status: 0 nothing seen, 1 some self-connect or failed bind seen, 2 bad input, 3 the
backend asked for cannot run here (--binds needs root on Linux), 130 interrupted (Ctrl-C).
"""

# At most this many --exec commands run at once; the next event waits for a slot.
EXEC_SLOTS = 4
EXEC_TIMEOUT = 30.0
EXEC_GRACE = 5.0  # seconds the commands still running get once the watch is over


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--binds",
        action="store_true",
        help="report every bind() failing with EADDRINUSE, with who held the port at that "
        "moment (Linux, root: BPF tracepoint programs); alone it watches failed binds only",
    )
    parser.add_argument(
        "--self-connects",
        action="store_true",
        help="report self-connects: the default without --binds; with --binds, watch both",
    )
    add_json_option(parser, "print JSON lines: a ready object, then one object per event")
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
        help="run the shell command CMD for each event, with the event in its environment: "
        "NARCISSUS_EVENT (the JSON object), NARCISSUS_PID, NARCISSUS_PROCESS, "
        "NARCISSUS_ADDRESS, NARCISSUS_PORT, NARCISSUS_TIME, NARCISSUS_BACKEND, NARCISSUS_NETNS; "
        "for a failed bind also NARCISSUS_KIND and NARCISSUS_HOLDER_PIDS. At most "
        f"{EXEC_SLOTS} run at once, each for at most {EXEC_TIMEOUT:g} s; when the watch ends, "
        f"those still running get {EXEC_GRACE:g} s more",
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


def _time_text(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="microseconds")


def bind_event_json(event: BindFailedEvent) -> dict[str, Any]:
    """One failed bind as a JSON object; `holders` are `narcissus who --json`'s objects."""
    return {**_bind_head(event), **_bind_holders(event), "backend": "bpf"}


def bind_event_line(event: BindFailedEvent) -> str:
    """`json.dumps(bind_event_json(event))`, with the holders' part encoded once per look:
    a storm of failures on one port shares one look, and encoding it again for each event
    would halve the rate the watch keeps up with."""
    head = json.dumps(_bind_head(event))
    cached = _ENCODED.get(id(event.report)) if event.report is not None else None
    if cached is None or cached[0] is not event.report or cached[1] != event.notes:
        holders = json.dumps({**_bind_holders(event), "backend": "bpf"})
        cached = (event.report, event.notes, holders)
        if event.report is not None:
            _ENCODED.clear()  # one look at a time: reads come in order
            _ENCODED[id(event.report)] = cached
    return f"{head[:-1]}, {cached[2][1:]}"


_ENCODED: dict[int, tuple[object, tuple[str, ...], str]] = {}


def _bind_head(event: BindFailedEvent) -> dict[str, Any]:
    failure = event.failure
    return {
        "event": "bind-failed",
        "time": _time_text(failure.time),
        "timestamp": round(failure.time, 6),
        "pid": failure.pid,
        "thread": failure.thread,
        "process": failure.process,
        "family": failure.family,
        "address": failure.address,
        "port": failure.port,
        "transport": failure.transport,
        "netns": failure.netns_label,
    }


def _bind_holders(event: BindFailedEvent) -> dict[str, Any]:
    report = event.report
    return {
        "kind": event.kind,
        "holders": [holder_json(holder) for holder in report.holders] if report else [],
        "kinds": list(report.kinds()) if report else [],
        "advice": list(report.advice) if report else [],
        "owners_visible": report.owners_visible if report else None,
        "notes": [*event.notes, *(report.notes if report else ())],
    }


def bind_event_environment(event: BindFailedEvent) -> dict[str, str]:
    """What an --exec command finds in its environment about a failed bind."""
    failure = event.failure
    holders = event.report.holders if event.report else ()
    pids = dict.fromkeys(owner.pid for holder in holders for owner in holder.socket.owners)
    return {
        "NARCISSUS_EVENT": json.dumps(bind_event_json(event)),
        "NARCISSUS_TIME": _time_text(failure.time),
        "NARCISSUS_ADDRESS": failure.address,
        "NARCISSUS_PORT": str(failure.port),
        "NARCISSUS_FAMILY": failure.family,
        "NARCISSUS_BACKEND": "bpf",
        "NARCISSUS_PID": str(failure.pid),
        "NARCISSUS_PROCESS": failure.process,
        "NARCISSUS_NETNS": failure.netns_label or "",
        "NARCISSUS_KIND": event.kind,
        "NARCISSUS_HOLDER_PIDS": " ".join(map(str, pids)),
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

    def run(self, environment: dict[str, str], port: int) -> None:
        self._reap(block=False)
        while len(self.running) >= EXEC_SLOTS:
            self._reap(block=True)
        process = subprocess.Popen(
            self.command,
            shell=True,
            env={**os.environ, **environment},
            stdin=subprocess.DEVNULL,
            stdout=self.stdout,
        )
        self.running.append((process, time.monotonic(), port))

    def finish(self) -> None:
        """The watch is over: commands still running get EXEC_GRACE seconds more, then are
        killed, so `--duration 3s` ends within seconds whatever CMD does."""
        deadline = time.monotonic() + EXEC_GRACE
        for process, _started, port in self.running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()  # one we started, by its pid
                process.wait()
                _warn(
                    f"--exec command still running {EXEC_GRACE:g} s after the watch ended "
                    f"(port {port}): killed"
                )
                continue
            if process.returncode != 0:
                _warn(
                    f"--exec command exited with status {process.returncode} for the event at "
                    f"port {port}"
                )
        self.running = []


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


def _bind_text(event: BindFailedEvent) -> list[str]:
    """The failed bind's line, then its advice and notes, indented."""
    failure, report = event.failure, event.report
    stamp = datetime.fromtimestamp(failure.time).strftime("%H:%M:%S.%f")
    where = f"[{failure.address}]" if failure.family == "ipv6" else failure.address
    who = f"pid {failure.pid} ({failure.process})"
    if report is not None and report.holders:
        groups = []
        for kind in report.kinds():
            same = [holder for holder in report.holders if holder.kind == kind]
            groups.append(f"{kind} {owners_text(same, visible=report.owners_visible)}")
        held = "held by " + "; ".join(groups)
    elif report is not None:
        held = "nothing held the port any more when narcissus looked"
    else:
        held = "holders unknown"
    netns = f"  netns {failure.netns_label}" if failure.netns_label else ""
    transport = failure.transport or "?"
    lines = [f"{stamp}  bind-failed  {where}:{failure.port} {transport}  {who}  {held}{netns}"]
    lines += [f"    -> {line}" for line in (report.advice if report else ())]
    lines += [f"    note: {note}" for note in (*event.notes, *(report.notes if report else ()))]
    return lines


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _what(options: argparse.Namespace) -> tuple[bool, bool]:
    """(self-connects, binds): what the options ask to watch."""
    binds = bool(options.binds)
    self_connects = bool(options.self_connects) or not binds
    if binds and not self_connects and (options.interval is not None or options.backend != AUTO):
        raise InputError(
            "--backend and --interval choose how self-connects are caught; --binds alone "
            "watches failed binds only: add --self-connects to watch both"
        )
    return self_connects, binds


def run(options: argparse.Namespace) -> int:
    if options.exec_command is not None and not options.exec_command.strip():
        raise InputError("--exec needs a command, e.g. --exec 'logger \"$NARCISSUS_EVENT\"'")
    self_connects, binds = _what(options)
    commands = (
        _Commands(options.exec_command, output_to_stderr=options.as_json)
        if options.exec_command
        else None
    )
    backend, interval = backend_choice(options)
    watcher = Watcher(backend, interval=interval, self_connects=self_connects, binds=binds)
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
        elapsed = time.monotonic() - started
        summary = _summary(seen, binds, self_connects)
        sys.stderr.write(f"narcissus watch: {summary} in {elapsed:.1f} s\n")
    return EXIT_FOUND if seen.count or seen.binds else EXIT_OK


def _summary(seen: _Tally, binds: bool, self_connects: bool) -> str:
    parts = []
    if binds:
        parts.append(f"{seen.binds} failed bind(s)")
    if self_connects:
        parts.append(f"{seen.count} self-connect(s)")
    return "saw " + " and ".join(parts)


class _Tally:
    """Events reported so far; survives a signal that ends the loop anywhere."""

    count = 0
    binds = 0


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
    for failed in batch.bind_failures:
        seen.binds += 1
        if options.as_json:
            _emit(bind_event_line(failed))
        else:
            for line in _bind_text(failed):
                _emit(line)
        if commands:
            commands.run(bind_event_environment(failed), failed.failure.port)
    for event in batch.events:
        seen.count += 1
        _emit(json.dumps(event_json(event)) if options.as_json else _event_text(event))
        if commands:
            commands.run(event_environment(event), event.port)
    if batch.bind_lost:
        _report_lost_binds(batch.bind_lost, options.as_json)
    if batch.lost:
        _report_lost(batch.lost, options.as_json)
    for warning in batch.warnings:
        _warn(warning)


def _announce_ready(watcher: Watcher, options: argparse.Namespace) -> None:
    if options.as_json:
        ready: dict[str, Any] = {
            "event": "ready",
            "backend": watcher.backend,
            "interval": watcher.interval if watcher.backend == "poll" else None,
            "pid": os.getpid(),
            "notes": list(watcher.notes),
        }
        if watcher.binds:  # without --binds the line stays exactly as it always was
            ready["watching"] = [
                *(["self-connects"] if watcher.self_connects else []),
                "bind-failures",
            ]
            ready["bind_backend"] = watcher.bind_backend
            ready["bind_programs"] = list(watcher.bind_programs)
        _emit(json.dumps(ready))
        return
    until = f"for {format_duration(options.duration)}" if options.duration else "until Ctrl-C"
    backends = []
    if watcher.binds:
        backends.append(f"failed binds with {watcher.bind_backend}")
    if watcher.self_connects:
        backends.append(
            f"self-connects with {watcher.backend}"
            if watcher.binds
            else f"backend {watcher.backend}"
        )
    sys.stderr.write(f"narcissus watch: {', '.join(backends)}; ready, watching {until}\n")
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


def _report_lost_binds(count: int, as_json: bool) -> None:
    if as_json:
        _emit(json.dumps({"event": "lost", "count": count, "what": "bind-failed"}))
    _warn(
        f"the kernel dropped {count} failed-bind record(s) (BPF ring buffer full): failed binds "
        "may be missing from this report"
    )
