"""Quantify: how likely, and how soon, a retrying client self-connects (`odds`), from the
allocator models in `narcissus.core.allocators`. Same rules as `narcissus.diagnose`."""
