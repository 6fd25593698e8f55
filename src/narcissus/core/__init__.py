"""Pure core: values and rules about ports, sockets and allocators; no I/O."""
