"""Isolate mode: run our client or CMD in a private network namespace whose whole ephemeral range
is the target port, so the first connect to it self-connects however busy the host is. The
namespace has only its own loopback: CMD cannot reach anything else from there.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import BinaryIO

from narcissus.errors import NarcissusError
from narcissus.repro.model import Reached, ReproRequest, ReproResult
from narcissus.repro.target import Target

LOOPBACK_ONLY = (
    "isolate runs CMD in a private network namespace with only its own loopback: CMD cannot "
    "reach other hosts or this host's other services from there"
)


def _messages(report: BinaryIO) -> Iterator[tuple[str, object]]:
    """The child's pickled (kind, value) messages, until it closes the pipe."""
    while True:
        try:
            message = pickle.load(report)
        except (EOFError, pickle.UnpicklingError):
            return  # a child killed mid-message leaves a partial one: nothing more to read
        kind, value = message
        yield str(kind), value


def run_isolate(
    request: ReproRequest,
    target: Target,
    *,
    capture: bool,
    user_namespace: bool | None = None,
    reached: Reached | None = None,
) -> ReproResult:
    """Run the job in the isolate child; `reached` hears of a self-connect the child holds
    (`--hold`) while it holds it."""
    if user_namespace is None:
        user_namespace = os.geteuid() != 0
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "narcissus.repro.isolate_child", str(write_end)],
            stdin=subprocess.PIPE,
            pass_fds=(write_end,),
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as report:
        try:
            assert child.stdin is not None
            pickle.dump((request, target, capture, user_namespace), child.stdin)
            child.stdin.close()
            outcome: object = None
            for kind, value in _messages(report):
                if kind == "reached" and reached is not None:
                    assert isinstance(value, ReproResult)
                    reached(value)
                elif kind == "done":
                    outcome = value
            child.wait()
        except BaseException:
            if child.poll() is None:
                child.terminate()
                child.wait()
            raise
    if outcome is None:
        raise NarcissusError(f"the isolated process exited with status {child.returncode}")
    if isinstance(outcome, BaseException):
        raise outcome
    assert isinstance(outcome, ReproResult)
    if request.command:
        outcome = replace(outcome, notes=(*outcome.notes, LOOPBACK_ONLY))
    return outcome
