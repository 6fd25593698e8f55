"""Diagnose: what is wrong on this host now, and what to do about it.

`doctor` (the audit: listeners at risk, self-connects now, the fix), `scan` (self-connected
sockets and their TIME_WAIT remnants, killed on request), `watch` (self-connects as they
happen), `ports` (this host's ephemeral-port settings, asked in one place).

Rules of the capability packages (diagnose, prevent, repro, quantify, fleet): each module is the
library side of one command, named as the command and as its pure half in `narcissus.core`. It
composes the core (what is true) with `narcissus.system` (what this OS says and does), returns
values, and never parses arguments or prints (that is `narcissus.cli`). It asks
`narcissus.system` and its `CAPABILITIES`, never an OS module by name.
"""
