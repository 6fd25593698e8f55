"""The pure core: what is true about ports, sockets, allocators and OSes, with no I/O.

Rules: no sockets, files, processes, clocks or platform checks; imports only `narcissus.core`
and `narcissus.errors`. Values in, values out: the OS modules (`narcissus.system`) read raw state
(a sysctl, a netlink dump, a trace line) and hand it here; the capability packages and the front
ends render what comes back. Everything here is testable with recorded inputs.

What lives here: port arithmetic (`ports`), what an OS's settings mean for a port (`ephemeral`),
one row per OS (`oses`), sockets and what a scan found (`sockets`, `scan`, `inet_diag`), the
audit (`doctor`), reservations (`reserve`), safe ports (`free_port`), events (`watch`,
`sock_trace`, `selfconnect`), allocator models and odds (`allocators`, `odds`, `montecarlo`),
steering plans (`steering`), lint rules (`lint/`), and small helpers (`durations`, `values`).
"""
