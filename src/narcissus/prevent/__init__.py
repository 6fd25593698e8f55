"""Prevention: stop self-connects for every process of a cgroup, in the kernel (the shield)."""
