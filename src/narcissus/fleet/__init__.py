"""Fleet: narcissus in the tools fleets already run: Prometheus metrics (`exporter`). Same rules
as `narcissus.diagnose`."""
