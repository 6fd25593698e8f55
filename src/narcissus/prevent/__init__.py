"""Prevention: stopping self-connects in programs narcissus does not own (preload/: a C library)."""
