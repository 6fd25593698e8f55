"""Isolate mode, the child's entry point (`python -m narcissus.repro.isolate_child`): this
process moves itself into a new network namespace, brings loopback up, sets
`ip_local_port_range` to the single target port, then runs our client or CMD there. The job
arrives pickled on stdin and the results leave pickled on the descriptor named in argv, as
("reached", result) the moment a held self-connect exists, then ("done", outcome); both ends are
narcissus. Everything made here vanishes with the namespace when this process exits.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from dataclasses import replace

from narcissus.errors import NarcissusError, UnsupportedError
from narcissus.repro import client
from narcissus.repro.command import run_command
from narcissus.repro.model import Reached, ReproRequest, ReproResult
from narcissus.repro.target import Target


def run_inside(
    request: ReproRequest,
    target: Target,
    *,
    capture: bool,
    user_namespace: bool,
    reached: Reached | None = None,
) -> ReproResult:
    from narcissus import system
    from narcissus.core.ports import PortRange

    start = time.monotonic()
    system.isolate_network(PortRange(target.port, target.port), user_namespace=user_namespace)
    if request.command:
        outcome = run_command(request.command, target, request.timeout, capture=capture)
        result = outcome.result(request, start)
        isolated = tuple(sock.replace(netns="isolated") for sock in result.evidence)
        return replace(result, evidence=isolated)
    return client.connect_once(request, target, start, reached=reached)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    sys.exit(128 + signum)  # unwinds run_command, which then stops CMD


def main(report_fd: int) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    request, target, capture, user_namespace = pickle.load(sys.stdin.buffer)
    outcome: object
    with os.fdopen(report_fd, "wb") as report:

        def reached(result: ReproResult) -> None:
            pickle.dump(("reached", result), report)
            report.flush()  # the parent reports it while we hold the socket

        try:
            outcome = run_inside(
                request, target, capture=capture, user_namespace=user_namespace, reached=reached
            )
        except NarcissusError as exc:
            outcome = exc
        except OSError as exc:
            outcome = UnsupportedError(f"isolate failed: {exc}")
        pickle.dump(("done", outcome), report)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
