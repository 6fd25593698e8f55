"""Prevent: make a self-connect impossible, at every depth.

In a process: `guard` (patches connect() in Python; `narcissus.install()`, `narcissus run`).
In any program, without root: `preload` (a small C library wrapping libc's connect(), which
`narcissus run` preloads into every process CMD starts). On a host: `reserve` (keep ports out of
the ephemeral range). In configuration and code: `lint` (ports inside the range), `free_port`
(a port no client can be handed, claimed across processes). Same rules as `narcissus.diagnose`.
"""
